"""Fixtures for driving capi-bridge.js in real headless Chromium.

A tiny threaded ``wsgiref`` server serves pages built by :class:`PageRenderer` and routes the
endpoint and script paths to :class:`BrowserEndpoint`; Playwright routes Meta's fbevents.js URL
to the local stub (``capi_bridge/static/fbevents-stub.js``), so nothing leaves the machine. The
sink is an in-memory list standing in for ``Bridge.enqueue``. Tests wait on conditions (the
sink, ``page.wait_for_function``), never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import socketserver
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from capi_bridge.endpoint import BrowserEndpoint
from capi_bridge.request import RequestView
from capi_bridge.settings import Settings
from capi_bridge.snippet import PageRenderer

CHROMIUM = os.environ.get("CAPI_BRIDGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PIXEL_ID = "1234567890"
STUB = (resources.files("capi_bridge") / "static" / "fbevents-stub.js").read_bytes()


@dataclass
class Sink:
    """Collects what the endpoint hands to ``Bridge.enqueue``; tests wait on it."""

    events: list[Mapping[str, Any]] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)
    refreshes: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def __call__(self, event: Mapping[str, Any]) -> str:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()
        return str(event["event_id"])

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

    def named(self, name: str) -> list[Mapping[str, Any]]:
        with self.cond:
            return [e for e in self.events if e["event_name"] == name]

    def reset(self) -> None:
        with self.cond:
            self.events.clear()
            self.posts.clear()
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


def _make_app(settings: Settings, sink: Sink, cached: dict[str, bytes]) -> Any:
    endpoint = BrowserEndpoint(settings, sink)
    renderer = PageRenderer(settings)
    consent_renderer = PageRenderer(settings, consent_required=True)
    # A page rendered three hours ago: its token has expired and its id is shared.
    stale_renderer = PageRenderer(settings, clock=lambda: time.time() - 3 * 3600)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        request = RequestView.from_wsgi(environ)
        if endpoint.handles(request.path):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(min(length, endpoint.max_body_bytes + 1))
            if request.method == "GET" and request.path == settings.endpoint_path:
                sink.refreshes.append(request.query_string)
            if request.method == "POST":
                try:
                    with sink.cond:
                        sink.posts.append(json.loads(body))
                except ValueError:
                    pass
            reply = endpoint.handle(request, body)
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
        maker = consent_renderer if request.path == "/hold" else renderer
        tags = maker.render(request)
        body = ""
        if request.path == "/early":  # app code calling capiBridge before capi-bridge.js loads
            body = (
                "<script>window.earlyId = "
                "capiBridge.track('ViewContent', {content_ids: ['sku-1']});</script>"
            )
        start_response("200 OK", headers + [("Set-Cookie", c) for c in tags.set_cookies])
        return [_page(tags.html, body)]

    return app


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    settings = Settings(
        pixel_id=PIXEL_ID,
        access_token="test-token",
        secret_key="browser-tests-secret-key-0123456789",
        custom_events=("NewsletterOpen",),
        rate_limit=1000,
    )
    sink = Sink()
    cached: dict[str, bytes] = {}
    server = make_server(
        "127.0.0.1",
        0,
        _make_app(settings, sink, cached),
        server_class=_Server,
        handler_class=_QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(f"http://127.0.0.1:{server.server_port}", sink, cached)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium not found at {CHROMIUM} (CI installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def new_page(browser: Any, site: Site) -> Iterator[Callable[..., Any]]:
    """``new_page(block_pixel=False)``: a page in a fresh context (a new visitor, no cookies)."""
    site.sink.reset()
    contexts: list[Any] = []

    def make(*, block_pixel: bool = False) -> Any:
        context = browser.new_context()
        contexts.append(context)
        if block_pixel:
            context.route("**/fbevents.js", lambda route: route.abort("blockedbyclient"))
        else:
            context.route(
                "**/fbevents.js",
                lambda route: route.fulfill(status=200, content_type="text/javascript", body=STUB),
            )
        return context.new_page()

    yield make
    for context in contexts:
        context.close()
