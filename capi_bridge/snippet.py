"""The pixel snippet: one inline ``<script>``, the capi-bridge.js tag and a ``<noscript>`` image.

The inline script is Meta's base code loader, ``fbq('init')`` per pixel, the bridge
configuration (endpoint, signed page token, the page's PageView id) and ``boot.js``, which
takes over ``fbq`` (so the page's own pixel calls are mirrored too, unless
``mirror_pixel_calls`` is off) and fires ``fbq('track', 'PageView', {}, {eventID})``. The
server copy of that PageView is *not* recorded here: capi-bridge.js reports it through the
endpoint once the page has run (so crawlers without JavaScript, unshown prefetches and bots do
not inflate server PageViews), and rendering stays free of I/O.

Every value is escaped for where it lands: JSON inside a script has ``<``, ``>``, ``&`` and the
line separators U+2028/U+2029 escaped, so no string can close the script, open an HTML comment
or break a JavaScript string; attributes are HTML-escaped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import html
import json
import re
import time
from collections.abc import Callable, Mapping
from importlib import resources
from json.encoder import encode_basestring_ascii
from typing import Any, Protocol
from urllib.parse import quote

from capi_bridge.consent import ConsentCheck as ConsentCheck  # re-exported for the adapters
from capi_bridge.consent import ConsentPolicy
from capi_bridge.cookies import PAGE_COOKIE, PAGE_COOKIE_MAX_AGE, set_cookie
from capi_bridge.events import new_event_id
from capi_bridge.identity import Identity, TrustedProxies, resolve_identity
from capi_bridge.request import RequestView, Response
from capi_bridge.settings import Settings
from capi_bridge.signing import PageSigner

#: Manual advanced-matching keys ``fbq('init')`` accepts (pixel-capi spec §1.3).
ADVANCED_MATCHING_KEYS = frozenset(
    {"em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id"}
)

#: Meta's base code loader (pixel-capi spec §1.1), verbatim but for the script URL.
_LOADER = (
    "!function(f,b,e,v,n,t,s){if(f.fbq)return;n=f.fbq=function(){n.callMethod?"
    "n.callMethod.apply(n,arguments):n.queue.push(arguments)};if(!f._fbq)f._fbq=n;n.push=n;"
    "n.loaded=!0;n.version='2.0';n.queue=[];t=b.createElement(e);t.async=!0;t.src=v;"
    "s=b.getElementsByTagName(e)[0];s.parentNode.insertBefore(t,s)}"
    "(window,document,'script',{url});"
)
# The pixel's own history tracking sends PageViews without an eventID, which can never be
# deduplicated; capiBridge.pageView() sends them with one instead, which the pixel must let
# through (it otherwise drops a second PageView per page).
_SPA = "fbq.disablePushState=true;fbq.allowDuplicatePageViews=true;"


@functools.cache
def _built(name: str) -> bytes:
    """A script as js/build.mjs minified it (read once)."""
    return (resources.files("capi_bridge") / "static" / f"{name}.min.js").read_bytes()


def script_bytes() -> bytes:
    """The shipped, minified capi-bridge.js (served by the endpoint's script route)."""
    return _built("capi-bridge")


@functools.cache
def script_version() -> str:
    """A short content hash of capi-bridge.js: the ``?v=`` that makes its URL cacheable forever."""
    return hashlib.sha256(script_bytes()).hexdigest()[:12]


def script_response(request: RequestView) -> Response:
    """capi-bridge.js for the script route: cached for a year under its ``?v=`` hash (a new
    release changes the URL), for five minutes when requested without it."""
    if request.method not in ("GET", "HEAD"):
        body = b'{"error":{"code":"method_not_allowed","message":"use GET","field":null}}'
        return Response(405, (("Allow", "GET, HEAD"), ("Content-Type", "application/json")), body)
    version = script_version()
    forever = request.query_param("v") == version
    headers = (
        ("Content-Type", "text/javascript; charset=utf-8"),
        (
            "Cache-Control",
            "public, max-age=31536000, immutable" if forever else "public, max-age=300",
        ),
        ("ETag", f'"{version}"'),
        ("X-Content-Type-Options", "nosniff"),
    )
    if f'"{version}"' in (request.headers.get("if-none-match") or ""):
        return Response(304, headers)
    body = script_bytes()
    length = ("Content-Length", str(len(body)))
    return Response(200, (*headers, length), b"" if request.method == "HEAD" else body)


@functools.cache
def _boot() -> str:
    return _built("boot").decode().strip()


_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def script_json(value: Any) -> str:
    """JSON that is inert inside an HTML ``<script>`` element and valid JavaScript."""
    text = _JSON.encode(value)  # one encoder: json.dumps with options builds one per call
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


class _SnippetSettings(Protocol):
    @property
    def pixel_ids(self) -> tuple[str, ...]: ...
    @property
    def endpoint_path(self) -> str: ...
    @property
    def script_path(self) -> str: ...
    @property
    def pixel_script_url(self) -> str: ...
    @property
    def token_max_age(self) -> float: ...
    @property
    def data_processing_options(self) -> tuple[str, ...]: ...
    @property
    def data_processing_options_country(self) -> int | None: ...
    @property
    def data_processing_options_state(self) -> int | None: ...
    @property
    def mirror_pixel_calls(self) -> bool: ...


def render_snippet(
    settings: _SnippetSettings,
    *,
    page_view_id: str,
    token: str,
    issued_at: float,
    nonce: str | None = None,
    advanced_matching: Mapping[str, str] | None = None,
    consent: bool = True,
) -> str:
    """The markup for one page (a pure function: no I/O, no clock, no randomness).

    ``consent=False`` renders Meta's documented consent pattern: ``fbq('consent','revoke')``
    before ``init`` (the pixel then holds every call until ``capiBridge.consent(true)``), the
    bridge posts its mirror marked to be held in the outbox until then, and the ``<noscript>``
    image, which cannot be consent-gated, is left out.
    """
    nonce_attr = f' nonce="{_attr(nonce)}"' if nonce else ""
    fields: tuple[tuple[str, str], ...] = ()
    if advanced_matching:
        unknown = set(advanced_matching) - ADVANCED_MATCHING_KEYS
        if unknown:
            raise ValueError(
                f"unknown advanced-matching keys {sorted(unknown)}; "
                f"use {sorted(ADVANCED_MATCHING_KEYS)}"
            )
        fields = tuple(
            sorted((k, str(v)) for k, v in advanced_matching.items() if v not in (None, ""))
        )
    frame = _frame(settings, consent, fields)
    # The config is {"endpoint","token","pv","iat","ttl","hold"[,"mirror"]}, as script_json
    # writes it; only token, pv and iat change from page to page.
    parts = [
        "<script data-capi-bridge",  # marks a page that holds the snippet (injection.MARKER)
        nonce_attr,
        ">",
        frame.head,
        _script_text(token),
        ',"pv":',
        _script_text(page_view_id),
        f',"iat":{int(issued_at)}',
        frame.middle,
        nonce_attr,
        "></script>",
    ]
    if frame.noscript:
        eid = page_view_id if _UNRESERVED.fullmatch(page_view_id) else quote(page_view_id, safe="")
        parts.append(eid.join(frame.noscript))
    return "".join(parts)


#: What ``quote(value, safe="")`` leaves as it is (a minted id, a UUID): no need to call it.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


@dataclasses.dataclass(frozen=True)
class _Frame:
    """The parts of a site's snippet around what changes per page (token, PageView id, time):
    built once per settings, consent state and advanced-matching data."""

    head: str  # the prelude and the config up to the token
    middle: str  # the config after the time, boot.js and the script tag up to its nonce
    noscript: tuple[str, ...]  # the <noscript> images, to be joined by the quoted PageView id


def _frame(
    settings: _SnippetSettings, consent: bool, matching: tuple[tuple[str, str], ...]
) -> _Frame:
    key = (id(settings), consent, matching)
    hit = _FRAMES.get(key)
    if hit is not None and hit[0] is settings:
        return hit[1]
    if len(_FRAMES) > 256:  # advanced-matching data varies per visitor: stay bounded
        _FRAMES.clear()
    tail = "" if settings.mirror_pixel_calls else ',"mirror":false'  # boot.js leaves fbq alone
    noscript: tuple[str, ...] = ()
    if consent:
        images = [
            '<img height="1" width="1" style="display:none" alt="" src="https://www.facebook.com'
            f"/tr?id={quote(pid, safe='')}&amp;ev=PageView&amp;eid="
            for pid in settings.pixel_ids
        ]
        after = '&amp;noscript=1">'
        noscript = (
            "<noscript>" + images[0],
            *(after + image for image in images[1:]),
            after + "</noscript>",
        )
    frame = _Frame(
        head=(
            _build_prelude(settings, consent, matching)
            + 'window.capiBridgeConfig={"endpoint":'
            + _script_text(settings.endpoint_path)
            + ',"token":'
        ),
        middle=(
            f',"ttl":{int(settings.token_max_age)},"hold":{"false" if consent else "true"}'
            f"{tail}}};{_boot()}"
            f'</script><script async src="{_script_src(settings)}"'
        ),
        noscript=noscript,
    )
    _FRAMES[key] = (settings, frame)
    return frame


def _script_text(value: str) -> str:
    """A string as :func:`script_json` writes it (a JSON string, inert in a script)."""
    text: str = encode_basestring_ascii(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


#: Site-wide parts of the snippet, keyed by the settings object's identity (hashing a frozen
#: Settings hashes every field, which costs more than the lookup saves).
_FRAMES: dict[tuple[int, bool, tuple[tuple[str, str], ...]], tuple[object, _Frame]] = {}


def _build_prelude(
    settings: _SnippetSettings, consent: bool, matching: tuple[tuple[str, str], ...]
) -> str:
    lines = [_LOADER.replace("{url}", script_json(settings.pixel_script_url)), _SPA]
    if not consent:
        lines.append("fbq('consent','revoke');")
    if settings.data_processing_options:
        args: list[Any] = [list(settings.data_processing_options)]
        if settings.data_processing_options_country is not None:
            args += [
                settings.data_processing_options_country,
                settings.data_processing_options_state,
            ]
        lines.append(f"fbq('dataProcessingOptions',{script_json(args)[1:-1]});")
    extra = f",{script_json(dict(matching))}" if matching else ""
    lines.extend(f"fbq('init',{script_json(pid)}{extra});" for pid in settings.pixel_ids)
    return "".join(lines)


def _script_src(settings: _SnippetSettings) -> str:
    return _attr(f"{settings.script_path}?v={script_version()}")


@dataclasses.dataclass(frozen=True)
class PageTags:
    """What an adapter adds to one HTML response."""

    html: str
    page_view_id: str
    token: str
    identity: Identity
    #: ``Set-Cookie`` header values (fbp/fbc minted or refreshed, the fresh-page marker).
    set_cookies: tuple[str, ...]


class PageRenderer:
    """Builds :class:`PageTags` for HTML responses; create once, call per page."""

    def __init__(
        self,
        settings: Settings,
        *,
        consent: ConsentPolicy | None = None,
        signer: PageSigner | None = None,
        proxies: TrustedProxies | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``consent`` defaults to the site's policy from ``settings`` (what
        :class:`~capi_bridge.pages.PageBridge` passes: the one its endpoint uses)."""
        self.settings = settings
        self.policy = consent or ConsentPolicy.from_settings(settings)
        self.signer = signer or PageSigner.from_settings(settings, clock=clock)
        self.proxies = proxies or TrustedProxies.from_settings(settings)
        self._clock = clock

    def render(
        self,
        request: RequestView,
        *,
        nonce: str | None = None,
        advanced_matching: Mapping[str, str] | None = None,
        consent: bool | None = None,
        page_view_id: str | None = None,
        identity: Identity | None = None,
    ) -> PageTags:
        """Tags and cookies for the page answering ``request``.

        ``consent=None`` asks the renderer's consent policy; pass the request's decision when
        it is already known. The fresh-page marker cookie lets boot.js tell this
        response from a cached copy of it (``PAGE_COOKIE`` holds the id the page carries).
        """
        now = self._clock()
        allowed = self.policy.allows(request) if consent is None else consent
        pv = page_view_id or new_event_id()
        if identity is None:  # given when the request already resolved it (server events)
            identity = resolve_identity(
                request,
                self.settings,
                proxies=self.proxies,
                now_ms=int(now * 1000),
                consent=allowed,
                write_cookies=True,
            )
        token = self.signer.issue(host=request.host, page_view_id=pv)
        markup = render_snippet(
            self.settings,
            page_view_id=pv,
            token=token,
            issued_at=now,
            nonce=nonce,
            advanced_matching=advanced_matching,
            consent=allowed,
        )
        cookies = identity.cookies
        if allowed:
            secure = self.proxies.scheme(request) == "https"
            cookies += (set_cookie(PAGE_COOKIE, pv, max_age=PAGE_COOKIE_MAX_AGE, secure=secure),)
        return PageTags(markup, pv, token, identity, cookies)
