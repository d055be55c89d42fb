/* A local stand-in for Meta's fbevents.js, for the demo and the end-to-end tests. It never
 * talks to Meta. It follows the contract of the real library (pixel-capi spec §1, read from
 * fbevents.js 2.9.x; no code of Meta's is copied here):
 *
 * - it takes over the base code's fbq: it sets fbq.callMethod, then replays fbq.queue in order
 *   (it does not run at all when fbq is missing or already taken over);
 * - 'init' registers a pixel; 'track'/'trackCustom' fire to every registered pixel,
 *   'trackSingle'/'trackSingleCustom' to the one named (ignored when not registered);
 * - the event id (eid) is the 4th argument's eventID (or event_id); one in the 3rd argument is
 *   ignored with a console warning;
 * - consent 'revoke' pushes every later call but 'consent' back onto fbq.queue; 'grant' replays
 *   them in order;
 * - one PageView per pixel per page, unless fbq.allowDuplicatePageViews;
 * - _fbp and _fbc, on every hit: an existing valid value is adopted as it is (and re-written, so
 *   its 90 days roll); a missing _fbp is minted as fb.<subdomain index>.<ms>.<random digits> on
 *   the registrable domain (the shortest suffix of the host the browser accepts a cookie on);
 *   _fbc is built from the fbclid of the URL, else of the referrer, keeping the creation time of
 *   an _fbc that holds the same click id;
 * - its bot blocking drops every hit of a HeadlessChrome user agent.
 *
 * window.__fbqCalls    every call made to fbq (queued before it loaded, or live)
 * window.__fbqSent     what the real pixel would transmit: one entry per pixel per hit, with the
 *                      eid and the _fbp/_fbc it would attach
 * window.__fbqBlocked  hits its bot blocking dropped */
(function (w, d, L) {
  var f = w.fbq;
  if (!f || f.callMethod) return;
  var calls = (w.__fbqCalls = w.__fbqCalls || []);
  var sent = (w.__fbqSent = w.__fbqSent || []);
  var blocked = (w.__fbqBlocked = w.__fbqBlocked || []);
  var pixels = [], locked = false, pageViews = {}, DAY = 864e5;

  function cookie(name) {
    var m = d.cookie.match(new RegExp('(?:^|;\\s*)' + name + '=([^;]*)'));
    return m ? m[1] : null;
  }

  // fb.<index>.<ms>.<payload>[.<appendix>]
  function valid(value) {
    return !!value && /^fb\.\d+\.\d+\.[^.]+(\.[^.]+)?$/.test(value);
  }

  // Writes name=value on the shortest suffix of the host that takes it; value(i) gives the
  // value for subdomain index i. Returns the value written.
  function write(name, value) {
    var labels = L.hostname.split('.'), tail = ';Max-Age=' + 90 * DAY / 1e3 + ';Path=/;SameSite=Lax';
    for (var i = 0; i < labels.length; i++) {
      var v = value(i);
      d.cookie = name + '=' + v + tail + ';Domain=' + labels.slice(-i - 1).join('.');
      if (cookie(name) == v) return v;
    }
    d.cookie = name + '=' + value(0) + tail;
    return value(0);
  }

  function fbclid(url) {
    var m = /[?&]fbclid=([^&#]+)/.exec(url || '');
    return m ? decodeURIComponent(m[1]) : null;
  }

  function fbp() {
    var value = cookie('_fbp');
    if (valid(value)) return write('_fbp', function () { return value; });
    var ms = Date.now(), digits = String(Math.floor(Math.random() * 1e9)) + Math.floor(Math.random() * 1e9);
    return write('_fbp', function (i) { return 'fb.' + i + '.' + ms + '.' + digits; });
  }

  function fbc() {
    var value = cookie('_fbc'), click = fbclid(L.href) || fbclid(d.referrer);
    if (valid(value) && (!click || value.split('.')[3] == click)) {
      return write('_fbc', function () { return value; });
    }
    if (!click) return null;
    var ms = Date.now();
    return write('_fbc', function (i) { return 'fb.' + i + '.' + ms + '.' + click; });
  }

  function hit(method, pixel, event, data, options) {
    if (event == 'PageView') {
      if (pageViews[pixel] && !f.allowDuplicatePageViews) return;
      pageViews[pixel] = true;
    }
    var entry = {
      pixel: pixel,
      method: method,
      event: event,
      data: data || {},
      eventID: options ? options.eventID || options.event_id : undefined,
      dl: L.href
    };
    if (/HeadlessChrome/.test(navigator.userAgent)) return blocked.push(entry);
    entry.fbp = fbp();
    entry.fbc = fbc();
    sent.push(entry);
  }

  function run(args) {
    var method = args[0];
    if (method == 'consent') {
      locked = args[1] == 'revoke';
      if (!locked) f.queue.splice(0).forEach(run);
      return;
    }
    if (locked) return f.queue.push(args);
    if (method == 'init') {
      if (pixels.indexOf(args[1]) < 0) pixels.push(args[1]);
      return;
    }
    var single = method == 'trackSingle' || method == 'trackSingleCustom';
    if (!single && method != 'track' && method != 'trackCustom') return;
    var at = single ? 1 : 0, data = args[at + 2];
    if (data && (data.eventID || data.event_id)) {
      console.warn('eventID is being sent in the 3rd parameter, it should be in the 4th parameter');
    }
    var targets = single ? (pixels.indexOf(args[1]) < 0 ? [] : [args[1]]) : pixels;
    targets.forEach(function (pixel) {
      hit(method, pixel, args[at + 1], data, args[at + 3]);
    });
  }

  f.callMethod = function () {
    var args = Array.prototype.slice.call(arguments);
    calls.push(args);
    run(args);
  };
  f.queue.splice(0).forEach(function (args) {
    f.callMethod.apply(f, args);
  });
})(window, document, location);
