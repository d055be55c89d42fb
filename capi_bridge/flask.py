"""Flask extension: ``capi = CapiBridge(app)`` or ``capi.init_app(app)`` in an app factory.

Follows Flask's extension guide: configuration comes from ``app.config`` (``CAPI_BRIDGE_*``,
falling back to the same environment variables), per-app state lives in
``app.extensions["capi_bridge"]`` (a :class:`~capi_bridge.pages.PageBridge`) and the extension
object keeps no app, so one ``CapiBridge`` serves several apps. It hooks Flask's request
cycle instead of wrapping ``wsgi_app``, so the snippet lands in the view's response before other
``after_request`` handlers (compression, caching) see it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flask import Flask, Response, current_app, g, request
from markupsafe import Markup

from capi_bridge.assembly import build_core
from capi_bridge.bridge import Bridge
from capi_bridge.injection import Injector, inject_once, is_navigation, should_inject
from capi_bridge.pages import Page, PageBridge
from capi_bridge.request import RequestView
from capi_bridge.settings import ENV_PREFIX, Settings
from capi_bridge.snippet import ConsentCheck

EXTENSION_KEY = "capi_bridge"
_PAGE = "_capi_bridge_page"


class CapiBridge:
    """The Flask extension; see README "Flask"."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        settings: Settings | None = None,
        bridge: Bridge | None = None,
        consent_check: ConsentCheck | None = None,
    ) -> None:
        self._settings = settings
        self._bridge = bridge
        self._consent_check = consent_check
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read settings, register the endpoint and script routes and the request hooks."""
        settings = self._settings or _settings_from(app)
        core = build_core(settings, bridge=self._bridge, consent_check=self._consent_check)
        app.extensions[EXTENSION_KEY] = core
        routes = [
            (settings.endpoint_path, "capi_bridge_endpoint", ["GET", "POST"]),
            (settings.script_path, "capi_bridge_script", ["GET"]),
        ]
        if core.inspector is not None:  # no route at all when disabled: the app's own 404
            paths = (core.inspector.page_path, core.inspector.data_path)
            routes += [
                (paths[0], "capi_bridge_inspector", ["GET"]),
                (paths[1], "capi_bridge_inspector_data", ["GET"]),
                (core.inspector.diagnostics_path, "capi_bridge_inspector_diagnostics", ["GET"]),
            ]
        for path, name, methods in routes:
            app.add_url_rule(path, endpoint=name, view_func=_serve_route, methods=methods)
        app.after_request(_finish_page)
        app.jinja_env.globals["capi_pixel"] = capi_pixel

    # --- what views call ----------------------------------------------------------------------

    @property
    def core(self) -> PageBridge:
        """This app's :class:`PageBridge` (needs an app context)."""
        return _core()

    @property
    def bridge(self) -> Bridge:
        """This app's delivery engine: ``stats()``, ``flush()``, ``enqueue()``..."""
        return self.core.bridge

    def identify(self, **user_data: Any) -> None:
        """Attach the signed-in user's data (``em``, ``ph``, ``external_id``...) to every event
        of this request, hashed server-side; see :meth:`Page.identify`."""
        _page().identify(**user_data)

    def track(
        self,
        event_name: str,
        *,
        custom_data: Mapping[str, Any] | None = None,
        user_data: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        pixel: bool = True,
    ) -> str:
        """Send a server-originated event now; the next page fires its pixel twin."""
        return _page().track(
            event_name,
            custom_data=custom_data,
            user_data=user_data,
            event_id=event_id,
            pixel=pixel,
        )

    def set_nonce(self, nonce: str) -> None:
        """The CSP nonce for this response's ``<script>`` tags (auto-injection included)."""
        _page().nonce = nonce


def capi_pixel(nonce: str | None = None) -> Markup:
    """Jinja global ``{{ capi_pixel() }}``: the snippet, placed where the template wants it."""
    page = _page()
    if not page.navigation:  # a fragment fetched by script gets no pixel
        return Markup("")
    return Markup(page.render(nonce))  # render() escapes every value


def _settings_from(app: Flask) -> Settings:
    config: dict[str, Any] = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    config.update((k, v) for k, v in app.config.items() if k.startswith(ENV_PREFIX))
    overrides: dict[str, Any] = {}
    if not config.get(ENV_PREFIX + "SECRET_KEY") and app.secret_key:
        secret = app.secret_key
        overrides["secret_key"] = secret.decode() if isinstance(secret, bytes) else str(secret)
    return Settings.from_mapping(config, **overrides)


def _core() -> PageBridge:
    core: PageBridge = current_app.extensions[EXTENSION_KEY]
    return core


def _page() -> Page:
    """This request's Page, made on first use (a view calling the bridge, or a page response)."""
    page: Page | None = g.get(_PAGE)
    if page is None:
        environ = request.environ
        navigation = is_navigation(environ.get("HTTP_SEC_FETCH_DEST"))
        page = _core().open_page(lambda: RequestView.from_wsgi(environ), navigation=navigation)
        setattr(g, _PAGE, page)
    return page


def _serve_route() -> Response:
    core = _core()
    limit = core.endpoint.max_body_bytes
    length = request.content_length or 0
    body = request.get_data(cache=False) if length <= limit else b"\0" * (limit + 1)
    reply = core.handle(RequestView.from_wsgi(request.environ), body)
    return Response(reply.body, status=reply.status, headers=list(reply.headers))


def _finish_page(response: Response) -> Response:
    """Insert the snippet into an HTML page and add the cookies the request earned. One hook,
    tested cheapest first: a JSON response that never touched the bridge costs a dict look-up
    and a string comparison."""
    if (request.endpoint or "").startswith("capi_bridge_"):
        return response  # our own routes: never a page to put the pixel in (the inspector)
    page: Page | None = g.get(_PAGE)
    ctype = response.headers.get("Content-Type", "")
    if (
        ctype.startswith(("text/html", "application/xhtml+xml"))
        and request.method == "GET"
        and is_navigation(request.environ.get("HTTP_SEC_FETCH_DEST"))
        and _core().settings.auto_inject
        and (page is None or not page.placed)
        and not response.direct_passthrough
        and should_inject(response.status_code, [(k.lower(), v) for k, v in response.headers])
    ):
        page = _page()
        if response.is_streamed:
            original = response.response
            chunks = response.iter_encoded()
            response.response = _streamed(chunks, Injector(page.snippet_bytes()), original)
            response.headers.pop("Content-Length", None)
        else:
            body, injected = inject_once(response.get_data(), page.snippet_bytes())
            if injected:
                response.set_data(body)
    if page is not None and page.navigation:
        for name, value in page.response_headers():
            response.headers.add(name, value)
    return response


def _streamed(chunks: Iterable[bytes], injector: Injector, original: object) -> Iterator[bytes]:
    """A streamed body with the snippet inserted; buffers only up to ``</head>``."""
    try:
        for chunk in chunks:
            out = injector.feed(chunk)
            if out:
                yield out
        tail = injector.finish()
        if tail:
            yield tail
    finally:
        close = getattr(original, "close", None)
        if close is not None:  # WSGI: the app's iterable is always closed
            close()
