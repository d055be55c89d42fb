"""The Django middleware and the view helpers.

``MIDDLEWARE += ["capi_bridge.django.CapiBridgeMiddleware"]``, below ``GZipMiddleware`` and any
CSP middleware (system checks W002/W003 say so). Sync and async capable, as Django asks: under
ASGI with async views it never blocks the event loop on our side but for rewriting the page in
memory. Like whitenoise it serves its own paths (the mirror endpoint, the script, the
inspector) before the rest of the chain, so neither CSRF nor the URLconf is involved.

A response is handed to the response core (:class:`~capi_bridge.responses.PageResponse`), the
same decisions as the WSGI and ASGI middlewares. Only "processable" HTML is rewritten, Django's
convention: not a streaming response (which would have to be consumed), not an encoded one. The
CSP nonce comes from ``request.csp_nonce`` (django-csp) or Django's own CSP support.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from collections.abc import Awaitable, Callable, Mapping
from http.cookies import Morsel
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from capi_bridge.bridge import Bridge
from capi_bridge.django import conf
from capi_bridge.injection import is_navigation
from capi_bridge.pages import Page, PageBridge
from capi_bridge.request import RequestView
from capi_bridge.responses import PageResponse, body_limit, read_limited, read_wsgi_body

#: Where the request's :class:`Page` lives (made on first use).
PAGE_ATTRIBUTE = "_capi_bridge_page"

GetResponse = Callable[[HttpRequest], HttpResponseBase]
AsyncGetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


class CapiBridgeMiddleware:
    """See the module docstring; a bad setting raises ImproperlyConfigured when Django loads
    the middleware chain, naming the setting."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse | AsyncGetResponse) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        conf.core()  # fail now, not on the first visitor

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        core = conf.core()
        if core.is_route(request.path_info):
            return serve_route(core, request)
        response = self.get_response(request)
        assert isinstance(response, HttpResponseBase)
        return _finish(core, request, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        core = conf.core()
        if core.is_route(request.path_info):
            # the endpoint commits to the outbox: a local write, kept off the event loop
            return await asyncio.to_thread(serve_route, core, request)
        response = self.get_response(request)
        assert not isinstance(response, HttpResponseBase)
        return _finish(core, request, await response)


def serve_route(core: PageBridge, request: HttpRequest) -> HttpResponse:
    """Answer one of our paths; the body is read to at most the endpoint's limit + 1 bytes."""
    limit = body_limit(core)
    if "wsgi.input" in request.META:  # WSGI: the raw stream (Django's ignores chunked bodies)
        body = read_wsgi_body(request.META, limit)
    else:  # ASGI: Django's handler has spooled the body already; take what the limit allows
        body = read_limited(request.read, limit)
    reply = core.handle(request_view(request), body)
    response = HttpResponse(reply.body, status=reply.status)
    for name, value in reply.headers:
        if name.lower() == "set-cookie":
            _add_cookie(response, value)
        else:
            response[name] = value
    return response


def _finish(core: PageBridge, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """The snippet into a processable HTML page, and the cookies the request earned."""
    if not is_navigation(request.META.get("HTTP_SEC_FETCH_DEST")):
        return response  # fetch/XHR: no cookie, no page
    current: Page | None = request.__dict__.get(PAGE_ATTRIBUTE)
    ctype = response.get("Content-Type", "")
    if current is None and not ctype.startswith(("text/html", "application/xhtml+xml")):
        return response  # JSON, files... to a navigation nobody asked the bridge about
    inject = (
        request.method == "GET"
        and core.settings.auto_inject
        and isinstance(response, HttpResponse)  # not streaming
    )
    body = PageResponse(
        lambda: current,
        lambda: page(request, navigation=True),
        inject=inject,
        nonce=lambda: csp_nonce(request),
    )
    headers = [(name.lower(), value) for name, value in response.items()]
    extra = body.start(response.status_code, headers)
    if body.rewriting and isinstance(response, HttpResponse):
        response.content = body.feed(response.content) + body.finish()
        if response.has_header("Content-Length"):
            response["Content-Length"] = body.length(response["Content-Length"])
    for name in body.replaced:
        del response[name]
    for name, value in extra:
        if name.lower() == "set-cookie":
            _add_cookie(response, value)
        else:
            response[name] = value
    return response


# --- what views and templates call ---------------------------------------------------------------


def request_view(request: HttpRequest) -> RequestView:
    """The framework-neutral view of a Django request (ASGI scope, or WSGI environ)."""
    scope = getattr(request, "scope", None)
    if isinstance(scope, Mapping):
        return RequestView.from_asgi(scope)
    return RequestView.from_wsgi(request.META)


def page(request: HttpRequest, *, navigation: bool | None = None) -> Page:
    """The request's :class:`Page`, made on first use (by a view, the template tag or the
    middleware when the response is a page)."""
    found: Page | None = request.__dict__.get(PAGE_ATTRIBUTE)
    if found is None:
        if navigation is None:
            navigation = is_navigation(request.META.get("HTTP_SEC_FETCH_DEST"))
        found = conf.core().open_page(lambda: request_view(request), navigation=navigation)
        setattr(request, PAGE_ATTRIBUTE, found)
    return found


def csp_nonce(request: HttpRequest) -> str | None:
    """The request's CSP nonce: django-csp's ``request.csp_nonce``, else Django's own."""
    try:
        nonce = getattr(request, "csp_nonce", None)
        if nonce is None:  # Django 6's own CSP middleware
            get_nonce = _django_get_nonce()
            if get_nonce is None:  # Django before 6: no built-in CSP
                return None
            nonce = get_nonce(request)
        text = "" if nonce is None else str(nonce)  # str(): django-csp's nonce is lazy
    except Exception:  # django-csp after its header went out: the W003 order problem
        return None
    return text or None


@functools.cache  # looked up once: a failed import per page costs an exception each time
def _django_get_nonce() -> Callable[[HttpRequest], Any] | None:
    try:
        module = importlib.import_module("django.middleware.csp")
    except ImportError:
        return None
    get_nonce: Callable[[HttpRequest], Any] = module.get_nonce
    return get_nonce


def get_bridge() -> Bridge:
    """The delivery engine (``stats()``, ``flush()``, ``enqueue()``)."""
    return conf.core().bridge


def identify(request: HttpRequest, **user_data: Any) -> None:
    """Attach the signed-in user's data (``em``, ``ph``, ``external_id``...) to every event of
    this request, hashed server-side. A value that is not what its key needs
    (``em="jane@intranet"``) is dropped with a warning naming the key; an unknown key raises."""
    page(request).identify(**user_data)


def track(
    request: HttpRequest,
    name: str,
    *,
    custom_data: Mapping[str, Any] | None = None,
    user_data: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    pixel: bool = True,
) -> str:
    """Send a server-originated event now and return its id; the next page this browser
    renders fires the pixel for it with the same id. One local SQLite commit: fine in an async
    view too (``atrack`` runs it in a thread when the outbox may be busy)."""
    return page(request).track(
        name, custom_data=custom_data, user_data=user_data, event_id=event_id, pixel=pixel
    )


async def atrack(
    request: HttpRequest,
    name: str,
    *,
    custom_data: Mapping[str, Any] | None = None,
    user_data: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    pixel: bool = True,
) -> str:
    """:func:`track` in a worker thread: the event loop never waits on the outbox."""
    return await asyncio.to_thread(
        track,
        request,
        name,
        custom_data=custom_data,
        user_data=user_data,
        event_id=event_id,
        pixel=pixel,
    )


class _SetCookie(Morsel[str]):
    """A ``Set-Cookie`` line capi-bridge made, carried verbatim through Django's cookie jar
    (``response.cookies`` is the only way Django sends several cookies)."""

    def __init__(self, header: str) -> None:
        super().__init__()
        name, _, rest = header.partition("=")
        value = rest.split(";", 1)[0]
        self.set(name, value, value)
        self._header = header

    def OutputString(self, attrs: Any = None) -> str:  # Morsel's own name
        return self._header


def _add_cookie(response: HttpResponseBase, header: str) -> None:
    cookie = _SetCookie(header)
    response.cookies[cookie.key] = cookie
