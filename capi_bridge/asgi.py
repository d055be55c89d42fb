"""Pure ASGI middleware (no ``BaseHTTPMiddleware``), in the style of Starlette's GZipMiddleware.

A per-request responder wraps ``send``: it holds ``http.response.start`` until it knows whether
the body is an HTML page (:func:`~capi_bridge.injection.should_inject`), buffers body chunks only up
to the insertion point or the search limit, corrects ``Content-Length``, adds the page's cookies,
and then passes every later message through untouched. Requests that cannot be a navigation
(``Sec-Fetch-Dest``: fetch, XHR, images) never meet the responder. ``lifespan`` is observed to
open the outbox at start-up and flush it at shutdown. The app reaches the bridge through
``scope["state"]`` (``request.state`` in Starlette), which :mod:`capi_bridge.starlette` wraps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from capi_bridge.assembly import build_core
from capi_bridge.injection import Injector, is_navigation, should_inject
from capi_bridge.pages import CORE_STATE_KEY, PAGE_STATE_KEY, Page, PageBridge, page_in
from capi_bridge.request import RequestView
from capi_bridge.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class CapiBridgeMiddleware:
    """``Middleware(CapiBridgeMiddleware, pixel_id=..., access_token=...)`` or ``(app, settings)``.

    Keyword arguments are settings (``Settings`` field names); anything not given is read from
    ``CAPI_BRIDGE_*`` environment variables.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        *,
        core: PageBridge | None = None,
        **options: Any,
    ) -> None:
        self.app = app
        if core is None:
            if settings is None:
                settings = Settings.from_env(**options)
            core = build_core(settings)
        self.core = core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), send)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[CORE_STATE_KEY] = self.core
        if self.core.is_route(scope["path"]):
            await self._serve_route(scope, receive, send)
            return
        if not is_navigation(_header(scope, b"sec-fetch-dest")):
            await self.app(scope, receive, send)
            return
        inject = scope["method"] == "GET" and self.core.settings.auto_inject
        await self.app(scope, receive, _Responder(send, self.core, scope, inject=inject).send)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        core = self.core

        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.to_thread(core.start)
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(core.close)
            return message

        return wrapped

    async def _serve_route(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytearray()
        limit = self.core.endpoint.max_body_bytes
        more = scope["method"] in ("POST", "PUT", "PATCH")
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False) and len(body) <= limit
        request = RequestView.from_asgi(scope)
        # The endpoint commits accepted events to the SQLite outbox: a local write, kept off
        # the event loop so no coroutine waits on the disk.
        reply = await asyncio.to_thread(self.core.handle, request, bytes(body))
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [
                    (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers
                ],
            }
        )
        await send({"type": "http.response.body", "body": reply.body})


class _Responder:
    """Rewrites one response: held start message, bounded buffering, then pass-through."""

    def __init__(self, send: Send, core: PageBridge, scope: Scope, *, inject: bool) -> None:
        self._send = send
        self._core = core
        self._scope = scope
        self._inject = inject
        self._start: Message | None = None
        self._injector: Injector | None = None
        self._rewriting = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            message = self._on_start(message)
            if not self._rewriting:
                await self._send(message)
            return
        if kind != "http.response.body" or self._start is None:
            await self._send(message)
            return
        injector = self._injector
        more = message.get("more_body", False)
        if injector is None:
            await self._flush_start(False)
            await self._send(message)
            return
        out = injector.feed(message.get("body", b""))
        if not more:
            out += injector.finish()
        if not injector.decided:
            return  # still looking for </head>: hold the bytes, send nothing yet
        await self._flush_start(injector.injected)
        await self._send({"type": "http.response.body", "body": out, "more_body": more})

    def _on_start(self, message: Message) -> Message:
        raw = message.get("headers", [])
        state = self._scope["state"]
        page: Page | None = state.get(PAGE_STATE_KEY)  # made if the app used the bridge
        headers: list[tuple[bytes, bytes]] = []
        self._rewriting = False
        if self._inject and message["status"] == 200 and _is_html(raw):
            headers = [(bytes(k).lower(), bytes(v)) for k, v in raw]
            decoded = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
            self._rewriting = should_inject(200, decoded)
        if self._rewriting:
            scope = self._scope
            page = page_in(state, self._core, lambda: RequestView.from_asgi(scope), "document")
            if not page.placed:
                # render first: the page's cookies (fbp minted for it) come with its snippet
                self._injector = Injector(page.snippet_bytes())
        if page is None:
            return message  # a JSON or file response nobody asked the bridge about
        extra = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in page.response_headers()
        ]
        if not self._rewriting:
            if extra:  # a redirect after a server event, a page placed by the template tag...
                return {**message, "headers": [*raw, *extra]}
            return message
        self._start = {**message, "headers": headers + extra}
        return message

    async def _flush_start(self, injected: bool) -> None:
        start = self._start
        if start is None or not self._rewriting:
            return
        self._rewriting = False  # sent once
        if injected and self._injector is not None:
            grow = len(self._injector.snippet)
            start["headers"] = [
                (k, str(int(v) + grow).encode("latin-1") if k == b"content-length" else v)
                for k, v in start["headers"]
            ]
        await self._send(start)


def _is_html(headers: Any) -> bool:
    """A quick look for an HTML content type, before any header is decoded or copied."""
    for key, value in headers:
        if key.lower() == b"content-type":
            return bytes(value[:21]).lower().startswith((b"text/html", b"application/xhtml"))
    return False


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
