"""WSGI middleware: the pixel snippet in every HTML page, the mirror endpoint, the script route.

A thin adapter over :class:`capi_bridge.pages.PageBridge` (the framework-neutral core) and
:mod:`capi_bridge.injection`. PEP 3333 shapes it:

* requests that cannot be a navigation (``Sec-Fetch-Dest`` says fetch/XHR/image) go straight to
  the app; a navigation gets a :class:`~capi_bridge.pages.Page` in ``environ`` (server events,
  ``identify()``), only a GET may have the snippet inserted, and a response we do not rewrite is
  returned *unchanged* but for our ``Set-Cookie`` headers (keeping ``wsgi.file_wrapper``);
* when we rewrite a response with a ``Content-Length``, the server's ``start_response`` is called
  late, just before the first body bytes, so the length can be corrected once we know whether the
  snippet went in; without one, headers go at once and the wrapper yields ``b""`` while it buffers
  (the "block" rule; Werkzeug asserts ``start_response`` came before any yield). ``close()`` is
  always forwarded;
* ``start_response`` may be called again with ``exc_info``; no reference to ``exc_info`` is kept;
* an app that uses the legacy ``write()`` callable is passed through untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from capi_bridge.assembly import build_core
from capi_bridge.injection import Injector, is_navigation, should_inject
from capi_bridge.pages import PAGE_ENVIRON_KEY, Page, PageBridge
from capi_bridge.request import RequestView
from capi_bridge.settings import Settings

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from capi_bridge.bridge import Bridge


class CapiBridgeMiddleware:
    """``app.wsgi_app = CapiBridgeMiddleware(app.wsgi_app, settings)``."""

    def __init__(
        self,
        app: WSGIApplication,
        settings: Settings | None = None,
        *,
        bridge: Bridge | None = None,
        core: PageBridge | None = None,
    ) -> None:
        self.app = app
        if core is None:
            core = build_core(settings or Settings.from_env(), bridge=bridge)
        self.core = core

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if self.core.is_route(path):
            return self._serve_route(environ, start_response)
        if not is_navigation(environ.get("HTTP_SEC_FETCH_DEST")):
            return self.app(environ, start_response)
        page = self.core.open_page(lambda: RequestView.from_wsgi(environ))
        environ[PAGE_ENVIRON_KEY] = page
        inject = environ.get("REQUEST_METHOD") == "GET" and self.core.settings.auto_inject
        response = _PageResponse(start_response, page, inject=inject)
        result = self.app(environ, response.start_response)
        if not response.rewriting:
            return result
        return _InjectingBody(result, response)

    def _serve_route(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        limit = self.core.endpoint.max_body_bytes
        body = b""
        if 0 < length <= limit:
            body = environ["wsgi.input"].read(length)
        elif length > limit:
            body = b"\0" * (limit + 1)  # never read: the endpoint answers 413 by size
        reply = self.core.handle(RequestView.from_wsgi(environ), body)
        start_response(reply.status_line, list(reply.headers))
        return [reply.body]


class _PageResponse:
    """Intercepts ``start_response`` and decides, from status and headers, whether to rewrite."""

    def __init__(self, start_response: StartResponse, page: Page, *, inject: bool) -> None:
        self._upstream = start_response
        self.page = page
        self._inject = inject
        self.rewriting = False
        self.started = False
        self._status = ""
        self._headers: list[tuple[str, str]] = []
        self.injector: Injector | None = None
        self._upstream_write: Any = None

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> Any:
        if exc_info is not None and self.started:
            return self._upstream(status, headers, exc_info)
        code = int(status.split(" ", 1)[0])
        lowered = [(name.lower(), value) for name, value in headers]
        if not (self._inject and should_inject(code, lowered)):
            self.rewriting = False
            return self._upstream(status, list(headers) + self.page.response_headers(), exc_info)
        self.rewriting = True
        self._status = status
        # render first: the page's cookies (fbp minted for it) come with its snippet
        self.injector = None if self.page.placed else Injector(self.page.snippet_bytes())
        self._headers = list(headers) + self.page.response_headers()
        if not any(name == "content-length" for name, _ in lowered):
            # Nothing to correct: send headers now, so the body may yield b"" while buffering.
            self.begin(False)
        return self._write

    def begin(self, injected: bool) -> None:
        """Send the held status and headers, with ``Content-Length`` grown by the snippet."""
        if self.started:
            return
        self.started = True
        headers = self._headers
        if injected and self.injector is not None:
            grow = len(self.injector.snippet)
            headers = [
                (name, str(int(value) + grow) if name.lower() == "content-length" else value)
                for name, value in headers
            ]
        self._upstream_write = self._upstream(self._status, headers)

    def _write(self, data: bytes) -> None:
        """Legacy ``write()``: the body bypasses the iterable, so stop rewriting and forward."""
        if not self.started:
            self.injector = None
            self.begin(False)
        self._upstream_write(data)


class _InjectingBody:
    """The rewritten body: buffers to the insertion point, then streams; forwards ``close()``."""

    def __init__(self, result: Iterable[bytes], response: _PageResponse) -> None:
        self._result = result
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        response = self._response
        injector = response.injector
        for chunk in self._result:
            if injector is None:
                response.begin(False)
                yield chunk
                continue
            out = injector.feed(chunk)
            if injector.decided:
                response.begin(injector.injected)
            if response.started:
                yield out  # b"" while still buffering: PEP 3333's block rule
        tail = b"" if injector is None else injector.finish()
        response.begin(injector is not None and injector.injected)
        if tail:
            yield tail

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            close()
