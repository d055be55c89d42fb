"""WSGI middleware: the pixel snippet in every HTML page, the mirror endpoint, the script route.

``app.wsgi_app = CapiBridgeMiddleware(app.wsgi_app)`` (settings from ``CAPI_BRIDGE_*``
variables) or ``CapiBridgeMiddleware(app, settings=Settings(...))``. The Flask extension is this
middleware plus Flask conveniences. What happens to a response is decided by the response core
(:class:`~capi_bridge.responses.PageResponse`); this module only moves bytes the way PEP 3333
asks:

* requests that cannot be a navigation (``Sec-Fetch-Dest`` says fetch/XHR/image) go straight to
  the app; a navigation gets a :class:`~capi_bridge.pages.Page` in ``environ`` (server events,
  ``identify()``), and a response we do not rewrite is returned *unchanged* but for our
  ``Set-Cookie`` headers (keeping ``wsgi.file_wrapper`` and ``len()``);
* when we rewrite a response with a ``Content-Length``, the server's ``start_response`` is called
  late, just before the first body bytes, so the length can be corrected once we know whether the
  snippet went in; without one, headers go at once and the wrapper yields ``b""`` while it buffers
  (the "block" rule; Werkzeug asserts ``start_response`` came before any yield). ``close()`` is
  always forwarded;
* ``start_response`` may be called again with ``exc_info``; no reference to ``exc_info`` is kept;
* an app that uses the legacy ``write()`` callable is passed through untouched.

A bad setting raises :class:`~capi_bridge.errors.ConfigError` here, when the app is built, so
the server never starts with a broken bridge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from capi_bridge.assembly import build_core
from capi_bridge.injection import is_navigation
from capi_bridge.pages import PAGE_ENVIRON_KEY, Page, PageBridge
from capi_bridge.request import RequestView
from capi_bridge.responses import (
    PageResponse,
    body_limit,
    html_type,
    passes_through,
    read_wsgi_body,
)

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from capi_bridge.bridge import Bridge
    from capi_bridge.settings import Settings
    from capi_bridge.snippet import ConsentCheck

__all__ = ["NONCE_ENVIRON_KEY", "CapiBridgeMiddleware", "wsgi_nonce"]

#: Where a WSGI app (or a middleware inside ours) may leave the CSP nonce for our ``<script>``.
NONCE_ENVIRON_KEY = "capi_bridge.csp_nonce"


class CapiBridgeMiddleware:
    """The WSGI middleware; keyword arguments as for every capi-bridge middleware:

    ``settings`` (default: read from ``CAPI_BRIDGE_*`` environment variables), ``bridge`` (a
    delivery engine to share), ``consent_check(request) -> bool`` (your consent platform's
    decision), or ``core`` (a :class:`PageBridge` shared with another adapter).
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        settings: Settings | None = None,
        bridge: Bridge | None = None,
        consent_check: ConsentCheck | None = None,
        core: PageBridge | None = None,
    ) -> None:
        self.app = app
        self.core = build_core(
            settings=settings, bridge=bridge, consent_check=consent_check, core=core
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        core = self.core
        if environ.get("PATH_INFO", "") in core.route_paths:  # core.is_route(), without a call
            return self._serve_route(environ, start_response)
        if not is_navigation(environ.get("HTTP_SEC_FETCH_DEST")):
            return self.app(environ, start_response)
        # the Page is lazy: a response that turns out not to be a page never reads the request
        page = Page(core, lambda: RequestView.from_wsgi(environ), navigation=True)
        environ[PAGE_ENVIRON_KEY] = page
        inject = core.settings.auto_inject and environ.get("REQUEST_METHOD") == "GET"
        response = _Start(start_response, page, environ, inject)
        result = self.app(environ, response.start_response)
        if response.called and (response.body is None or not response.body.rewriting):
            return result  # the app's own iterable: file_wrapper and len() kept
        return _Body(result, response)  # rewriting, or an app that starts while iterating

    def _serve_route(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        body = read_wsgi_body(environ, body_limit(self.core))
        reply = self.core.handle(RequestView.from_wsgi(environ), body)
        start_response(reply.status_line, list(reply.headers))
        return [reply.body]


def wsgi_nonce(environ: WSGIEnvironment) -> str | None:
    """The page's CSP nonce: ``environ["capi_bridge.csp_nonce"]``, else Flask-Talisman's
    ``request.csp_nonce`` (Werkzeug keeps the request object in ``environ``)."""
    nonce = environ.get(NONCE_ENVIRON_KEY)
    if nonce is None:
        nonce = getattr(environ.get("werkzeug.request"), "csp_nonce", None)
    return nonce if isinstance(nonce, str) and nonce else None


class _Start:
    """Intercepts ``start_response``: the core decides, this sends the start line (late when a
    length must be corrected). A response that :func:`passes_through` goes to the server's
    ``start_response`` at once, as the app sent it, and nothing of ours runs again."""

    __slots__ = (
        "_environ",
        "_headers",
        "_inject",
        "_status",
        "_upstream",
        "_write",
        "body",
        "called",
        "page",
        "started",
    )

    def __init__(
        self, start_response: StartResponse, page: Page, environ: WSGIEnvironment, inject: bool
    ) -> None:
        self._upstream = start_response
        self.page = page
        self._environ = environ
        self._inject = inject
        #: The response core, made only for a response it must decide (None: passed through).
        self.body: PageResponse | None = None
        self.called = self.started = False
        # _status, _headers and _write are set by _decide, the only way to begin()

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> Callable[[bytes], object]:
        if exc_info is not None and self.started:
            return self._upstream(status, headers, exc_info)  # re-raises: too late to change
        self.called = True
        try:
            code = int(status[:3])
        except ValueError:
            code = 0  # not ours to judge: passed through as the app sent it
        html = False
        if code == 200 and self._inject:  # only then can the content type matter
            for name, value in headers:
                if len(name) == 12 and name.lower() == "content-type":
                    html = html_type(value)
                    break
        if passes_through(self.page, self._inject, code, html):
            self.body = None
            self.started = True
            return self._upstream(status, headers)
        return self._decide(code, status, headers)

    def _decide(
        self, code: int, status: str, headers: list[tuple[str, str]]
    ) -> Callable[[bytes], object]:
        """A page to rewrite, or a response carrying our cookies: the response core decides."""
        page, environ = self.page, self._environ
        body = self.body = PageResponse(
            lambda: page, lambda: page, inject=self._inject, nonce=lambda: wsgi_nonce(environ)
        )
        extra = body.start(code, [(name.lower(), value) for name, value in headers])
        replaced = body.replaced
        if replaced:
            headers = [(name, value) for name, value in headers if name.lower() not in replaced]
        self._status = status
        self._headers = [*headers, *extra]
        if not body.held:
            self.begin()
        return self.write

    def begin(self) -> None:
        """Send the status and headers, ``Content-Length`` corrected once the body decided."""
        if self.started:
            return
        self.started = True
        headers = self._headers
        body = self.body
        if body is not None and body.held:
            headers = [
                (name, body.length(value) if name.lower() == "content-length" else value)
                for name, value in headers
            ]
        self._write = self._upstream(self._status, headers)

    def write(self, data: bytes) -> None:
        """Legacy ``write()``: the body bypasses the iterable, so stop rewriting and forward."""
        if not self.started:
            if self.body is not None:
                self.body.injector = None  # nothing buffered yet: write() precedes iteration
            self.begin()
        assert self._write is not None
        self._write(data)


class _Body:
    """The rewritten body: buffers to the insertion point, then streams; forwards ``close()``."""

    __slots__ = ("_result", "_start")

    def __init__(self, result: Iterable[bytes], start: _Start) -> None:
        self._result = result
        self._start = start

    def __iter__(self) -> Iterator[bytes]:
        start = self._start
        for chunk in self._result:
            body = start.body  # read per chunk: the app may start the response while iterating
            if body is None:
                yield chunk  # passed through
                continue
            out = body.feed(chunk)
            if start.called and not start.started and body.decided:
                start.begin()
            if start.started:
                yield out  # b"" while still buffering: PEP 3333's block rule
        tail = b"" if start.body is None else start.body.finish()
        if start.called:
            start.begin()
        if tail:
            yield tail

    def close(self) -> None:
        close: Any = getattr(self._result, "close", None)
        if close is not None:
            close()
