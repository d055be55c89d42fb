/* capi-bridge boot: inlined by snippet.py into every page, after Meta's loader, the fbq('init')
 * calls and `window.capiBridgeConfig`. It settles the page's PageView id, takes over fbq so the
 * pixel calls the page or its tag manager makes are mirrored too, fires the pixel PageView with
 * the id, and stands in for capiBridge (queueing calls, minting their ids) until capi-bridge.js
 * has loaded: app code may call capiBridge.track() or fbq() from the first line of the page. */
(function (w, d, c) {
  function id() {
    var k = w.crypto;
    return k.randomUUID
      ? k.randomUUID()
      : '10000000-1000-4000-8000-100000000000'.replace(/[018]/g, function (x) {
          return (x ^ (k.getRandomValues(new Uint8Array(1))[0] & (15 >> (x / 4)))).toString(16);
        });
  }
  var q = [], m = d.cookie.match(/(?:^|;\s*)_capib_pv=([^;]*)/), o = w.fbq, f = o;
  // The server sets _capib_pv=<id> on the very response that carries the id. Without it, this
  // HTML came from a cache (CDN, full-page cache, restored tab) and its id is shared with other
  // views: mint a fresh one; capi-bridge.js gets it bound to a fresh token before mirroring.
  if (m) d.cookie = '_capib_pv=;Max-Age=0;Path=/';
  c.t = Date.now();
  c.u = location.href;
  if (!m || m[1] != c.pv || c.t / 1e3 - c.iat > 1800) {
    c.cached = 1;
    c.pv = id();
  }

  // Hands a call to the pixel unseen (capi-bridge's own calls: they are mirrored already).
  function fb(a) {
    f == o ? o.apply(w, a) : f.callMethod ? f.callMethod.apply(f, a) : f.queue.push(a);
  }

  // A track call of the page's code or tag manager: give it an eventID in its 4th argument (the
  // only place the pixel reads one) unless it has one, and have capi-bridge.js mirror it. A
  // PageView on the page's own URL is the page's PageView, mirrored already: it gets that id.
  // Never throws: the call reaches the pixel whatever its arguments.
  function see(a) {
    var s, e;
    try {
      s = a[0][5] == 'S';
      if (/^track(Single)?(Custom)?$/.test(a[0])) {
        a[s + 2] = a[s + 2] || {};
        e = a[s + 3] = Object.assign({}, a[s + 3]);
        if (a[s + 1] == 'PageView' && location.href == c.u) e.eventID = c.pv;
        else (e.eventID = e.eventID || e.event_id || id()), w.capiBridge.m(a);
      }
    } catch (x) {}
    return a;
  }

  w.capiBridge = w.capiBridge || {
    q: q,
    id: id,
    fb: fb,
    m: function (a) {
      q.push(['m', a]);
    },
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
  // Meta's base code (ours, or the site's or a tag manager's that ran first) made fbq a function
  // that queues its calls until fbevents.js sets fbq.callMethod and replays fbq.queue. Put ours
  // in its place with the same contract: every call passes through see() once, queued or live.
  // The old function forwards to ours, for code that kept a reference to it (window._fbq).
  if (c.mirror !== !1) {
    if (o.queue && !o.callMethod) { // (Meta's loader, just above, made o if nobody had)
      f = w.fbq = function () {
        fb(see([].slice.call(arguments)));
      };
      Object.assign(f, o);
      f.push = f;
      o.queue.forEach(function (a, i, l) {
        l[i] = see([].slice.call(a));
      });
      o.callMethod = function () {
        f.apply(w, arguments);
      };
    } else c.nohook = o.callMethod ? 1 : 2; // 1: fbevents.js ran first; 2: not Meta's fbq
  }
  fb(['track', 'PageView', {}, { eventID: c.pv }]);
})(window, document, window.capiBridgeConfig);
