"""A site for driving capi-bridge.js in real headless Chromium (js/tests' fixtures use it).

A tiny threaded ``wsgiref`` server runs a :class:`PageBridge` (a real :class:`Bridge` with its
SQLite outbox, delivering to a :class:`FakeGraph`): pages are rendered by it, its routes
(endpoint, script, inspector) answer through it. Playwright routes Meta's fbevents.js URL to the
local stub (``capi_bridge/static/fbevents-stub.js``), so nothing leaves the machine. The server
copy of an event is what the fake Graph received; ``window.__fbqSent`` is what the pixel would
send. Tests wait on conditions (the fake Graph, the log of answered posts,
``page.wait_for_function``), never on fixed sleeps; pages get a desktop user agent unless a test
asks for Chromium's own (``HeadlessChrome``, which both the pixel and capi-bridge ignore).
"""

from __future__ import annotations

import contextlib
import json
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from helpers.waiting import until

from capi_bridge.assembly import build_core
from capi_bridge.pages import PageBridge
from capi_bridge.request import RequestView
from capi_bridge.settings import Settings
from capi_bridge.snippet import PageRenderer
from capi_bridge.testing import FakeGraph

PIXEL_ID = "1234567890"
#: A pixel the pages initialise themselves (an agency's, say): not configured in capi-bridge.
FOREIGN_PIXEL = "9999999999"
#: The client address the test servers see: a visitor on the internet. Loopback addresses are
#: never sent to Meta, and an event whose only customer information is then the user agent is
#: one Meta refuses (before consent there is no cookie).
VISITOR_IP = "2001:4860:4860::8888"


@dataclass
class Log:
    """The endpoint requests the server answered: POST bodies with their status, GET queries."""

    posts: list[dict[str, Any]] = field(default_factory=list)
    answers: list[tuple[dict[str, Any], int, dict[str, Any]]] = field(default_factory=list)
    refreshes: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def wait_answered(
        self, predicate: Callable[[dict[str, Any], int, dict[str, Any]], bool], timeout: float = 10
    ) -> tuple[dict[str, Any], int, dict[str, Any]]:
        """The first answered POST matching ``predicate(body, status, reply)``, when there is."""
        with self.cond:
            if not self.cond.wait_for(lambda: any(predicate(*a) for a in self.answers), timeout):
                raise AssertionError(f"no such answer; answered {self.answers!r}")
            return next(a for a in self.answers if predicate(*a))

    def answer_for(self, event_id: str) -> tuple[dict[str, Any], int, dict[str, Any]]:
        """The answered POST that carried ``event_id``: body, status, reply."""
        return self.wait_answered(
            lambda body, *_: any(e.get("event_id") == event_id for e in body.get("events", []))
        )

    def posted_ids(self) -> list[str]:
        with self.cond:
            return [e["event_id"] for post in self.posts for e in post.get("events", [])]

    def reset(self) -> None:
        with self.cond:
            self.posts.clear()
            self.answers.clear()
            self.refreshes.clear()


@dataclass
class Site:
    url: str
    core: PageBridge
    graph: FakeGraph
    log: Log
    #: path -> (markup before the snippet in <head>, markup in <body>): pages tests add.
    pages: dict[str, tuple[str, str]] = field(default_factory=dict)
    cached_html: dict[str, bytes] = field(default_factory=dict)

    def server_copies(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """What the fake Graph received (the server copies), once ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.graph.events
            if predicate(events):
                return events
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"server copies not as expected: {events!r}")
            self.graph.wait_for_events(len(events) + 1, left)

    def server_copy(self, event_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The server copy of ``event_id``, once Meta's stand-in has it."""
        events = self.server_copies(lambda es: any(e["event_id"] == event_id for e in es), timeout)
        [event] = [e for e in events if e["event_id"] == event_id]
        return event

    def held(self, timeout: float = 10.0) -> int:
        """Rows held for consent, once every answered post is in the outbox: a busy outbox
        keeps a request's rows in memory for a moment (``Bridge.submit``), where the store's
        count does not see them yet."""
        bridge = self.core.bridge
        until(
            lambda: not bridge.stats().buffered,
            timeout=timeout,
            what="rows stayed in memory",
            step=lambda: bridge.flush(0.05),  # a bounded wait while the dispatcher stores them
        )
        return bridge.stats().held  # read again: a row stored during the first read counts

    def delivered_ids(self) -> set[str]:
        """Every event id the fake Graph has, once all the outbox holds is delivered."""
        assert self.core.bridge.flush(10)
        return {e["event_id"] for e in self.graph.events}


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _page(snippet: str, head: str = "", body: str = "") -> bytes:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>t</title>"
        f"{head}{snippet}</head><body><h1>shop</h1>{body}</body></html>"
    ).encode()


def _route(site: Site, environ: dict[str, Any], request: RequestView) -> Any:
    """Hands the request to the PageBridge, recording refreshes, posts and answers."""
    core, log = site.core, site.log
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(min(length, core.endpoint.max_body_bytes + 1))
    endpoint = request.path == core.settings.endpoint_path
    if endpoint and request.method == "GET":
        with log.cond:
            log.refreshes.append(request.query_string)
    posted: dict[str, Any] | None = None
    if endpoint and request.method == "POST":
        with contextlib.suppress(ValueError):
            posted = json.loads(body)
            with log.cond:
                log.posts.append(posted)
    reply = core.handle(request, body)
    if posted is not None:
        answer = json.loads(reply.body) if reply.body else {}
        with log.cond:
            log.answers.append((posted, reply.status, answer))
            log.cond.notify_all()
    return reply


def _make_app(site_ref: list[Site]) -> Any:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        site = site_ref[0]
        core = site.core
        inspector = core.inspector is not None and core.inspector.handles(environ["PATH_INFO"])
        if not inspector:  # the inspector answers loopback only; pages see a public visitor
            environ["REMOTE_ADDR"] = VISITOR_IP
        request = RequestView.from_wsgi(environ)
        if core.is_route(request.path):
            reply = _route(site, environ, request)
            start_response(reply.status_line, list(reply.headers))
            return [reply.body]
        headers = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")]
        if request.path in ("/cached", "/stale"):
            # A full-page cache: rendered once, then served to everyone without its cookies.
            if request.path not in site.cached_html:
                hours = 3 if request.path == "/stale" else 0
                renderer = PageRenderer(
                    core.settings, consent=core.policy, clock=lambda: time.time() - hours * 3600
                )
                site.cached_html[request.path] = _page(renderer.render(request).html)
            start_response("200 OK", headers)
            return [site.cached_html[request.path]]
        page = core.open_page(request)
        head, body = site.pages.get(request.path, ("", ""))
        html = _page(page.render(), head, body)
        start_response("200 OK", headers + page.response_headers())
        return [html]

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


@contextlib.contextmanager
def serve_site(tmp: Any, **overrides: Any) -> Iterator[Site]:
    with FakeGraph() as graph:
        values: dict[str, Any] = {
            "pixel_id": PIXEL_ID,
            "access_token": "test-token",
            "secret_key": "browser-tests-secret-key-0123456789",
            "custom_events": ("NewsletterOpen",),
            "rate_limit": 1000,
            "graph_url": graph.url,
            "outbox_path": str(tmp / "outbox.sqlite3"),
            "linger": 0.02,
            "inspector": True,
        }
        core = build_core(Settings(**{**values, **overrides}))
        holder: list[Site] = []
        try:
            with _serving(_make_app(holder)) as url:
                holder.append(Site(url, core, graph, Log()))
                yield holder[0]
        finally:
            core.close(timeout=1)
