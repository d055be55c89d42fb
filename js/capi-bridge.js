/* capi-bridge.js: Meta's redundant setup in the browser. Every event goes to the pixel
 * (fbq) and, with the same name and eventID, to the site's own endpoint, which forwards it
 * through the Conversions API; Meta deduplicates the pair. The mirror does not depend on
 * fbevents.js: when an ad blocker drops the pixel, the server copy still arrives.
 * Config comes from window.capiBridgeConfig, written by the page snippet (boot.js). */
(function (w, d, N) {
  var c = w.capiBridgeConfig, stub = w.capiBridge;
  if (!c || !stub || stub.ready) return;
  var STD = ' AddPaymentInfo AddToCart AddToWishlist CompleteRegistration Contact CustomizeProduct' +
    ' Donate FindLocation InitiateCheckout Lead PageView Purchase Schedule Search StartTrial' +
    ' SubmitApplication Subscribe ViewContent ';
  // token: proves the page came from this site; bound: the PageView id it vouches for.
  var token = c.token, bound = c.cached ? 0 : c.pv, t0 = c.t || Date.now();
  // ok: the server said the visitor consented. Until then events are still posted, marked with
  // the tab session's hold id: the server keeps them in its outbox (not sent to Meta) until
  // consent(true) releases them, so they survive navigation, unlike the pixel's own queue.
  var ok = !c.hold, busy = 0, queue = [], id = stub.id, hold;

  function fb() {
    if (w.fbq) w.fbq.apply(w, arguments);
  }

  // The hold id lives in sessionStorage (strictly necessary first-party storage, never sent to
  // Meta), so held events of every page of this tab are released together; in memory when
  // storage is unavailable. make: create one if there is none.
  function hid(make) {
    try {
      hold = hold || sessionStorage.capib_hold || (make ? (sessionStorage.capib_hold = id()) : hold);
    } catch (e) {
      hold = hold || (make ? id() : hold);
    }
    return hold;
  }

  // text/plain keeps the request "simple": no CORS preflight, and sendBeacon survives unload.
  // done: wait for the answer (fetch) and call it then.
  function post(body, done) {
    body.token = token;
    body.sent_at = Date.now();
    body = JSON.stringify(body);
    if (done || !(N.sendBeacon && N.sendBeacon(c.endpoint, body))) {
      fetch(c.endpoint, {
        method: 'POST',
        body: body,
        keepalive: true,
        credentials: 'same-origin',
        headers: { 'Content-Type': 'text/plain' }
      })
        .catch(function () {})
        .then(done);
    }
  }

  function unbound(e) {
    return e.event_name == 'PageView' && e.event_id != bound;
  }

  // Sends queued events in order. A PageView the token does not vouch for (cached page, SPA
  // route change) and a token close to expiry first get a fresh token from the endpoint.
  function pump() {
    var e = queue[0], batch = [];
    if (busy || !e) return;
    if (unbound(e) || Date.now() - t0 > (c.ttl - 60) * 1e3) {
      busy++;
      fetch(c.endpoint + '?token=' + encodeURIComponent(token) + (unbound(e) ? '&pv=' + e.event_id : ''), {
        credentials: 'same-origin',
        cache: 'no-store'
      })
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
          t0 = Date.now();
          busy--;
          pump();
        });
      return;
    }
    while (queue[0] && batch.length < 20 && !unbound(queue[0])) batch.push(queue.shift());
    // px, for the site's inspector: 1 once fbevents.js runs here (it sets callMethod), 0 when
    // the page has loaded without it (blocked or failed: its script delays the load event);
    // left out while the page is still loading, since it may yet arrive.
    post({
      events: batch,
      hold: ok ? void 0 : hid(1),
      px: w.fbq && w.fbq.callMethod ? 1 : d.readyState == 'complete' ? 0 : void 0
    });
    pump();
  }

  function mirror(n, i, x, t) {
    queue.push({
      event_name: n,
      event_id: i,
      event_time: Math.floor((t || Date.now()) / 1e3),
      custom_data: x,
      event_source_url: location.href,
      referrer_url: d.referrer || undefined
    });
    pump();
  }

  var api = (w.capiBridge = {
    ready: 1,
    id: id,
    // Returns the event id shared by the pixel call and the server copy.
    track: function (n, x, o) {
      var i = (o && o.eventID) || id();
      fb(STD.indexOf(' ' + n + ' ') < 0 ? 'trackCustom' : 'track', n, x || {}, { eventID: i });
      mirror(n, i, x);
      return i;
    },
    // For SPA route changes: the pixel's own history tracking is off (it sends no event id).
    pageView: function (i) {
      i = typeof i == 'string' ? i : id();
      fb('track', 'PageView', {}, { eventID: i });
      mirror('PageView', i);
      return i;
    },
    // Unlocks (or locks) the pixel, and has the server release (or delete) this tab's held
    // events and set (or clear) the consent cookie. Later events wait for its answer, so they
    // carry the cookie the server decides on.
    consent: function (g) {
      ok = !!g;
      fb('consent', ok ? 'grant' : 'revoke');
      busy++;
      post({ consent: ok, hold: hid() }, function () {
        busy--;
        pump();
      });
    }
  });

  mirror('PageView', c.pv, null, c.t);
  stub.q.forEach(function (a) {
    api[a[0]].apply(api, a.slice(1));
  });
  // Consent arrived since this tab's events were held (a banner's cookie, another page): release
  // them, and any that reached the server after an earlier release; then the id is done with.
  if (!c.hold && hid()) {
    post({ consent: ok, hold: hold });
    sessionStorage.removeItem('capib_hold');
    hold = null;
  }
})(window, document, navigator);
