"""One request's view of the bridge, shared by every adapter (WSGI, ASGI, Flask, Starlette).

:class:`PageBridge` is built once per app: it owns the :class:`~capi_bridge.bridge.Bridge`, the
mirror endpoint and the page renderer. :class:`Page` is built per request that may be a
navigation, lazily: nothing is resolved, signed or rendered until a view or the response needs
it, which keeps requests that never render a page cheap. The adapters only move bytes; every
decision about identity, cookies and server-originated events is made here, once.

Server-originated events (``track()`` while handling a request, e.g. a confirmed payment) are
enqueued at once with the request's identity, and their pixel twin is carried to the next page
this browser renders (:mod:`capi_bridge.twins`: a signed cookie bound to the browser, fired
once). That page fires ``fbq('track', name, data, {eventID})`` with the same id (through
``capiBridge.fb``, so the fbq hook does not mirror it a second time), so Meta deduplicates the
pair instead of counting the Purchase twice. No cookie of ours is set while consent is required
and missing: one :class:`~capi_bridge.consent.ConsentPolicy` decides for the pages, the
endpoint and server events alike.

With ``allowed_hosts`` set, a page requested under another ``Host`` gets no snippet, token or
cookie (:mod:`capi_bridge.hosts`); without it, start-up warns. A page that carries the
visitor's raw advanced-matching data is marked ``Cache-Control: private`` (see
:attr:`Page.private`), so no shared cache serves it to someone else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from capi_bridge.admission import OutboxLevels
from capi_bridge.bounded import Recent
from capi_bridge.bridge import Bridge
from capi_bridge.consent import ConsentPolicy
from capi_bridge.cookies import TEST_COOKIE as TEST_COOKIE  # re-exported: the tests look here
from capi_bridge.cookies import TWIN_COOKIE
from capi_bridge.drops import DropTally
from capi_bridge.drops import is_bot as is_bot  # re-exported: where the adapters' tests look
from capi_bridge.endpoint import BrowserEndpoint
from capi_bridge.hosts import host_allowed
from capi_bridge.identity import TrustedProxies
from capi_bridge.mirror import settle
from capi_bridge.page import PAGE_STATE_KEY as PAGE_STATE_KEY  # re-exported (adapters)
from capi_bridge.page import Page as Page
from capi_bridge.page import page_in as page_in
from capi_bridge.request import RequestView, Response
from capi_bridge.scoped_tests import TEST_COOKIE_MAX_AGE as TEST_COOKIE_MAX_AGE
from capi_bridge.scoped_tests import TEST_LINK_MAX_AGE as TEST_LINK_MAX_AGE
from capi_bridge.scoped_tests import TEST_PARAM as TEST_PARAM
from capi_bridge.scoped_tests import ScopedTestCodes
from capi_bridge.scoped_tests import make_test_link as make_test_link
from capi_bridge.settings import Settings
from capi_bridge.signing import PageSigner
from capi_bridge.snippet import ConsentCheck, PageRenderer
from capi_bridge.twins import TWIN_DATA_BYTES, TWIN_LIMIT, TWIN_MAX_AGE, Twins

logger = logging.getLogger("capi_bridge.pages")

#: Where the WSGI middleware leaves the request's :class:`Page` (``environ``), and the ASGI one
#: leaves it and the :class:`PageBridge` (``scope["state"]``).
PAGE_ENVIRON_KEY = "capi_bridge.page"
CORE_STATE_KEY = "capi_bridge"

#: The twin cookie on http (``__Host-capib_ev`` on https) and its limits: the names of
#: :mod:`capi_bridge.twins`, kept here where the adapters' tests look.
PENDING_COOKIE = TWIN_COOKIE
PENDING_MAX_AGE = TWIN_MAX_AGE
PENDING_LIMIT = TWIN_LIMIT
PENDING_DATA_BYTES = TWIN_DATA_BYTES



class RouteTool(Protocol):
    """A tool served on capi-bridge's own paths (the inspector)."""

    page_path: str
    data_path: str
    diagnostics_path: str
    paths: frozenset[str]

    def handles(self, path: str) -> bool: ...

    def handle(self, request: RequestView) -> Response: ...


#: Builds the inspector for an app: ``(settings, bridge, drop counts, clock) -> tool``.
InspectorFactory = Callable[[Settings, Bridge, DropTally, Callable[[], float]], RouteTool]


class PageBridge:
    """The app-wide core the adapters wrap; create one per app (thread-safe)."""

    def __init__(
        self,
        settings: Settings,
        *,
        bridge: Bridge | None = None,
        consent_check: ConsentCheck | None = None,
        clock: Callable[[], float] = time.time,
        inspector: InspectorFactory | None = None,
        debug: bool = False,
    ) -> None:
        """``debug``: the app runs in its framework's debug mode (Flask's ``app.debug``,
        Django's ``DEBUG``), where a missing ``allowed_hosts`` is not worth a warning."""
        self.settings = settings
        self.bridge = bridge if bridge is not None else Bridge(settings)
        #: Whether a visitor consented: the one rule of pages, endpoint and server events.
        self.policy = ConsentPolicy.from_settings(settings, consent_check)
        self.proxies = TrustedProxies.from_settings(settings)
        self.signer = PageSigner.from_settings(settings, clock=clock)
        self.renderer = PageRenderer(
            settings, consent=self.policy, signer=self.signer, proxies=self.proxies, clock=clock
        )
        # the outbox's held and pending counts, for the endpoint's total caps (read off the
        # request path; a store of an older interface without them only disables the caps)
        levels = OutboxLevels(
            lambda bound: self.bridge.outbox.waiting(bound),
            bound=max(settings.max_held_rows, settings.max_pending_rows) + 1000,
        )
        self.endpoint = BrowserEndpoint(
            settings,
            consent=self.policy,
            signer=self.signer,
            proxies=self.proxies,
            levels=levels,
            clock=clock,
        )
        #: Browser events not stored (ignored or refused), counted for inspector and diagnostics.
        self.drops = DropTally(lambda: self.bridge.outbox, clock=clock)
        #: The live inspector, when ``settings.inspector`` is on (absent routes otherwise). A
        #: tool, built by ``inspector`` (the adapters pass :class:`capi_bridge.inspector.Inspector`
        #: through :func:`capi_bridge.assembly.build_core`): pages never import the tools.
        self.inspector = (
            inspector(settings, self.bridge, self.drops, clock)
            if settings.inspector and inspector is not None
            else None
        )
        #: The paths capi-bridge serves itself (endpoint, script, inspector): see is_route.
        self.route_paths = frozenset(
            (settings.endpoint_path, settings.script_path)
            + (tuple(self.inspector.paths) if self.inspector is not None else ())
        )
        assert settings.secret_key  # PageSigner refused to start without one
        #: Server events' pixel twins: the cookie bound to the browser, fired once.
        self.twins = Twins(settings.secret_key, clock=clock)
        self._tests = ScopedTestCodes(settings.secret_key)
        #: When a server event a scripted request made unmatchable was last reported, per name.
        self.refusals: Recent[float] = Recent(1000)
        self._clock = clock
        if not settings.allowed_hosts and not debug:
            logger.warning(
                "%s is not set: pages and the mirror endpoint answer any Host header, so a "
                "script can fetch a page as Host: another.example and post conversions for that "
                "host into your pixel. List your site's hosts (shop.example.com, .example.com "
                "for every subdomain).",
                settings.name_of("allowed_hosts"),
            )
        if settings.test_event_code:
            logger.warning(
                "CAPI_BRIDGE_TEST_EVENT_CODE is set: every event goes to Events Manager's Test "
                "events tab, none counts in production. Unset it before going live "
                "(CAPI_BRIDGE_SCOPED_TEST_EVENTS=true and 'capi-bridge test-link' test one "
                "browser instead)."
            )

    # --- routes -------------------------------------------------------------------------------

    def is_route(self, path: str) -> bool:
        """Whether ``path`` is served by capi-bridge itself (endpoint, script, inspector)."""
        return path in self.route_paths

    def handle(self, request: RequestView, body: bytes = b"") -> Response:
        """Answer a request to one of our routes; never raises (see ``BrowserEndpoint``): the
        endpoint decides from the request, its body, the visitor's consent and test event
        code, and :func:`~capi_bridge.mirror.settle` stores what it accepted."""
        if self.inspector is not None and self.inspector.handles(request.path):
            return self.inspector.handle(request)
        if request.path != self.settings.endpoint_path:
            return settle(self.endpoint.handle(request, body), self.bridge)  # the script
        result = self.endpoint.handle(
            request,
            body,
            consent=self.consent(request),
            test_code=self.test_code(request) if request.method == "POST" else None,
        )
        return settle(result, self.bridge, self.drops)

    # --- per request --------------------------------------------------------------------------

    def open_page(
        self, request: RequestView | Callable[[], RequestView], *, navigation: bool = True
    ) -> Page:
        """The request's :class:`Page`. ``request`` may be a factory, called only if the page
        needs it: a JSON response to a navigation then costs one small object, nothing more.
        ``navigation=False`` (fetch/XHR) never sets cookies."""
        return Page(self, request, navigation=navigation)

    def consent(self, request: RequestView) -> bool:
        """Whether this visitor's events may be sent and cookies set."""
        return self.policy.allows(request)

    def test_code(self, request: RequestView) -> str | None:
        """The scoped test event code this browser carries (signed cookie or link), if any."""
        if not self.settings.scoped_test_events:
            return None
        return self._tests.code(request)

    def serves(self, request: RequestView) -> bool:
        """Whether ``request``'s Host is one of ``allowed_hosts`` (any, when unset)."""
        return host_allowed(request.host, self.settings.allowed_hosts)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Nothing to do: building the Bridge already opened the outbox (a bad ``outbox_path``
        fails then), and the dispatcher starts with the first event of each process
        (fork-safe). Kept so the lifespan has a start to pair with :meth:`close`."""

    def close(self, timeout: float | None = None) -> bool:
        """Flush what can be sent within ``timeout`` and stop the dispatcher."""
        self.drops.flush()
        return self.bridge.close(timeout)
