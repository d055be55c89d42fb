"""One request's :class:`Page`: its identity, the visitor's data, its server events and, for a
page, the snippet and cookies; built per request by :class:`~capi_bridge.pages.PageBridge`.

Lazy by design: nothing is resolved, signed or rendered until a view or the response needs it,
so a request that never renders a page costs one small object. Split from
:mod:`capi_bridge.pages` (the app-wide core) to keep each module short; the adapters and the
tests import both names from there.
"""

from __future__ import annotations

import functools
import html
import secrets
from collections.abc import Callable, Mapping, MutableMapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from capi_bridge.browser_payload import HOLD_ID
from capi_bridge.cookies import TWIN_COOKIE, TWIN_COOKIE_HTTPS, cookie_domain
from capi_bridge.errors import InvalidEvent
from capi_bridge.events import STANDARD_EVENTS, new_event_id
from capi_bridge.identity import Identity, resolve_identity
from capi_bridge.injection import is_navigation
from capi_bridge.observations import Origin, dropped_fields, twin_copies
from capi_bridge.request import RequestView
from capi_bridge.snippet import ADVANCED_MATCHING_KEYS, script_json
from capi_bridge.twins import Twin
from capi_bridge.twins import pixel_data as _small
from capi_bridge.visitor_data import refused_by_visitor, visitor_value

if TYPE_CHECKING:
    from capi_bridge.pages import PageBridge

#: Where the ASGI middleware leaves the request's :class:`Page` (``scope["state"]``).
PAGE_STATE_KEY = "capi_bridge.page"
#: How a server event reached us, for the inspector (see observations.py).
_TRACKED = {flag: Origin("server", twin=flag) for flag in (True, False)}


class Page:
    """One request's identity, user data, server events and (for a page) snippet and cookies."""

    # The three attributes every page has live in slots; the instance dict is made only when
    # the page is used (an identity resolved, a snippet rendered): a JSON answer has none.
    __slots__ = ("__dict__", "_request", "core", "navigation")

    #: Whether the rendered snippet carries the visitor's raw advanced-matching data: the
    #: response must then be ``Cache-Control: private`` (the adapters see to it).
    private = False
    #: The CSP nonce to put on our ``<script>`` tags; set it before the page renders.
    nonce: str | None = None
    #: Whether the snippet was rendered into the page (the template tag, or the middleware).
    placed = False
    # Class-level defaults, set on the instance only when they change, and containers replaced
    # (never mutated) while they are these shared empty ones: a request that asks nothing of
    # the bridge (a JSON answer to a navigation) costs an object with three attributes.
    _serves: bool | None = None
    _twins: list[Twin] | None = None
    _identity: Identity | None = None
    _consent: bool | None = None
    _html: str | None = None
    _page_cookies: tuple[str, ...] = ()
    _hold: str | None = None
    _user_data: Mapping[str, Any] = MappingProxyType({})
    _tracked: tuple[Twin, ...] = ()
    _dropped: Mapping[str, str] = MappingProxyType({})  # user_data keys dropped, and why

    def __init__(
        self,
        core: PageBridge,
        request: RequestView | Callable[[], RequestView],
        *,
        navigation: bool,
    ) -> None:
        self.core = core
        self._request = request
        self.navigation = navigation

    @property
    def request(self) -> RequestView:
        request = self._request
        if not isinstance(request, RequestView):
            request = self._request = request()
        return request

    # --- what the app calls -------------------------------------------------------------------

    @property
    def consent(self) -> bool:
        if self._consent is None:
            self._consent = self.core.consent(self.request)
        return self._consent

    @property
    def serves(self) -> bool:
        """Whether this request's Host is the site's (``allowed_hosts``): otherwise the page
        gets no snippet, token or cookie. Free when the setting is unset; else one cached
        look-up (not ``cached_property``, whose lock costs more than the answer)."""
        if self._serves is None:
            allowed = self.core.settings.allowed_hosts
            self._serves = not allowed or self.core.serves(self.request)
        return self._serves

    @property
    def identity(self) -> Identity:
        """Resolved once per request, so a server event and the page share one minted fbp."""
        if self._identity is None:
            self._identity = resolve_identity(
                self.request,
                self.core.settings,
                proxies=self.core.proxies,
                consent=self.consent,
                write_cookies=self.navigation,
            )
        return self._identity

    def identify(self, **user_data: Any) -> None:
        """Attach the signed-in visitor's data (``em``, ``ph``, ``external_id``...) to every
        event of this request. Values are normalized now and hashed when the event is stored;
        raw values never leave the process.

        Tracking never breaks the app: a value that is not what its key needs (an address an
        ``<input type=email>`` accepts, ``jane@intranet``) is visitor data, not a bug, so it is
        dropped with a warning naming the key (never the value), the events go out with the
        rest, and the inspector and diagnostics count the drop. ``strict`` settings make it
        raise instead (for the app's tests). An unknown key or a value of the wrong type is a
        programming error and always raises."""
        data = dict(self._user_data)
        try:
            for field, value in user_data.items():
                if value is None:
                    continue
                if isinstance(value, (list, tuple)):
                    kind = type(value).__name__
                    raise TypeError(f"identify(): give {field} one value, not a {kind}")
                text = self._user_value(field, value, data.get("country"))
                if text is not None:
                    data[field] = text
                else:
                    data.pop(field, None)
        finally:  # the fields before a programming error stay identified, as they always did
            self._user_data = data

    def _user_value(self, field: str, value: Any, country: str | None) -> Any:
        """``value`` normalized for ``field``; None when it carries nothing or was dropped
        (noted in ``_dropped`` for the inspector and diagnostics)."""
        strict = self.core.settings.strict
        dropped = self._dropped
        if not isinstance(dropped, dict):  # the shared empty default: this page's own now
            dropped = self._dropped = {}
        return visitor_value(field, value, country=country, strict=strict, dropped=dropped)

    def track(
        self,
        event_name: str,
        *,
        custom_data: Mapping[str, Any] | None = None,
        user_data: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        event_source_url: str | None = None,
        pixel: bool = True,
    ) -> str:
        """Send a server-originated event through CAPI now; returns its event id.

        With ``pixel=True`` (default) the next page this browser renders fires the pixel for
        the same event with the same id, so the pair deduplicates. Raises ``InvalidEvent``
        when Meta would refuse the event (nothing is stored), but for a refusal the request
        alone causes (no User-Agent, nothing to match on: see ``visitor_data``).
        """
        eid = event_id or new_event_id()
        identity = self.identity
        dropped_before = dict(self._dropped)
        extra: dict[str, Any] = {}
        if user_data:
            country = user_data.get("country") or self._user_data.get("country")
            hint = country if isinstance(country, str) else None
            for field, value in user_data.items():
                if value is not None:
                    extra[field] = self._user_value(field, value, hint)
        event: dict[str, Any] = {
            "event_name": event_name,
            "event_id": eid,
            "event_time": int(self.core._clock()),
            "action_source": "website",
            "event_source_url": event_source_url or identity.event_source_url,
            "user_data": {**identity.user_data(), **self._user_data, **extra},
        }
        # identify()'s drops concern every event of the request, a track() argument's this one
        dropped, self._dropped = self._dropped, dropped_before
        if custom_data:
            event["custom_data"] = dict(custom_data)
        # Without consent the event waits in the outbox (never sent unless released).
        hold = None if self.consent else self._hold_key()
        twin = pixel and self.consent and self.navigation
        try:  # never fails nor holds the page for the outbox
            self.core.bridge.submit(
                event, test_event_code=self.test_code, hold=hold, origin=_TRACKED[twin]
            )
        except InvalidEvent as exc:  # nothing to match a scripted request on: not the app's bug
            strict, warned = self.core.settings.strict, self.core.refusals
            if not refused_by_visitor(event_name, exc.problems, strict=strict, warned=warned):
                raise
            return eid
        if twin:
            self._tracked = (*self._tracked, {"n": event_name, "i": eid, "d": _small(custom_data)})
        if dropped:
            pixels = self.core.settings.pixel_ids
            notes = dropped_fields(pixels, event_name, eid, dropped, self.core._clock())
            self.core.bridge.observe_later(notes)
        return eid

    @functools.cached_property
    def test_code(self) -> str | None:
        """Read (and its signature checked) once per request, not once per event."""
        return self.core.test_code(self.request)

    def _hold_key(self) -> str:
        if self._hold is None:
            header = self.request.headers.get("x-capi-bridge-hold", "")
            self._hold = header if HOLD_ID.fullmatch(header) else secrets.token_urlsafe(18)
        return self._hold

    # --- what the adapters call ---------------------------------------------------------------

    def render(self, nonce: str | None = None) -> str:
        """The snippet (plus the pixel twins of earlier server events) for this page; empty
        for a Host the site does not serve."""
        if self._html is None and not self.serves:
            self._html = ""
        if self._html is None:
            matching = None
            if self.core.settings.advanced_matching and self.consent:
                matching = {k: v for k, v in self._user_data.items() if k in ADVANCED_MATCHING_KEYS}
            self.private = bool(matching)
            tags = self.core.renderer.render(
                self.request,
                nonce=nonce or self.nonce,
                advanced_matching=matching or None,
                consent=self.consent,
                identity=self.identity,
            )
            self._page_cookies = tags.set_cookies
            self._html = tags.html + self._pixel_twins(nonce or self.nonce)
        self.placed = True
        return self._html

    def snippet_bytes(self) -> bytes:
        return self.render().encode("utf-8")

    @property
    def quiet(self) -> bool:
        """Whether a response that is not a page to rewrite needs nothing from this one: no
        snippet rendered, no identity resolved (its cookies), no server event (its twin), no
        scoped test link to honour. Then the adapters pass the response through untouched,
        without looking at it further: a JSON answer to a navigation costs a few attribute
        reads."""
        return (
            self._html is None
            and self._identity is None
            and not self._tracked
            and not self.core.settings.scoped_test_events
        )

    def response_headers(self) -> list[tuple[str, str]]:
        """``Set-Cookie`` headers this response needs; call once, as the response starts.

        Cheap when the request did nothing with the bridge (an image, a JSON call): no
        cookie is parsed and nothing is signed. A Host the site does not serve gets none."""
        cookies: list[str] = []
        if self._html is not None:
            cookies.extend(self._page_cookies)
        elif self._identity is not None:
            cookies.extend(self._identity.cookies)  # e.g. a redirect after a server event
        if self._tracked or (self._html is not None and self.consent):
            cookies.extend(self._pending_cookie())
        if self.core.settings.scoped_test_events:
            cookies.extend(self._test_cookie())
        if not cookies or not self.serves:  # Host asked only when there is something to set
            return []
        return [("Set-Cookie", cookie) for cookie in cookies]

    # --- cookies ------------------------------------------------------------------------------

    @property
    def _secure(self) -> bool:
        return self.core.proxies.scheme(self.request) == "https"

    def _arriving(self) -> list[Twin]:
        """The twins this browser's cookie carries (see :mod:`capi_bridge.twins`), read once.
        Most pages carry no twin cookie: two dict look-ups, nothing else."""
        if self._twins is None:
            cookies = self.request.cookies
            if TWIN_COOKIE not in cookies and TWIN_COOKIE_HTTPS not in cookies:
                self._twins = []
            else:
                fbp, secure = self.identity.fbp, self._secure
                self._twins = self.core.twins.arriving(cookies, fbp=fbp, secure=secure)
        return self._twins

    def _pixel_twins(self, nonce: str | None) -> str:
        if not self.consent:
            return ""
        arriving = self._arriving()
        fired = self.core.twins.fire(arriving) if arriving else []
        if not fired:
            return ""
        calls = []
        for event in fired:
            method = "track" if event["n"] in STANDARD_EVENTS else "trackCustom"
            args = [method, event["n"], event["d"], {"eventID": event["i"]}]
            calls.append(f"capiBridge.fb({script_json(args)});")  # mirrored already: unhooked
        self._observe_twins(fired)
        attr = f' nonce="{html.escape(nonce, quote=True)}"' if nonce else ""
        return f"<script{attr} data-capi-bridge-events>{''.join(calls)}</script>"

    def _observe_twins(self, fired: list[Twin]) -> None:
        """Note the twins this page fires, with the keys the pixel attaches (this browser's
        cookies, IP and user agent); written off the request path by the dispatcher."""
        identity = self.identity.user_data()
        pairs = [(e["n"], e["i"]) for e in fired]
        pixels = self.core.settings.pixel_ids
        self.core.bridge.observe_later(twin_copies(pixels, pairs, identity, self.core._clock()))

    def _pending_cookie(self) -> list[str]:
        """Carry this request's events to the next page, or delete the twin cookies this page
        received (fired, refused or foreign alike)."""
        if self._tracked:
            waiting = [*([] if self._html is not None else self._arriving()), *self._tracked]
            return [self.core.twins.carry(waiting, fbp=self.identity.fbp, secure=self._secure)]
        cookies = self.request.cookies
        if TWIN_COOKIE not in cookies and TWIN_COOKIE_HTTPS not in cookies:
            return []
        domain, _ = cookie_domain(self.request.host, self.core.settings.cookie_domain)
        return self.core.twins.clear(cookies, secure=self._secure, domain=domain)

    def _test_cookie(self) -> list[str]:
        if not self.core.settings.scoped_test_events:
            return []
        return self.core._tests.cookies(self.request, secure=self._secure)


def page_in(
    state: MutableMapping[str, Any],
    core: PageBridge,
    request: Callable[[], RequestView],
    sec_fetch_dest: str | None,
) -> Page:
    """The request's :class:`Page`, kept in ``state`` (ASGI ``scope["state"]``), made on first
    use: by the app (``track``, ``identify``, the template tag) or by the middleware when the
    response turns out to be a page. Requests that never touch the bridge never build one."""
    page = state.get(PAGE_STATE_KEY)
    if not isinstance(page, Page):
        page = core.open_page(request, navigation=is_navigation(sec_fetch_dest))
        state[PAGE_STATE_KEY] = page
    return page
