/* capi-bridge.js: Meta's redundant setup in the browser. Every event goes to the pixel
 * (fbq) and, with the same name and eventID, to the site's own endpoint, which forwards it
 * through the Conversions API; Meta deduplicates the pair. That holds for capiBridge.track()
 * and for the fbq() calls the page or its tag manager makes (boot.js hooks fbq and hands them
 * here). The mirror does not depend on fbevents.js: when an ad blocker drops the pixel, the
 * server copy still arrives. Config comes from window.capiBridgeConfig (see boot.js). */
(function (w, d, N, L, T) {
  var c = w.capiBridgeConfig, stub = w.capiBridge;
  if (!c || !stub || stub.ready) return;
  var STD = ' AddPaymentInfo AddToCart AddToWishlist CompleteRegistration Contact CustomizeProduct' +
    ' Donate FindLocation InitiateCheckout Lead PageView Purchase Schedule Search StartTrial' +
    ' SubmitApplication Subscribe ViewContent ';
  // token: proves the page came from this site; bound: the PageView id it vouches for.
  var token = c.token, bound = c.cached ? 0 : c.pv, t0 = c.t || T();
  // ok: the server said the visitor consented. Until then events are still posted, marked with
  // the tab session's hold id: the server keeps them in its outbox (not sent to Meta) until
  // consent(true) releases them, so they survive navigation, unlike the pixel's own queue.
  // fb: boot.js's way to the pixel (a page cached before it had one: fbq itself).
  var ok = !c.hold, busy = 0, queue = [], id = stub.id, hook = c.nohook, hold;
  var fb = stub.fb || function (a) {
    w.fbq.apply(w, a);
  };
  // The pixel calls earlier pages of this tab made while consent was missing: the pixel's queue
  // died with them, so they are fired here once consent comes. mine: this page's.
  var kept = [], mine = [];

  function cookie(n) {
    return (d.cookie.match('(?:^|;\\s*)' + n + '=([^;]*)') || [])[1];
  }

  // Writes a cookie the way the pixel does: on the shortest suffix of the host the browser
  // accepts (the registrable domain), its index in the value, for 90 days. So the pixel adopts
  // it, and the first post already carries what the pixel will send.
  function put(n, v) {
    for (var h = L.hostname.split('.'), i = 0, x; i < h.length; i++) {
      x = 'fb.' + i + '.' + v;
      d.cookie = n + '=' + x + ';Max-Age=7776000;Path=/;Domain=' + h.slice(-i - 1).join('.');
      if (cookie(n) == x) return;
    }
  }

  function fbclid(u) {
    return (u.match(/[?&]fbclid=([\w-]{1,500})(?:[&#]|$)/) || [])[1];
  }

  // With consent: makes sure _fbp exists, and _fbc when the URL or the referrer carries a click
  // id the cookie does not hold yet (the pixel's rule), before anything is posted.
  function ensure() {
    var k = fbclid(L.href) || fbclid(d.referrer);
    if (!cookie('_fbp')) put('_fbp', T() + '.' + Math.floor(Math.random() * 1e16));
    if (k && (cookie('_fbc') || '').split('.')[3] != k) put('_fbc', T() + '.' + k);
  }

  // sessionStorage: strictly necessary first-party storage of the consent hold, never sent to
  // Meta. Reads k (undefined when unavailable), or sets it to v ('' to forget it).
  function ss(k, v) {
    try {
      var s = w.sessionStorage;
      if (v == null) return s[k];
      s[k] = v;
    } catch (e) {}
    return v;
  }

  // The tab session's hold id, so held events of every page of this tab are released together
  // (in memory when storage is unavailable). It starts with the time its first page was shown
  // (base 36): the server dates an ad click of this tab session from it. make: create one.
  function hid(make) {
    return (hold = hold || ss('capib_hold') || (make ? ss('capib_hold', c.t.toString(36) + '-' + id()) : hold));
  }

  // Consent settled: the kept calls go to the pixel (granted) or are dropped.
  function settle() {
    if (ok) kept.forEach(fb);
    kept = [];
    ss('capib_px', '');
  }

  // A string body is text/plain: a "simple" request (no CORS preflight), and sendBeacon
  // survives unload. done: wait for the answer (fetch) and call it then.
  function post(body, done) {
    body.token = token;
    body.sent_at = T();
    body = JSON.stringify(body);
    if (done || !(N.sendBeacon && N.sendBeacon(c.endpoint, body))) {
      fetch(c.endpoint, { method: 'POST', body: body, keepalive: true })
        .catch(function () {})
        .then(done);
    }
  }

  function unbound(e) {
    return e.event_name == 'PageView' && e.event_id != bound;
  }

  // Sends queued events in order, one per request (one refused event cannot take others down).
  // A PageView the token does not vouch for (cached page, SPA route change) and a token close
  // to expiry first get a fresh token from the endpoint.
  function pump() {
    var e = queue[0];
    if (busy || !e) return;
    if (unbound(e) || T() - t0 > (c.ttl - 60) * 1e3) {
      busy++;
      // (its answers say Cache-Control: no-store)
      fetch(c.endpoint + '?token=' + encodeURIComponent(token) + (unbound(e) ? '&pv=' + e.event_id : ''))
        .then(function (r) {
          if (!r.ok) throw r;
          return r.json();
        })
        .then(
          function (r) {
            token = r.token;
            if (unbound(e)) bound = e.event_id;
          },
          function () {
            if (unbound(e)) queue.shift();
          }
        )
        .then(function () {
          t0 = T();
          busy--;
          pump();
        });
      return;
    }
    if (ok) ensure();
    // px, for the site's inspector: 1 once fbevents.js runs here (it sets callMethod), 0 when
    // the page has loaded without it (blocked or failed: its script delays the load event);
    // left out while the page is still loading, since it may yet arrive. hook: why fbq calls
    // are not mirrored on this page (boot.js), said once.
    post({
      events: [queue.shift()],
      hold: ok ? void 0 : hid(1),
      px: w.fbq && w.fbq.callMethod ? 1 : d.readyState == 'complete' ? 0 : void 0,
      hook: hook
    });
    hook = void 0;
    pump();
  }

  // A pixel call capi-bridge makes itself (so the hook does not see it), and its mirror.
  function send(a) {
    fb(a);
    api.m(a);
    return a[3].eventID;
  }

  var api = (w.capiBridge = {
    ready: 1,
    fb: fb,
    // Mirrors a track call the pixel has been given (args a, with its eventID): those of the
    // page's code or tag manager come from boot.js's fbq hook. trackSingle names its pixel. A
    // call made while consent is missing is also kept for a later page (see kept); a PageView
    // becomes the one a repeated PageView call on this URL is given (see boot.js). t: its time.
    m: function (a, t) {
      var s = a[0][5] == 'S', n = a[s + 1], i = '' + a[s + 3].eventID;
      if (!ok) mine.push(a), ss('capib_px', JSON.stringify(kept.concat(mine).slice(-50)));
      if (n == 'PageView') (c.u = L.href), (c.pv = i);
      queue.push({
        event_name: n,
        event_id: i,
        event_time: Math.floor((t || T()) / 1e3),
        custom_data: a[s + 2],
        event_source_url: L.href,
        referrer_url: d.referrer,
        pixel_id: s ? '' + a[1] : void 0
      });
      pump();
    },
    // Returns the event id shared by the pixel call and the server copy.
    track: function (n, x, o) {
      return send([STD.indexOf(' ' + n + ' ') < 0 ? 'trackCustom' : 'track', n, x || {}, { eventID: (o && o.eventID) || id() }]);
    },
    // For SPA route changes: the pixel's own history tracking is off (it sends no event id).
    pageView: function (i) {
      return send(['track', 'PageView', {}, { eventID: i || id() }]);
    },
    // Has the server record the choice (the consent cookie) and release (or delete) this tab's
    // held events; granted, its answer also sets _fbp and _fbc (the click dated from the
    // landing), and only then is the pixel unlocked, so it adopts them. Later events wait for
    // the answer, so they carry the cookies the server decides on.
    consent: function (g) {
      ok = !!g;
      if (!ok) fb(['consent', 'revoke']);
      busy++;
      post({ consent: ok, hold: hid(), referrer_url: d.referrer }, function () {
        settle();
        if (ok) fb(['consent', 'grant']);
        busy--;
        pump();
      });
    }
  });

  try {
    kept = JSON.parse(ss('capib_px')) || [];
  } catch (e) {}
  api.m(['track', 'PageView', {}, { eventID: c.pv }], c.t); // fired by boot.js
  stub.q.forEach(function (a) {
    try {
      api[a[0]].apply(api, a.slice(1));
    } catch (e) {} // data JSON cannot hold (a cycle): that event only is lost
  });
  // Consent arrived since this tab's events were held (a banner's cookie, another page): release
  // them, and any that reached the server after an earlier release; then the id is done with.
  if (ok && hid()) {
    post({ consent: ok, hold: hold });
    settle();
    hold = ss('capib_hold', '');
  }
})(window, document, navigator, location, function () {
  return Date.now();
});
