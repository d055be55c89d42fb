"""Starlette and FastAPI: the middleware, typed for ``Middleware(...)``, and the view helpers.

::

    from starlette.middleware import Middleware
    from capi_bridge.starlette import CapiBridgeMiddleware, capi_pixel, track

    app = Starlette(routes=..., middleware=[Middleware(CapiBridgeMiddleware)])
    templates.env.globals["capi_pixel"] = capi_pixel      # {{ capi_pixel(request) }}

    async def checkout(request):
        event_id = await track(request, "Purchase", custom_data={"value": 49.9, "currency": "EUR"})

The middleware is :class:`capi_bridge.asgi.CapiBridgeMiddleware` (pure ASGI), declared with
Starlette's own ``ASGIApp`` type so ``Middleware(CapiBridgeMiddleware, settings=...)`` and
FastAPI's ``app.add_middleware`` type-check their keyword arguments. It leaves the app-wide
:class:`~capi_bridge.pages.PageBridge` and the request's :class:`~capi_bridge.pages.Page` in
``scope["state"]`` (``request.state``); the helpers read them from there.

When the bridge is off because a setting is wrong and the server ran no lifespan to stop on it
(see :mod:`capi_bridge.asgi`), the helpers do nothing: ``track`` returns a fresh event id that
nothing sends, so the app's pages and checkout keep working.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from markupsafe import Markup
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp

from capi_bridge import asgi
from capi_bridge.bridge import Bridge
from capi_bridge.errors import ConfigError
from capi_bridge.events import new_event_id
from capi_bridge.pages import CORE_STATE_KEY, Page, PageBridge, page_in
from capi_bridge.request import RequestView

if TYPE_CHECKING:
    from capi_bridge.settings import Settings
    from capi_bridge.snippet import ConsentCheck

__all__ = [
    "CapiBridgeMiddleware",
    "capi_pixel",
    "get_bridge",
    "get_core",
    "identify",
    "track",
]


class CapiBridgeMiddleware(asgi.CapiBridgeMiddleware):
    """``Middleware(CapiBridgeMiddleware)`` (settings from ``CAPI_BRIDGE_*``), or with
    ``settings=Settings(...)``, ``bridge=``, ``consent_check=``: see the ASGI middleware."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings | None = None,
        bridge: Bridge | None = None,
        consent_check: ConsentCheck | None = None,
        core: PageBridge | None = None,
    ) -> None:
        super().__init__(
            app, settings=settings, bridge=bridge, consent_check=consent_check, core=core
        )


def get_core(request: HTTPConnection) -> PageBridge:
    """The app's :class:`PageBridge`; fails with the fix when the middleware is missing."""
    core = request.scope.get("state", {}).get(CORE_STATE_KEY)
    if isinstance(core, ConfigError):
        raise RuntimeError(f"capi-bridge is off: {core}")
    if not isinstance(core, PageBridge):
        raise RuntimeError(
            "capi-bridge is not installed on this app: add "
            "Middleware(capi_bridge.starlette.CapiBridgeMiddleware) to the app's middleware"
        )
    return core


def get_bridge(request: HTTPConnection) -> Bridge:
    """The delivery engine (``stats()``, ``enqueue()``...) from an endpoint."""
    return get_core(request).bridge


def _page(request: HTTPConnection) -> Page | None:
    """The request's page; None while the bridge is off (a bad setting, reported once)."""
    scope = request.scope
    state = scope.setdefault("state", {})
    if isinstance(state.get(CORE_STATE_KEY), ConfigError):
        return None
    dest = request.headers.get("sec-fetch-dest")
    return page_in(state, get_core(request), lambda: RequestView.from_asgi(scope), dest)


def capi_pixel(request: HTTPConnection, nonce: str | None = None) -> Markup:
    """``{{ capi_pixel(request) }}`` in a Jinja2 template: the snippet, placed by the template
    (the middleware then leaves the page alone). Empty in a fragment fetched by script."""
    page = _page(request)
    if page is None or not page.navigation:
        return Markup("")
    return Markup(page.render(nonce))  # render() escapes every value


def identify(request: HTTPConnection, **user_data: Any) -> None:
    """Attach the signed-in user's data to every event of this request (hashed server-side).
    A value that is not what its key needs (``em="jane@intranet"``) is dropped with a warning
    naming the key; an unknown key raises (see :meth:`Page.identify`)."""
    page = _page(request)
    if page is not None:
        page.identify(**user_data)


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
    if page is None:
        return event_id or new_event_id()
    return await asyncio.to_thread(
        page.track,
        event_name,
        custom_data=custom_data,
        user_data=user_data,
        event_id=event_id,
        pixel=pixel,
    )
