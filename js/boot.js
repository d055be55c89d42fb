/* capi-bridge boot: inlined by snippet.py into every page, after Meta's loader and
 * `window.capiBridgeConfig`. It settles the page's PageView id, fires the pixel PageView with
 * it, and stands in for capiBridge (queueing calls, minting their ids) until capi-bridge.js
 * has loaded: app code may call capiBridge.track() from the first line of the page. */
(function (w, d, c) {
  function id() {
    var k = w.crypto, b, s = '', i;
    if (k.randomUUID) return k.randomUUID();
    b = k.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    for (i = 0; i < 16; i++) {
      s += (i == 4 || i == 6 || i == 8 || i == 10 ? '-' : '') + (b[i] + 256).toString(16).slice(1);
    }
    return s;
  }
  var q = [], m = d.cookie.match(/(?:^|;\s*)_capib_pv=([^;]*)/);
  // The server sets _capib_pv=<id> on the very response that carries the id. Without it, this
  // HTML came from a cache (CDN, full-page cache, restored tab) and its id is shared with other
  // views: mint a fresh one; capi-bridge.js gets it bound to a fresh token before mirroring.
  if (m) d.cookie = '_capib_pv=;Max-Age=0;Path=/';
  c.t = Date.now();
  if (!m || m[1] != c.pv || c.t / 1e3 - c.iat > 1800) {
    c.cached = 1;
    c.pv = id();
  }
  w.capiBridge = w.capiBridge || {
    q: q,
    id: id,
    track: function (n, x, o) {
      o = Object.assign({}, o);
      o.eventID = o.eventID || id();
      q.push(['track', n, x, o]);
      return o.eventID;
    },
    pageView: function () {
      var i = id();
      q.push(['pageView', i]);
      return i;
    },
    consent: function (g) {
      q.push(['consent', g]);
    }
  };
  fbq('track', 'PageView', {}, { eventID: c.pv });
})(window, document, window.capiBridgeConfig);
