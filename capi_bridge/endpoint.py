"""The mirror endpoint: browser requests in, a decision out.

``POST {endpoint_path}`` (text/plain or application/json) takes
``{"token", "sent_at", "hold", "px", "hook", "events": [{event_name, event_id, event_time,
custom_data, event_source_url, referrer_url, pixel_id}]}`` or a consent message ``{"token",
"consent": bool, "hold", "referrer_url"}`` (``px``, for the inspector: 1 when the pixel library
runs in that browser, 0 when the page loaded without it, absent while the page was still
loading; ``hook``: why the page's own fbq calls are not mirrored; ``pixel_id``: the one pixel of
a ``trackSingle`` call); ``GET {endpoint_path}?token=...[&pv=<id>]`` re-issues a token (a cached
page's, or one close to expiry) and binds a PageView id minted in the browser; ``GET
{script_path}`` serves capi-bridge.js.

:meth:`BrowserEndpoint.handle` is a function of the request, its body, the visitor's consent and
test event code: it stores nothing and calls nothing back. It returns an
:class:`~capi_bridge.mirror.EndpointResult`: the answer, the events to store (all or none) and
under which hold key, the consent choice to act on, the events it did not keep and why.
:func:`capi_bridge.mirror.settle` carries it out. Bad input always gets a 4xx with a JSON
reason, never a 5xx.

Events are not mirrored, but answered 202 and counted (see :mod:`capi_bridge.drops`), when they
come from a crawler or a headless browser, go to a pixel the site does not configure
(``trackSingle``), or are neither standard nor one of ``custom_events``: the rule is
:mod:`capi_bridge.endpoint_selection`.

Consent is decided by the server (see :mod:`capi_bridge.consent`). Without it, events are still
taken, but stored *held* under ``hold``, a random id the browser keeps for the tab session; they
carry the ``fbp`` the consent answer will set (:func:`~capi_bridge.identity.held_fbp`) and a
click dated from the tab session's first page. The consent message then releases
(``consent: true``) or forgets (``false``) that browser's held events. No response sets a
cookie while consent is missing.

The endpoint is open to the internet by design, so what anonymous input may cost is bounded
here: a ``Host`` outside ``allowed_hosts`` is refused; events per minute, and rows held or
queued per client and in total, are limited (:mod:`capi_bridge.admission`, 429 with
``Retry-After``); a token is refreshed only within ``token_refresh_window`` of its page load,
which binds at most ``page_views_per_load`` PageViews.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from capi_bridge.admission import Admission, OutboxLevels
from capi_bridge.browser_payload import (
    EVENT_ID,
    HOLD_ID,
    MAX_BODY_BYTES,
    Rejected,
    check_events,
    event_name,
    hold_id,
    hold_started,
    hook_flag,
    http_url,
    pixel_flag,
    read_body,
)
from capi_bridge.consent import ConsentPolicy
from capi_bridge.cookies import cookie_domain
from capi_bridge.drops import HOOK_FAILURES, PIXEL_CALLS, Drop, classify_agent
from capi_bridge.endpoint_selection import AUTOMATIC_EVENTS, EventSelector
from capi_bridge.hosts import host_allowed, site_url
from capi_bridge.identity import TrustedProxies, held_fbp, resolve_identity
from capi_bridge.mirror import Batch, Choice, EndpointResult, answer_rejected
from capi_bridge.observations import Origin
from capi_bridge.ratelimit import RateLimiter, client_key
from capi_bridge.request import RequestView, Response
from capi_bridge.settings import Settings
from capi_bridge.signing import PageClaims, PageSigner, TokenError
from capi_bridge.snippet import script_response

logger = logging.getLogger("capi_bridge.endpoint")

#: Oldest token a consent message is taken with (a tab left open for days still records the
#: visitor's choice; refreshing a token has its own, shorter window: ``token_refresh_window``).
CHOICE_MAX_AGE = 30 * 86400.0
#: Names other modules and the tests take from here.
__all__ = ["AUTOMATIC_EVENTS", "HOLD_ID", "MAX_BODY_BYTES", "BrowserEndpoint", "RateLimiter"]


class BrowserEndpoint:
    """Framework-neutral handler for the endpoint and script routes; one per app."""

    max_body_bytes = MAX_BODY_BYTES

    def __init__(
        self,
        settings: Settings,
        *,
        consent: ConsentPolicy | None = None,
        signer: PageSigner | None = None,
        proxies: TrustedProxies | None = None,
        rate_limiter: RateLimiter | None = None,
        levels: OutboxLevels | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``consent`` defaults to the site's policy from ``settings`` (what
        :class:`~capi_bridge.pages.PageBridge` passes: the one its pages use); ``levels``, the
        outbox's counts, enable the total caps (``max_held_rows``, ``max_pending_rows``)."""
        self.settings = settings
        self.policy = consent or ConsentPolicy.from_settings(settings)
        self.signer = signer or PageSigner.from_settings(settings, clock=clock)
        self.proxies = proxies or TrustedProxies.from_settings(settings)
        self.admission = Admission(settings, limiter=rate_limiter, levels=levels, clock=clock)
        self.limiter = self.admission.limiter
        self.selector = EventSelector(settings)
        assert settings.secret_key  # PageSigner refused to start without one
        self._secret = settings.secret_key
        self._clock = clock

    def handles(self, path: str) -> bool:
        """Whether ``path`` is one of this endpoint's routes (adapters route on it)."""
        return path in (self.settings.endpoint_path, self.settings.script_path)

    def handle(
        self,
        request: RequestView,
        body: bytes = b"",
        *,
        consent: bool | None = None,
        test_code: str | None = None,
    ) -> EndpointResult:
        """Decide on one request to a route of ours; never raises. ``consent`` is the
        visitor's (default: the policy's answer for ``request``); ``test_code`` routes the
        accepted events to Events Manager's Test events tab."""
        try:
            if request.path == self.settings.script_path:
                return EndpointResult(script_response(request))
            if request.path != self.settings.endpoint_path:
                raise Rejected(404, "not_found", "no such capi-bridge route")
            key = client_key(self.proxies.client_ip(request))
            self.admission.request(key)
            if not host_allowed(request.host, self.settings.allowed_hosts):
                raise Rejected(
                    400,
                    "host_not_allowed",
                    "this site does not answer for this Host "
                    f"({self.settings.name_of('allowed_hosts')})",
                    "Host",
                )
            allowed = self.policy.allows(request) if consent is None else consent
            if request.method == "GET":
                return EndpointResult(self._refresh(request, allowed))
            if request.method != "POST":
                raise Rejected(
                    405,
                    "method_not_allowed",
                    "use POST (or GET to refresh a token)",
                    headers=(("Allow", "GET, POST"),),
                )
            self._check_origin(request, required=True)
            data = read_body(request, body)
            if "events" not in data:
                return self._choice(request, data)
            return self._events(request, data, allowed, test_code, key)
        except Rejected as exc:
            return answer_rejected(exc)
        except Exception as exc:  # a bug of ours: log where (not the message: it may hold
            # request data), still answer as bad input
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            logger.error(
                "unexpected %s at %s:%s while handling a browser request",
                type(exc).__name__,
                frame.filename,
                frame.lineno,
            )
            return answer_rejected(
                Rejected(400, "unprocessable", "the request could not be processed")
            )

    # --- checks -------------------------------------------------------------------------------

    def _check_origin(self, request: RequestView, *, required: bool) -> None:
        """Same-site check: browsers send ``Origin`` on every POST, ``Referer`` on most GETs."""
        origin = request.headers.get("origin")
        source = origin if origin and origin != "null" else request.headers.get("referer")
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise Rejected(403, "origin_forbidden", "cross-site requests are refused", "Origin")
        if not source:
            if required:
                raise Rejected(403, "origin_missing", "no Origin or Referer header", "Origin")
            return
        if not site_url(source, request.host, self.settings.allowed_hosts):
            raise Rejected(403, "origin_forbidden", "request from another site", "Origin")

    def _verify(self, request: RequestView, token: Any, max_age: float | None = None) -> PageClaims:
        try:
            return self.signer.verify(token, host=request.host, max_age=max_age)
        except TokenError as exc:
            raise Rejected(403, exc.code, str(exc), "token") from None

    def _page_url(self, raw: str | None, request: RequestView) -> str | None:
        """The page's URL: the one posted, else the Referer, if it is one of this site's."""
        allowed = self.settings.allowed_hosts
        for candidate in (raw, request.headers.get("referer")):
            if candidate and len(candidate) <= 2048 and site_url(candidate, request.host, allowed):
                return candidate
        return None

    def _held_identity(
        self, request: RequestView, hold: str | None
    ) -> tuple[int | None, str | None]:
        """When a held tab session began (ms) and the fbp its events carry (see held_fbp)."""
        if hold is None:
            return None, None
        now = self._clock()
        started = hold_started(hold, now=now, oldest=self.settings.held_ttl + 3600)
        if started is None:
            return None, None
        _, index = cookie_domain(request.host, self.settings.cookie_domain)
        return started, held_fbp(self._secret, hold, index, started)

    # --- routes -------------------------------------------------------------------------------

    def _refresh(self, request: RequestView, consent: bool) -> Response:
        """A fresh token for a page (cached, long-lived, or binding a new PageView id), only
        within ``token_refresh_window`` of the page load its token descends from."""
        self._check_origin(request, required=False)
        window = self.settings.token_refresh_window
        claims = self._verify(request, request.query_param("token"), window)
        if self._clock() - claims.loaded_at > window:
            raise Rejected(
                403,
                "token_expired",
                "the page was served too long ago for its token to be refreshed: reload it",
                "token",
            )
        pv = request.query_param("pv")
        if pv is not None and not EVENT_ID.fullmatch(pv):
            raise Rejected(400, "event_id_invalid", "pv is not a well-formed event id", "pv")
        if pv is not None and pv != claims.page_view_id:  # counted per page load
            self.admission.page_view(claims.root or f"{claims.host}:{claims.loaded_at}")
        page_view_id = pv or claims.page_view_id
        token = self.signer.issue(host=request.host, page_view_id=page_view_id, descends=claims)
        identity = resolve_identity(
            request,
            self.settings,
            proxies=self.proxies,
            consent=consent,
            write_cookies=True,
            mint=False,  # the pixel may be minting its own right now: only refresh
        )
        return Response.json(
            200,
            {"token": token, "page_view_id": page_view_id, "ttl": int(self.signer.max_age)},
            headers=[("Set-Cookie", cookie) for cookie in identity.cookies],
        )

    def _events(
        self,
        request: RequestView,
        data: dict[str, Any],
        consent: bool,
        test_code: str | None,
        key: str,
    ) -> EndpointResult:
        claims = self._verify(request, data.get("token"))
        loaded = pixel_flag(data.get("px"))
        hook = hook_flag(data.get("hook"))
        hold = None if consent else hold_id(data.get("hold"), required=True)
        dropped = [Drop(PIXEL_CALLS, "not_mirrored", HOOK_FAILURES[hook])] if hook else []
        try:
            events = check_events(
                data["events"],
                data.get("sent_at"),
                now=self._clock(),
                max_value=self.settings.max_event_value,
            )
        except Rejected as exc:  # none of the post is stored: each event counts as refused
            raw = data["events"] if isinstance(data["events"], list) else []
            names = [name for name in map(event_name, raw[:20]) if name is not None]
            dropped += [Drop(name, "refused", exc.message) for name in names]
            return EndpointResult(exc.response(), dropped=tuple(dropped))
        self.admission.events(key, len(events))
        for index, event in enumerate(events):
            if event["event_name"] == "PageView" and event["event_id"] != claims.page_view_id:
                raise Rejected(
                    403,
                    "page_view_not_bound",
                    "a PageView needs the id its page token binds (GET a fresh token first)",
                    f"events[{index}].event_id",
                )
        chosen = self.selector.select(events, classify_agent(request.headers.get("user-agent")))
        dropped += chosen.dropped
        if chosen.kept:  # one row per event and pixel it goes to
            pixels = len(self.selector.pixels) if chosen.target is None else 1
            self.admission.rows(key, len(chosen.kept) * pixels, held=hold is not None)
        started, fbp = self._held_identity(request, hold)
        enriched = tuple(self._enrich(request, e, claims, started, fbp) for e in chosen.kept)
        answer: dict[str, Any] = {"accepted": len(enriched)}
        if chosen.ignored:
            answer["ignored"] = chosen.ignored
        batch = None
        if enriched:
            batch = Batch(
                enriched,
                hold=hold,
                pixel_id=chosen.target,
                origin=Origin("browser", pixel_loaded=loaded),
                test_event_code=test_code,
                positions=tuple(chosen.positions),
            )
        return EndpointResult(Response.json(202, answer), batch=batch, dropped=tuple(dropped))

    def _choice(self, request: RequestView, data: dict[str, Any]) -> EndpointResult:
        """Record the visitor's choice (cookies); on consent also set ``_fbp``/``_fbc`` (the
        held events' values, the click dated from the tab session's first page) before the
        browser unlocks the pixel, so both channels carry the same."""
        granted = data.get("consent")
        if not isinstance(granted, bool):
            raise Rejected(400, "malformed", "send events, or consent true/false", "events")
        self._verify(request, data.get("token"), CHOICE_MAX_AGE)
        hold = hold_id(data.get("hold"), required=False)
        domain, _ = cookie_domain(request.host, self.settings.cookie_domain)
        secure = self.proxies.scheme(request) == "https"
        headers = self.policy.choice_cookies(granted, domain=domain, secure=secure)
        consented = self.policy.after_choice(request, granted)
        if consented:
            started, fbp = self._held_identity(request, hold)
            identity = resolve_identity(
                request,
                self.settings,
                proxies=self.proxies,
                now_ms=started or int(self._clock() * 1000),
                write_cookies=True,
                page_url=self._page_url(None, request),
                page_referrer=http_url(data.get("referrer_url"), "referrer_url"),
                fallback_fbp=fbp,
            )
            headers += [("Set-Cookie", cookie) for cookie in identity.cookies]
        action = "release" if consented else None if granted else "forget"
        choice = Choice(hold, action) if hold is not None and action is not None else None
        return EndpointResult(Response.empty(204, headers=headers), choice=choice)

    def _enrich(
        self,
        request: RequestView,
        event: dict[str, Any],
        claims: PageClaims,
        started: int | None,
        fbp: str | None,
    ) -> dict[str, Any]:
        page_url = self._page_url(event.pop("event_source_url", None), request)
        identity = resolve_identity(
            request,
            self.settings,
            proxies=self.proxies,
            # without an _fbc cookie, a click id in the URL dates from the page (or from the
            # held tab session's first page), not from now
            now_ms=started or int(claims.issued_at * 1000),
            page_url=page_url,
            page_referrer=event.get("referrer_url"),
            fallback_fbp=fbp,
        )
        out = {**event, "action_source": "website", "user_data": identity.user_data()}
        if page_url:
            out["event_source_url"] = page_url
        return out
