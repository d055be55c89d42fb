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
from capi_bridge.responses import (
    PageResponse,
    body_limit,
    html_type,
    passes_through,
    read_asgi_body,
)

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
        # A coroutine function, not a plain one returning the app's awaitable (one frame
        # less): hypercorn tells ASGI from WSGI with inspect.iscoroutinefunction, which on
        # Python 3.10 and 3.11 sees no marker a plain function could carry.
        core = self.core
        if core is None:
            await self._disabled(scope, receive, send)
            return
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await self.app(scope, _closing(receive, core), send)
            else:
                await self.app(scope, receive, send)
            return
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state[CORE_STATE_KEY] = core
        if scope["path"] in core.route_paths:  # core.is_route(), without a call
            await self._serve_route(core, scope, receive, send)
            return
        dest = None  # Sec-Fetch-Dest; header names are lower-case in ASGI (Starlette relies
        for key, value in scope.get("headers") or ():  # on it too); a loop beats dict() here
            if key == b"sec-fetch-dest":
                dest = bytes(value)
                break
        if not is_navigation(dest):
            await self.app(scope, receive, send)
            return
        inject = core.settings.auto_inject and scope["method"] == "GET"
        await self.app(scope, receive, _Responder(send, core, scope, inject).send)

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
    """Moves one response's messages; the response core decides what happens to them.

    :meth:`send` is a plain function returning the server's own awaitable for every message
    that passes through: a response that is not a page (JSON, a file) costs no coroutine of
    ours, and after its start line, one flag test per message."""

    __slots__ = ("_body", "_core", "_inject", "_rewriting", "_scope", "_send", "_start", "_through")

    def __init__(self, send: Send, core: PageBridge, scope: Scope, inject: bool) -> None:
        self._send = send
        self._core = core
        self._scope = scope
        self._inject = inject
        self._through = False  # decided at the start line: every message passes untouched
        self._rewriting = False
        # _body (the response core) and _start (held until the body decides) are set by
        # _on_start: only a response the core must decide pays for them

    def send(self, message: Message) -> Awaitable[None]:
        if self._through:
            return self._send(message)
        if message["type"] != "http.response.start":
            return self._on_message(message)
        raw = message.get("headers", ())
        if not isinstance(raw, (list, tuple)):  # a generator: read it once, send the copy
            raw = list(raw)
            message = {**message, "headers": raw}
        page = self._scope["state"].get(PAGE_STATE_KEY)
        current = page if isinstance(page, Page) else None
        status = message["status"]
        html = False
        if status == 200 and self._inject:  # only then can the content type matter
            for key, value in raw:
                if len(key) == 12 and key.lower() == b"content-type":
                    html = html_type(value)
                    break
        if passes_through(current, self._inject, status, html):
            self._through = True
            return self._send(message)
        return self._on_start(message, raw, current)

    async def _on_message(self, message: Message) -> None:
        kind = message["type"]
        if not self._rewriting:
            await self._send(message)
        elif kind == "http.response.body":
            await self._on_body(message)
        else:  # pathsend, trailers...: stop rewriting, release what is held, then forward
            assert self._body is not None
            self._rewriting = False
            self._body.injector = None
            held = self._body.finish()
            await self._release()
            if held:
                await self._send({"type": "http.response.body", "body": held, "more_body": True})
            await self._send(message)

    async def _on_start(self, message: Message, raw: Any, current: Page | None) -> None:
        state, core, scope = self._scope["state"], self._core, self._scope

        def make() -> Page:
            return page_in(state, core, lambda: RequestView.from_asgi(scope), "document")

        body = self._body = PageResponse(lambda: current, make, inject=self._inject)
        self._start: Message | None = None
        headers = [(bytes(k).lower().decode("latin-1"), bytes(v).decode("latin-1")) for k, v in raw]
        extra = body.start(message["status"], headers)
        replaced = body.replaced
        if replaced:
            raw = [(k, v) for k, v in raw if bytes(k).lower().decode("latin-1") not in replaced]
        out = {
            **message,
            "headers": [
                *raw,
                *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra),
            ],
        }
        self._rewriting = body.rewriting
        self._through = not body.rewriting  # cookies added: the body passes untouched
        if body.held:
            self._start = out
        else:
            await self._send(out)

    async def _on_body(self, message: Message) -> None:
        body = self._body
        assert body is not None
        more = message.get("more_body", False)
        out = body.feed(message.get("body", b""))
        if not more:
            out += body.finish()
        if not body.decided:
            return  # still looking for </head>: hold the bytes, send nothing yet
        self._rewriting = False  # decided: every later message passes straight through
        self._through = True
        await self._release()
        await self._send({**message, "body": out, "more_body": more})

    async def _release(self) -> None:
        start, self._start = self._start, None
        if start is None or self._body is None:
            return
        body = self._body
        start["headers"] = [
            (k, body.length(v.decode("latin-1")).encode() if k.lower() == b"content-length" else v)
            for k, v in start["headers"]
        ]
        await self._send(start)
