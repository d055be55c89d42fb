"""Pure ASGI middleware (no ``BaseHTTPMiddleware``), in the style of Starlette's GZipMiddleware.

A per-request responder wraps ``send``; the response core
(:class:`~capi_bridge.responses.PageResponse`) decides from the start message whether the body
is an HTML page to rewrite, and the responder moves the messages: the start message is held only
while a ``Content-Length`` waits for the body's decision, body chunks are buffered only up to
the insertion point or the search limit, and every later message passes through untouched.
Requests that cannot be a navigation (``Sec-Fetch-Dest``: fetch, XHR, images) never meet the
responder. The app reaches the bridge through ``scope["state"]`` (``request.state`` in
Starlette), which :mod:`capi_bridge.starlette` wraps.

Start-up fails loudly, pages never do. A bad setting (or an outbox that cannot be opened) is
not raised from ``__init__``: Starlette builds its middleware inside the first call, and an
exception there made uvicorn give up on the lifespan and then answer 500 to every request. It is
reported instead through ``lifespan.startup.failed``, so uvicorn and hypercorn stop with the
setting's name and fix; under a server without lifespan, every request passes through to the
app untouched and the error is logged once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from capi_bridge.assembly import build_core
from capi_bridge.errors import ConfigError
from capi_bridge.injection import is_navigation
from capi_bridge.pages import CORE_STATE_KEY, PAGE_STATE_KEY, Page, PageBridge, page_in
from capi_bridge.request import RequestView
from capi_bridge.responses import PageResponse, body_limit, read_asgi_body

if TYPE_CHECKING:
    from capi_bridge.bridge import Bridge
    from capi_bridge.settings import Settings
    from capi_bridge.snippet import ConsentCheck

__all__ = ["ASGIApp", "CapiBridgeMiddleware", "Message", "Receive", "Scope", "Send"]

logger = logging.getLogger("capi_bridge.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class CapiBridgeMiddleware:
    """The ASGI middleware; keyword arguments as for every capi-bridge middleware:

    ``settings`` (default: read from ``CAPI_BRIDGE_*`` environment variables), ``bridge`` (a
    delivery engine to share), ``consent_check(request) -> bool`` (your consent platform's
    decision), or ``core`` (a :class:`PageBridge` shared with another adapter). Starlette and
    FastAPI apps use :class:`capi_bridge.starlette.CapiBridgeMiddleware`, the same class typed
    for Starlette's ``Middleware(...)``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings | None = None,
        bridge: Bridge | None = None,
        consent_check: ConsentCheck | None = None,
        core: PageBridge | None = None,
    ) -> None:
        self.app = app
        #: The app-wide core; None when the settings are wrong (see :attr:`error`).
        self.core: PageBridge | None = None
        #: Why the bridge is off: reported at start-up, requests then pass through.
        self.error: ConfigError | None = None
        self._reported = False
        try:
            self.core = build_core(
                settings=settings, bridge=bridge, consent_check=consent_check, core=core
            )
        except ConfigError as exc:
            self.error = exc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        core = self.core
        if core is None:
            await self._disabled(scope, receive, send)
            return
        if kind == "lifespan":
            await self.app(scope, _closing(receive, core), send)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[CORE_STATE_KEY] = core
        if core.is_route(scope["path"]):
            await self._serve_route(core, scope, receive, send)
            return
        if not is_navigation(_header(scope, b"sec-fetch-dest")):
            await self.app(scope, receive, send)
            return
        inject = scope["method"] == "GET" and core.settings.auto_inject
        await self.app(scope, receive, _Responder(send, core, scope, inject=inject).send)

    async def _disabled(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A bad setting: fail the start-up if the server runs the lifespan, else stay out of
        the app's way (the helpers then do nothing) and say why, once."""
        error = self.error
        if scope["type"] == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.failed", "message": f"capi-bridge: {error}"})
            return
        if not self._reported:
            self._reported = True
            logger.error("capi-bridge is off, every request passes through: %s", error)
        if scope["type"] == "http":
            scope.setdefault("state", {})[CORE_STATE_KEY] = error
        await self.app(scope, receive, send)

    async def _serve_route(
        self, core: PageBridge, scope: Scope, receive: Receive, send: Send
    ) -> None:
        body = await read_asgi_body(receive, body_limit(core))
        if body is None:
            return  # the client went away
        request = RequestView.from_asgi(scope)
        # The endpoint commits accepted events to the outbox: a local write, kept off the event
        # loop so no coroutine waits on the disk.
        reply = await asyncio.to_thread(core.handle, request, body)
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


def _closing(receive: Receive, core: PageBridge) -> Receive:
    """The lifespan's ``receive``, flushing the outbox (bounded) when the server shuts down."""

    async def wrapped() -> Message:
        message = await receive()
        if message["type"] == "lifespan.shutdown":
            await asyncio.to_thread(core.close)
        return message

    return wrapped


class _Responder:
    """Moves one response's messages; the response core decides what happens to them."""

    __slots__ = ("_body", "_inject", "_rewriting", "_scope", "_send", "_start")

    def __init__(self, send: Send, core: PageBridge, scope: Scope, *, inject: bool) -> None:
        self._send = send
        self._scope = scope
        self._inject = inject
        state = scope["state"]

        def current() -> Page | None:
            page = state.get(PAGE_STATE_KEY)
            return page if isinstance(page, Page) else None

        def make() -> Page:
            return page_in(state, core, lambda: RequestView.from_asgi(scope), "document")

        self._body = PageResponse(current, make, inject=inject)
        self._start: Message | None = None  # held until the body decides
        self._rewriting = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._on_start(message)
        elif not self._rewriting:
            await self._send(message)
        elif kind == "http.response.body":
            await self._on_body(message)
        else:  # pathsend, trailers...: stop rewriting, release what is held, then forward
            self._rewriting = False
            self._body.injector = None
            held = self._body.finish()
            await self._release()
            if held:
                await self._send({"type": "http.response.body", "body": held, "more_body": True})
            await self._send(message)

    async def _on_start(self, message: Message) -> None:
        raw = list(message.get("headers", ()))  # may be a generator: read it once
        status = message["status"]
        if not (self._inject and status == 200 and _is_html(raw)) and (
            PAGE_STATE_KEY not in self._scope["state"]
        ):
            await self._send(message)  # a JSON or file response nobody asked the bridge about
            return
        headers = [(bytes(k).lower().decode("latin-1"), bytes(v).decode("latin-1")) for k, v in raw]
        extra = self._body.start(status, headers)
        replaced = self._body.replaced
        if replaced:
            raw = [(k, v) for k, v in raw if bytes(k).lower().decode("latin-1") not in replaced]
        out = {
            **message,
            "headers": [
                *raw,
                *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra),
            ],
        }
        self._rewriting = self._body.rewriting
        if self._body.held:
            self._start = out
        else:
            await self._send(out)

    async def _on_body(self, message: Message) -> None:
        body = self._body
        more = message.get("more_body", False)
        out = body.feed(message.get("body", b""))
        if not more:
            out += body.finish()
        if not body.decided:
            return  # still looking for </head>: hold the bytes, send nothing yet
        self._rewriting = False  # decided: every later message passes straight through
        await self._release()
        await self._send({**message, "body": out, "more_body": more})

    async def _release(self) -> None:
        start, self._start = self._start, None
        if start is None:
            return
        body = self._body
        start["headers"] = [
            (k, body.length(v.decode("latin-1")).encode() if k.lower() == b"content-length" else v)
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
