"""Fixtures for driving capi-bridge.js in real headless Chromium.

A tiny threaded ``wsgiref`` server serves pages built by :class:`PageRenderer` and routes the
endpoint and script paths to :class:`BrowserEndpoint`; Playwright routes Meta's fbevents.js URL
to the local stub (``capi_bridge/static/fbevents-stub.js``), so nothing leaves the machine. In
``site`` the sink is an in-memory list standing in for ``Bridge.enqueue``; ``consent_site`` asks
for consent and delivers through a real :class:`Bridge` (SQLite outbox) to a :class:`FakeGraph`,
its sink recording each event on the way. Tests wait on conditions (the sink,
``page.wait_for_function``, the fake Graph), never on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import json
import socketserver
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from helpers import chromium

from capi_bridge.bridge import Bridge
from capi_bridge.endpoint import BrowserEndpoint
from capi_bridge.request import RequestView
from capi_bridge.settings import Settings
from capi_bridge.snippet import PageRenderer
from capi_bridge.testing import FakeGraph

PIXEL_ID = "1234567890"
#: The client address the test servers see: a visitor on the internet. Loopback addresses are
#: never sent to Meta, and an event whose only customer information is then the user agent is
#: one Meta refuses: before consent there is no _fbp, and on a cached page the pixel may not
#: have written one yet when the mirror is posted.
VISITOR_IP = "2001:4860:4860::8888"


@dataclass
class Sink:
    """Collects what the endpoint hands to ``Bridge.enqueue`` (and passes it on to
    ``forward`` when given); tests wait on it."""

    events: list[Mapping[str, Any]] = field(default_factory=list)
    holds: list[str | None] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)
    #: (request body, response status) of each POST, once answered.
    answers: list[tuple[dict[str, Any], int]] = field(default_factory=list)
    refreshes: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    forward: Callable[..., str] | None = None

    def __call__(self, event: Mapping[str, Any], *, hold: str | None = None) -> str:
        event_id = str(event["event_id"])
        if self.forward is not None:
            event_id = self.forward(event, hold=hold)
        with self.cond:
            self.events.append(event)
            self.holds.append(hold)
            self.cond.notify_all()
        return event_id

    def wait_for(
        self, predicate: Callable[[list[Mapping[str, Any]]], bool], timeout: float = 10.0
    ) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"sink condition not met; sink holds {self.events!r}")
                self.cond.wait(left)

    def wait_answered(self, predicate: Callable[[dict[str, Any], int], bool]) -> None:
        """Until a POST matching ``predicate(body, status)`` has been answered."""
        with self.cond:
            if not self.cond.wait_for(lambda: any(predicate(*a) for a in self.answers), 10):
                raise AssertionError(f"no such answer; answered {self.answers!r}")

    def named(self, name: str) -> list[Mapping[str, Any]]:
        with self.cond:
            return [e for e in self.events if e["event_name"] == name]

    def reset(self) -> None:
        with self.cond:
            self.events.clear()
            self.holds.clear()
            self.posts.clear()
            self.answers.clear()
            self.refreshes.clear()


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _page(tags_html: str, body: str = "") -> bytes:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>t</title>"
        f"{tags_html}</head><body><h1>shop</h1>{body}</body></html>"
    ).encode()


@dataclass
class Site:
    url: str
    sink: Sink
    cached_html: dict[str, bytes]
    pixel_id: str = PIXEL_ID
    bridge: Bridge | None = None
    graph: FakeGraph | None = None


def _endpoint_route(
    endpoint: BrowserEndpoint, sink: Sink, environ: dict[str, Any], request: RequestView
) -> Any:
    """Hands the request to ``endpoint``, recording refreshes, posts and answers in ``sink``."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(min(length, endpoint.max_body_bytes + 1))
    if request.method == "GET" and request.path == endpoint.settings.endpoint_path:
        sink.refreshes.append(request.query_string)
    posted: dict[str, Any] | None = None
    if request.method == "POST":
        try:
            posted = json.loads(body)
        except ValueError:
            pass
        else:
            with sink.cond:
                sink.posts.append(posted)
    reply = endpoint.handle(request, body)
    if posted is not None:
        with sink.cond:
            sink.answers.append((posted, reply.status))
            sink.cond.notify_all()
    return reply


def _make_app(settings: Settings, sink: Sink, cached: dict[str, bytes]) -> Any:
    endpoint = BrowserEndpoint(settings, sink)
    renderer = PageRenderer(settings)
    # A page rendered three hours ago: its token has expired and its id is shared.
    stale_renderer = PageRenderer(settings, clock=lambda: time.time() - 3 * 3600)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        environ["REMOTE_ADDR"] = VISITOR_IP  # see VISITOR_IP
        request = RequestView.from_wsgi(environ)
        if endpoint.handles(request.path):
            reply = _endpoint_route(endpoint, sink, environ, request)
            start_response(reply.status_line, list(reply.headers))
            return [reply.body]
        headers = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")]
        if request.path in ("/cached", "/stale"):
            # A full-page cache: rendered once, then served to everyone without its cookies.
            if request.path not in cached:
                maker = stale_renderer if request.path == "/stale" else renderer
                cached[request.path] = _page(maker.render(request).html)
            start_response("200 OK", headers)
            return [cached[request.path]]
        tags = renderer.render(request)
        body = ""
        if request.path == "/early":  # app code calling capiBridge before capi-bridge.js loads
            body = (
                "<script>window.earlyId = "
                "capiBridge.track('ViewContent', {content_ids: ['sku-1']});</script>"
            )
        start_response("200 OK", headers + [("Set-Cookie", c) for c in tags.set_cookies])
        return [_page(tags.html, body)]

    return app


def _make_consent_app(settings: Settings, sink: Sink, bridge: Bridge) -> Any:
    """Every page asks for consent (``settings.consent``); events go through ``bridge``."""
    endpoint = BrowserEndpoint(settings, sink, release=bridge.release, forget=bridge.forget)
    renderer = PageRenderer(settings)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        environ["REMOTE_ADDR"] = VISITOR_IP  # see VISITOR_IP
        request = RequestView.from_wsgi(environ)
        if endpoint.handles(request.path):
            reply = _endpoint_route(endpoint, sink, environ, request)
            start_response(reply.status_line, list(reply.headers))
            return [reply.body]
        tags = renderer.render(request)
        headers = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")]
        start_response("200 OK", headers + [("Set-Cookie", c) for c in tags.set_cookies])
        return [_page(tags.html)]

    return app


@contextlib.contextmanager
def _serving(app: Any) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, server_class=_Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "pixel_id": PIXEL_ID,
        "access_token": "test-token",
        "secret_key": "browser-tests-secret-key-0123456789",
        "custom_events": ("NewsletterOpen",),
        "rate_limit": 1000,
    }
    return Settings(**{**values, **overrides})


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    sink = Sink()
    cached: dict[str, bytes] = {}
    with _serving(_make_app(_settings(), sink, cached)) as url:
        yield Site(url, sink, cached)


@pytest.fixture(scope="module")
def consent_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A site with a consent banner, delivering through a real outbox to a fake Graph."""
    outbox = tmp_path_factory.mktemp("consent") / "outbox.sqlite3"
    with FakeGraph() as graph:
        settings = _settings(
            consent="required", graph_url=graph.url, outbox_path=str(outbox), linger=0.02
        )
        bridge = Bridge(settings)
        sink = Sink(forward=bridge.enqueue)
        try:
            with _serving(_make_consent_app(settings, sink, bridge)) as url:
                yield Site(url, sink, {}, bridge=bridge, graph=graph)
        finally:
            bridge.close(timeout=1)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from chromium.launch()


@pytest.fixture
def new_page(browser: Any, site: Site) -> Iterator[Callable[..., Any]]:
    """``new_page(block_pixel=False)``: a page in a fresh context (a new visitor, no cookies)."""
    site.sink.reset()
    yield from _pages(browser)


@pytest.fixture
def consent_page(browser: Any, consent_site: Site) -> Iterator[Callable[..., Any]]:
    """``new_page`` for ``consent_site``: its sink and fake Graph start empty."""
    consent_site.sink.reset()
    assert consent_site.graph is not None
    consent_site.graph.clear()
    yield from _pages(browser)


def _pages(browser: Any) -> Iterator[Callable[..., Any]]:
    yield from chromium.contexts(browser)
