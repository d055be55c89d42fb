"""The mirror endpoint: browser events in, enriched server events out to the sink.

``POST {endpoint_path}`` (text/plain or application/json) takes
``{"token", "sent_at", "hold", "px", "events": [{event_name, event_id, event_time, custom_data,
event_source_url, referrer_url}]}`` or a consent message ``{"token", "consent": bool, "hold"}``
(``px``, for the inspector: 1 when the pixel library runs in that browser, 0 when the page
loaded without it, absent while the page was still loading);
``GET {endpoint_path}?token=...[&pv=<id>]`` re-issues a token (a cached page's, or one close to
expiry) and binds a PageView id minted in the browser; ``GET {script_path}`` serves
capi-bridge.js. Every request is checked in full before the sink sees anything, so a rejected
request stores nothing, and bad input always gets a 4xx with a JSON reason, never a 5xx: the
only 5xx is 503 when the sink itself fails (a full disk, a closed outbox).

Consent is decided by the server from the request (the consent cookie, or the app's
``consent_check``), never from a flag the browser sends. Without it, events are still taken,
but stored *held* under ``hold``, a random id the browser keeps for the tab session: the consent
message then releases (``consent: true``) or forgets (``false``) that browser's held events.
No response sets a cookie while consent is missing.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import re
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from capi_bridge.browser_payload import EVENT_ID, Rejected, check_events
from capi_bridge.cookies import (
    CONSENT_COOKIE,
    CONSENT_MAX_AGE,
    FBC_COOKIE,
    FBP_COOKIE,
    PAGE_COOKIE,
    cookie_domain,
    expire_cookie,
    set_cookie,
)
from capi_bridge.errors import InvalidEvent
from capi_bridge.events import STANDARD_EVENTS
from capi_bridge.identity import TrustedProxies, resolve_identity
from capi_bridge.request import RequestView, Response
from capi_bridge.signing import PageClaims, PageSigner, TokenError, normalize_host
from capi_bridge.snippet import ConsentCheck, consent_given, script_response

logger = logging.getLogger("capi_bridge.endpoint")

#: Largest request body read; adapters read at most ``MAX_BODY_BYTES + 1`` bytes.
MAX_BODY_BYTES = 64 * 1024
#: Oldest token a cached page may trade in for a fresh one (and send consent with).
REFRESH_MAX_AGE = 30 * 86400.0
#: Clients whose rate-limit buckets are remembered; the least recently seen are forgotten.
MAX_TRACKED_CLIENTS = 10_000
_CONTENT_TYPES = ("text/plain", "application/json")
_BODY_KEYS = frozenset({"token", "events", "consent", "sent_at", "hold", "px"})
#: The browser's hold id: random, per tab session (capi-bridge.js sends a UUID).
HOLD_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_HOLD_FORMAT = "16 to 64 characters of A-Z, a-z, 0-9, '_' and '-'"
#: While the sink stores a post's events: whether the pixel library had loaded in the browser
#: that sent them (its ``px``; None when it did not say), for the sink to record.
PIXEL_LOADED: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "capi_bridge_pixel_loaded", default=None
)


class Sink(Protocol):
    """Where accepted events go: ``Bridge.enqueue`` fits. ``hold`` is the key to store the
    event under until consent (``None``: consent given, send it)."""

    def __call__(self, event: Mapping[str, Any], /, *, hold: str | None = ...) -> object: ...


#: Returns Meta's reasons to reject an event (empty when valid), or raises ``InvalidEvent``.
Validator = Callable[[Mapping[str, Any]], "Sequence[str] | None"]
#: Told of each event of a post that was refused as invalid (so stored nowhere, while the
#: browser's pixel fired it): the event, why, and the post's ``px``.
Refused = Callable[[Mapping[str, Any], str, "bool | None"], object]


class RateLimiter:
    """A token bucket per client key: ``per_minute`` requests, refilled continuously.

    Memory is bounded: past ``max_clients`` keys the least recently seen is dropped (an
    attacker spraying addresses only resets buckets of clients that went quiet).
    """

    def __init__(
        self,
        per_minute: int,
        *,
        max_clients: int = MAX_TRACKED_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait_time(self, key: str) -> float:
        """0 when the request may go ahead (and is counted), else seconds until it may."""
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[key] = (tokens - 1 if wait == 0 else tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait


def _error(
    status: int, code: str, message: str, field: str | None = None, **extra: Any
) -> Response:
    return Response.json(
        status, {"error": {"code": code, "message": message, "field": field}}, **extra
    )


class BrowserEndpoint:
    """Framework-neutral handler for the endpoint and script routes; one per app."""

    max_body_bytes = MAX_BODY_BYTES

    def __init__(
        self,
        settings: Any,
        sink: Sink,
        *,
        validate: Validator | None = None,
        signer: PageSigner | None = None,
        proxies: TrustedProxies | None = None,
        rate_limiter: RateLimiter | None = None,
        consent_required: bool | None = None,
        consent_check: ConsentCheck | None = None,
        release: Callable[[str], int] | None = None,
        forget: Callable[[str], int] | None = None,
        refused: Refused | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``sink`` is ``Bridge.enqueue``. ``validate`` (default: ``validate_event``, the rules
        the Bridge applies) runs on every event of a request before the first one reaches the
        sink, so one invalid event cannot leave its siblings half-stored.

        Consent follows ``settings.consent_required`` and the ``settings.consent_cookie``
        cookie; ``consent_required`` overrides the setting, and ``consent_check`` (the app's
        own CMP logic), when given, decides alone. ``release`` and ``forget`` are
        ``Bridge.release`` and ``Bridge.forget``: the consent message calls them with the
        browser's hold id. ``refused`` hears of events refused as invalid (the inspector
        records them: their pixel copy has no server copy)."""
        if validate is None:
            from capi_bridge.validation import validate_event

            def validate(event: Mapping[str, Any]) -> Sequence[str]:
                return validate_event(event, now=self._clock())

        self.settings = settings
        self.sink = sink
        self.validate = validate
        self.signer = signer or PageSigner.from_settings(settings, clock=clock)
        self.proxies = proxies or TrustedProxies.from_settings(settings)
        self.limiter = rate_limiter or RateLimiter(settings.rate_limit)
        if consent_required is None:
            consent_required = bool(getattr(settings, "consent_required", False))
        self.consent_required = consent_required
        self.consent_check = consent_check
        self.consent_cookie = str(getattr(settings, "consent_cookie", CONSENT_COOKIE))
        self.release = release
        self.forget = forget
        self.refused = refused
        self.event_names = STANDARD_EVENTS | frozenset(settings.custom_events)
        self._clock = clock
        if (consent_required or consent_check is not None) and release is None:
            logger.warning(
                "consent is required but BrowserEndpoint got no release callable: events held "
                "for consent will never be sent. Pass release=bridge.release, "
                "forget=bridge.forget"
            )

    def handles(self, path: str) -> bool:
        """Whether ``path`` is one of this endpoint's routes (adapters route on it)."""
        return path in (self.settings.endpoint_path, self.settings.script_path)

    def handle(self, request: RequestView, body: bytes = b"") -> Response:
        """Answer one request to a route of ours; never raises."""
        try:
            if request.path == self.settings.script_path:
                return script_response(request)
            if request.path != self.settings.endpoint_path:
                return _error(404, "not_found", "no such capi-bridge route")
            client = self.proxies.client_ip(request)
            wait = self.limiter.wait_time(str(client) if client else "unknown")
            if wait:
                return _error(
                    429,
                    "rate_limited",
                    "too many requests from this client; retry later",
                    headers=[("Retry-After", str(math.ceil(wait)))],
                )
            if request.method == "GET":
                return self._refresh(request)
            if request.method != "POST":
                return _error(
                    405,
                    "method_not_allowed",
                    "use POST (or GET to refresh a token)",
                    headers=[("Allow", "GET, POST")],
                )
            return self._post(request, body)
        except Rejected as exc:
            return _error(exc.status, exc.code, exc.message, exc.field)
        except Exception as exc:  # a bug of ours: log where (not the message: it may hold
            # request data), still answer as bad input
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            logger.error(
                "unexpected %s at %s:%s while handling a browser request",
                type(exc).__name__,
                frame.filename,
                frame.lineno,
            )
            return _error(400, "unprocessable", "the request could not be processed")

    # --- checks -------------------------------------------------------------------------------

    def _host_allowed(self, netloc: str, request: RequestView) -> bool:
        if normalize_host(netloc) == normalize_host(request.host):
            return True
        name = urlsplit(f"//{netloc}").hostname or ""
        for allowed in self.settings.allowed_hosts:
            allowed = allowed.lower()
            if allowed == "*" or name == allowed.lstrip("."):
                return True
            if allowed.startswith(".") and name.endswith(allowed):
                return True
        return False

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
        parts = urlsplit(source)
        if parts.scheme not in ("http", "https") or not self._host_allowed(parts.netloc, request):
            raise Rejected(403, "origin_forbidden", "request from another site", "Origin")

    def _verify(self, request: RequestView, token: Any, max_age: float | None = None) -> PageClaims:
        try:
            return self.signer.verify(token, host=request.host, max_age=max_age)
        except TokenError as exc:
            raise Rejected(403, exc.code, str(exc), "token") from None

    def consent(self, request: RequestView) -> bool:
        """Whether this request's visitor allows events to be sent and cookies to be set."""
        return consent_given(
            request,
            required=self.consent_required,
            cookie=self.consent_cookie,
            check=self.consent_check,
        )

    def _page_url(self, raw: str | None, request: RequestView) -> str | None:
        for candidate in (raw, request.headers.get("referer")):
            if candidate and len(candidate) <= 2048:
                parts = urlsplit(candidate)
                if parts.scheme in ("http", "https") and self._host_allowed(parts.netloc, request):
                    return candidate
        return None

    # --- routes -------------------------------------------------------------------------------

    def _refresh(self, request: RequestView) -> Response:
        self._check_origin(request, required=False)
        claims = self._verify(request, request.query_param("token"), REFRESH_MAX_AGE)
        pv = request.query_param("pv")
        if pv is not None and not EVENT_ID.fullmatch(pv):
            raise Rejected(400, "event_id_invalid", "pv is not a well-formed event id", "pv")
        page_view_id = pv or claims.page_view_id
        token = self.signer.issue(host=request.host, page_view_id=page_view_id)
        identity = resolve_identity(
            request,
            self.settings,
            proxies=self.proxies,
            consent=self.consent(request),
            write_cookies=True,
            mint=False,  # the pixel may be minting its own right now: only refresh
        )
        return Response.json(
            200,
            {"token": token, "page_view_id": page_view_id, "ttl": int(self.signer.max_age)},
            headers=[("Set-Cookie", cookie) for cookie in identity.cookies],
        )

    def _read_json(self, request: RequestView, body: bytes) -> dict[str, Any]:
        declared = request.headers.get("content-length") or "0"
        if len(body) > MAX_BODY_BYTES or (declared.isdigit() and int(declared) > MAX_BODY_BYTES):
            raise Rejected(413, "body_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype not in _CONTENT_TYPES:
            raise Rejected(
                415, "unsupported_media_type", "send text/plain or application/json", "Content-Type"
            )
        self._check_origin(request, required=True)
        try:
            data = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
        except (ValueError, RecursionError):
            raise Rejected(400, "malformed", "the body is not JSON") from None
        if not isinstance(data, dict):
            raise Rejected(400, "malformed", "the body must be a JSON object")
        unknown = sorted(set(data) - _BODY_KEYS)
        if unknown:
            raise Rejected(400, "unknown_field", f"unexpected key {unknown[0]!r}", unknown[0])
        return data

    def _post(self, request: RequestView, body: bytes) -> Response:
        data = self._read_json(request, body)
        if "events" not in data:
            return self._consent_message(request, data)
        claims = self._verify(request, data.get("token"))
        pixel_loaded = _pixel_flag(data.get("px"))
        hold = None if self.consent(request) else _hold_id(data.get("hold"), required=True)
        now = self._clock()
        events = check_events(data["events"], data.get("sent_at"), now=now, names=self.event_names)
        for index, event in enumerate(events):
            if event["event_name"] == "PageView" and event["event_id"] != claims.page_view_id:
                raise Rejected(
                    403,
                    "page_view_not_bound",
                    "a PageView needs the id its page token binds (GET a fresh token first)",
                    f"events[{index}].event_id",
                )
        enriched = [self._enrich(request, event, claims) for event in events]
        reset = PIXEL_LOADED.set(pixel_loaded)
        try:
            return self._store(enriched, hold)
        finally:
            PIXEL_LOADED.reset(reset)

    def _consent_message(self, request: RequestView, data: dict[str, Any]) -> Response:
        """Record the visitor's choice (cookies) and release or forget their held events.

        The choice is recorded even when the outbox fails (503): it is the visitor's, and the
        held events then simply wait (and expire) instead of being sent.
        """
        granted = data.get("consent")
        if not isinstance(granted, bool):
            raise Rejected(400, "malformed", "send events, or consent true/false", "events")
        self._verify(request, data.get("token"), REFRESH_MAX_AGE)
        hold = _hold_id(data.get("hold"), required=False)
        cookies = self._consent_cookies(request, granted)
        action = self.release if granted else self.forget
        if hold is not None and action is not None:
            try:
                action(hold)
            except Exception as exc:
                logger.error(
                    "%s of held events raised %s; answering 503",
                    "release" if granted else "forget",
                    type(exc).__name__,
                )
                return _error(
                    503,
                    "unavailable",
                    "the consent choice is recorded but held events cannot be updated now",
                    headers=[("Retry-After", "30"), *cookies],
                )
        return Response.empty(204, headers=cookies)

    def _enrich(
        self, request: RequestView, event: dict[str, Any], claims: PageClaims
    ) -> dict[str, Any]:
        page_url = self._page_url(event.pop("event_source_url", None), request)
        identity = resolve_identity(
            request,
            self.settings,
            proxies=self.proxies,
            # without an _fbc cookie, a click id in the URL dates from the page, not from now
            now_ms=int(claims.issued_at * 1000),
            page_url=page_url,
        )
        out = {**event, "action_source": "website", "user_data": identity.user_data()}
        if page_url:
            out["event_source_url"] = page_url
        return out

    def _store(self, events: list[dict[str, Any]], hold: str | None) -> Response:
        position = "events"
        try:
            refused = self._check_all(events, report=hold is None)
            if refused is not None:
                position = f"events[{refused[0]}]"
                raise InvalidEvent(refused[1])
            for index, event in enumerate(events):
                position = f"events[{index}]"
                self.sink(event, hold=hold)
        except InvalidEvent as exc:
            return Response.json(
                400,
                {
                    "error": {
                        "code": "invalid_event",
                        "message": "; ".join(exc.problems),
                        "field": position,
                        "problems": exc.problems,
                    }
                },
            )
        except Exception as exc:
            logger.error("the event sink raised %s; answering 503", type(exc).__name__)
            return _error(
                503,
                "unavailable",
                "events cannot be stored right now",
                headers=[("Retry-After", "30")],
            )
        return Response.json(202, {"accepted": len(events)})

    def _check_all(
        self, events: list[dict[str, Any]], *, report: bool
    ) -> tuple[int, list[str]] | None:
        """The first invalid event's index and problems, once every event is checked (and,
        with ``report``, ``refused`` told of each, since none of them will be stored: never
        for a visitor who has not consented); None if all are valid."""
        found: list[list[str]] = []
        for event in events:
            try:
                found.append(list(self.validate(event) or ()))
            except InvalidEvent as exc:
                found.append(list(exc.problems))
        first = next((i for i, problems in enumerate(found) if problems), None)
        if first is None:
            return None
        if self.refused is not None and report:
            for index, (event, problems) in enumerate(zip(events, found, strict=True)):
                why = "; ".join(problems) or (
                    f"not stored: events[{first}] of the same request was refused"
                )
                try:
                    self.refused(event, why, PIXEL_LOADED.get())
                except Exception as exc:  # only a record: the answer stays the 400
                    logger.warning("recording refused event %d: %s", index, type(exc).__name__)
        return first, found[first]

    def _consent_cookies(self, request: RequestView, granted: bool) -> list[tuple[str, str]]:
        domain, _ = cookie_domain(request.host, self.settings.cookie_domain)
        secure = self.proxies.scheme(request) == "https"
        if granted:
            values = [
                set_cookie(
                    self.consent_cookie,
                    "1",
                    max_age=CONSENT_MAX_AGE,
                    domain=domain,
                    secure=secure,
                    http_only=True,
                )
            ]
        else:  # withdrawal: forget the choice and the identifiers it allowed
            values = [
                expire_cookie(name, domain=domain, secure=secure)
                for name in (self.consent_cookie, FBP_COOKIE, FBC_COOKIE)
            ] + [expire_cookie(PAGE_COOKIE)]
        return [("Set-Cookie", value) for value in values]


def _hold_id(value: Any, *, required: bool) -> str | None:
    """The body's ``hold`` id, checked: the key held events are stored and released under."""
    if value is None:
        if not required:
            return None
        raise Rejected(
            400,
            "hold_missing",
            "consent is required and not given: send the browser's hold id "
            f"({_HOLD_FORMAT}) so these events wait for consent",
            "hold",
        )
    if not isinstance(value, str) or not HOLD_ID.fullmatch(value):
        raise Rejected(400, "hold_invalid", f"hold must be {_HOLD_FORMAT}", "hold")
    return value


def _pixel_flag(value: Any) -> bool | None:
    """The body's ``px``: did fbevents.js load in the browser (absent: it did not say)."""
    if value is None:
        return None
    if value in (0, 1) and not isinstance(value, float):
        return bool(value)
    raise Rejected(400, "malformed", "px must be 0 or 1 (did the pixel library load)", "px")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
