"""Starlette and FastAPI helpers over the pure-ASGI middleware.

The middleware itself is :class:`capi_bridge.asgi.CapiBridgeMiddleware` (ASGI is all Starlette
needs, and adapters do not import each other)::

    from starlette.middleware import Middleware
    from capi_bridge.asgi import CapiBridgeMiddleware
    from capi_bridge.starlette import capi_pixel, track

    app = Starlette(routes=..., middleware=[Middleware(CapiBridgeMiddleware)])
    templates.env.globals["capi_pixel"] = capi_pixel      # {{ capi_pixel(request) }}

    async def checkout(request):
        event_id = await track(request, "Purchase", custom_data={"value": 49.9, "currency": "EUR"})

The middleware leaves the app-wide :class:`~capi_bridge.pages.PageBridge` and the request's
:class:`~capi_bridge.pages.Page` in ``scope["state"]`` (``request.state``); these helpers read
them from there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from markupsafe import Markup
from starlette.requests import HTTPConnection

from capi_bridge.bridge import Bridge
from capi_bridge.pages import CORE_STATE_KEY, Page, PageBridge, page_in
from capi_bridge.request import RequestView

__all__ = ["capi_pixel", "get_bridge", "get_core", "identify", "track"]


def get_core(request: HTTPConnection) -> PageBridge:
    """The app's :class:`PageBridge`; fails with the fix when the middleware is missing."""
    core = request.scope.get("state", {}).get(CORE_STATE_KEY)
    if not isinstance(core, PageBridge):
        raise RuntimeError(
            "capi-bridge is not installed on this app: add "
            "Middleware(capi_bridge.asgi.CapiBridgeMiddleware) to the app's middleware"
        )
    return core


def get_bridge(request: HTTPConnection) -> Bridge:
    """The delivery engine (``stats()``, ``enqueue()``...) from an endpoint."""
    return get_core(request).bridge


def _page(request: HTTPConnection) -> Page:
    scope = request.scope
    state = scope.setdefault("state", {})
    dest = request.headers.get("sec-fetch-dest")
    return page_in(state, get_core(request), lambda: RequestView.from_asgi(scope), dest)


def capi_pixel(request: HTTPConnection, nonce: str | None = None) -> Markup:
    """``{{ capi_pixel(request) }}`` in a Jinja2 template: the snippet, placed by the template
    (the middleware then leaves the page alone). Empty in a fragment fetched by script."""
    page = _page(request)
    if not page.navigation:
        return Markup("")
    return Markup(page.render(nonce))  # render() escapes every value


def identify(request: HTTPConnection, **user_data: Any) -> None:
    """Attach the signed-in user's data to every event of this request (hashed server-side)."""
    _page(request).identify(**user_data)


async def track(
    request: HTTPConnection,
    event_name: str,
    *,
    custom_data: Mapping[str, Any] | None = None,
    user_data: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    pixel: bool = True,
) -> str:
    """Send a server-originated event now and return its id; the next page this browser
    renders fires the pixel for it with the same id. The outbox write runs in a worker
    thread, so the event loop never waits on the disk."""
    page = _page(request)
    return await asyncio.to_thread(
        page.track,
        event_name,
        custom_data=custom_data,
        user_data=user_data,
        event_id=event_id,
        pixel=pixel,
    )
