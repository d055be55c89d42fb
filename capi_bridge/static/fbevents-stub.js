/* A local stand-in for Meta's fbevents.js, for the demo and the end-to-end tests. It never
 * talks to Meta. Like the real library it takes over fbq: callMethod runs calls, and the queue
 * the base code collected before it loaded is replayed in order.
 *
 * window.__fbqCalls  every fbq call, as an array of its arguments
 * window.__fbqSent   what the real pixel would transmit: one entry per pixel per event, with
 *                    the eventID and the _fbp/_fbc cookies it would attach
 *
 * It models the behaviour capi-bridge relies on: consent 'revoke' holds every later call until
 * 'grant' (then replays them); one PageView per pixel per page unless
 * fbq.allowDuplicatePageViews; an existing _fbp cookie is reused, a missing one minted. */
(function (w, d) {
  var f = w.fbq;
  if (!f || f.callMethod) return;
  var calls = (w.__fbqCalls = w.__fbqCalls || []);
  var sent = (w.__fbqSent = w.__fbqSent || []);
  var pixels = [], held = [], locked = false, pageViews = {};

  function cookie(name) {
    var m = d.cookie.match(new RegExp('(?:^|;\\s*)' + name + '=([^;]*)'));
    return m ? m[1] : null;
  }

  function fbp() {
    var value = cookie('_fbp');
    if (!value) {
      value = 'fb.1.' + Date.now() + '.' + Math.floor(Math.random() * 1e9);
      d.cookie = '_fbp=' + value + ';Path=/;Max-Age=7776000;SameSite=Lax';
    }
    return value;
  }

  function run(args) {
    var method = args[0];
    if (method == 'consent') {
      locked = args[1] == 'revoke';
      if (!locked) held.splice(0).forEach(run);
      return;
    }
    if (locked) {
      held.push(args);
      return;
    }
    if (method == 'init') {
      if (pixels.indexOf(args[1]) < 0) pixels.push(args[1]);
      return;
    }
    if (method != 'track' && method != 'trackCustom') return;
    pixels.forEach(function (pixel) {
      if (args[1] == 'PageView') {
        if (pageViews[pixel] && !f.allowDuplicatePageViews) return;
        pageViews[pixel] = true;
      }
      sent.push({
        pixel: pixel,
        method: method,
        event: args[1],
        data: args[2] || {},
        eventID: (args[3] || {}).eventID,
        fbp: fbp(),
        fbc: cookie('_fbc')
      });
    });
  }

  f.callMethod = function () {
    var args = Array.prototype.slice.call(arguments);
    calls.push(args);
    run(args);
  };
  var queued = f.queue || [];
  f.queue = [];
  for (var i = 0; i < queued.length; i++) f.callMethod.apply(f, queued[i]);
})(window, document);
