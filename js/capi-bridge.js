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
  var ok = !c.hold, busy = 0, queue = [], id = stub.id;

  function fb() {
    if (w.fbq) w.fbq.apply(w, arguments);
  }

  // text/plain keeps the request "simple": no CORS preflight, and sendBeacon survives unload.
  function post(body) {
    body.token = token;
    body.sent_at = Date.now();
    body = JSON.stringify(body);
    if (!(N.sendBeacon && N.sendBeacon(c.endpoint, body))) {
      fetch(c.endpoint, {
        method: 'POST',
        body: body,
        keepalive: true,
        credentials: 'same-origin',
        headers: { 'Content-Type': 'text/plain' }
      }).catch(function () {});
    }
  }

  function unbound(e) {
    return e.event_name == 'PageView' && e.event_id != bound;
  }

  // Sends queued events in order. A PageView the token does not vouch for (cached page, SPA
  // route change) and a token close to expiry first get a fresh token from the endpoint.
  function pump() {
    var e = queue[0], batch = [];
    if (busy || !ok || !e) return;
    if (unbound(e) || Date.now() - t0 > (c.ttl - 60) * 1e3) {
      busy = 1;
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
          busy = 0;
          pump();
        });
      return;
    }
    while (queue[0] && batch.length < 20 && !unbound(queue[0])) batch.push(queue.shift());
    post({ events: batch });
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
    // Mirrors the pixel's consent lock: nothing is sent to the endpoint until granted.
    consent: function (g) {
      ok = !!g;
      fb('consent', ok ? 'grant' : 'revoke');
      post({ consent: ok });
      pump();
    }
  });

  mirror('PageView', c.pv, null, c.t);
  stub.q.forEach(function (a) {
    api[a[0]].apply(api, a.slice(1));
  });
})(window, document, navigator);
