"""Flask extension: ``capi = CapiBridge(app)`` or ``capi.init_app(app)`` in an app factory.

Follows Flask's extension guide: configuration comes from ``app.config`` (``CAPI_BRIDGE_*``,
falling back to the same environment variables), per-app state lives in
``app.extensions["capi_bridge"]`` (a :class:`~capi_bridge.pages.PageBridge`) and the extension
object keeps no app, so one ``CapiBridge`` serves several apps.

It is the WSGI middleware plus Flask conveniences: ``init_app`` wraps ``app.wsgi_app`` with
:class:`capi_bridge.wsgi.CapiBridgeMiddleware` (as Flask's docs hook any WSGI middleware), so
injection, cookies and our routes follow one code path, the response core's. A compressing
extension that encodes the page inside Flask (Flask-Compress) hides it from the middleware;
``{{ capi_pixel() }}`` in the base template places the snippet then. A bad setting fails in
``init_app``, naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app, request
from markupsafe import Markup

from capi_bridge.assembly import build_core
from capi_bridge.bridge import Bridge
from capi_bridge.pages import PAGE_ENVIRON_KEY, Page, PageBridge
from capi_bridge.request import RequestView
from capi_bridge.settings import ENV_PREFIX, Settings, env
from capi_bridge.snippet import ConsentCheck
from capi_bridge.wsgi import CapiBridgeMiddleware, wsgi_nonce

__all__ = ["EXTENSION_KEY", "CapiBridge", "capi_pixel"]

EXTENSION_KEY = "capi_bridge"


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
        """Read and check the settings, wrap ``app.wsgi_app``, add ``capi_pixel()`` to Jinja."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "capi-bridge is already set up on this app: call init_app once per app"
            )
        core = build_core(
            settings=self._settings or _settings_from(app),
            bridge=self._bridge,
            consent_check=self._consent_check,
            debug=app.debug,
        )
        app.extensions[EXTENSION_KEY] = core
        app.wsgi_app = CapiBridgeMiddleware(app.wsgi_app, core=core)  # type: ignore[method-assign]
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
        of this request, hashed server-side. A value that is not what its key needs
        (``em="jane@intranet"``) is dropped with a warning naming the key; an unknown key
        raises (see :meth:`Page.identify`)."""
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
        """The CSP nonce for this response's ``<script>`` tags (auto-injection included).
        Flask-Talisman's ``request.csp_nonce`` is used without this call."""
        _page().nonce = nonce


def capi_pixel(nonce: str | None = None) -> Markup:
    """Jinja global ``{{ capi_pixel() }}``: the snippet, placed where the template wants it."""
    page = _page()
    if not page.navigation:  # a fragment fetched by script gets no pixel
        return Markup("")
    return Markup(page.render(nonce or wsgi_nonce(request.environ)))  # render() escapes every value


def _settings_from(app: Flask) -> Settings:
    """``CAPI_BRIDGE_*`` from ``app.config`` and the environment; the secret key falls back to
    Flask's own ``SECRET_KEY``, and then errors about it name ``SECRET_KEY``, what the user set.
    The outbox defaults to the app's instance folder (created if missing, as Flask leaves it).
    """
    config: dict[str, Any] = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    config.update((k, v) for k, v in app.config.items() if k.startswith(ENV_PREFIX))
    folder = app.instance_path  # the default outbox goes there, when the app names none
    if config.get(ENV_PREFIX + "SECRET_KEY") or not app.secret_key:
        return Settings.from_mapping(config, outbox_folder=folder)
    key = app.secret_key
    secret = key if isinstance(key, str) else _key_text(key)

    def naming(field: str) -> str:
        return "SECRET_KEY" if field == "secret_key" else env(field)

    return Settings.from_mapping(config, naming=naming, secret_key=secret, outbox_folder=folder)


def _key_text(key: bytes) -> str:
    """A bytes key as text; ``os.urandom(24)`` is not UTF-8, and its hex is the same key."""
    try:
        return key.decode()
    except UnicodeDecodeError:
        return key.hex()


def _core() -> PageBridge:
    core: PageBridge = current_app.extensions[EXTENSION_KEY]
    return core


def _page() -> Page:
    """This request's Page: the middleware's for a navigation, else one made now for a fetch
    or XHR call (which sets no cookie: its response passed the middleware untouched)."""
    environ = request.environ
    page = environ.get(PAGE_ENVIRON_KEY)
    if not isinstance(page, Page):
        page = _core().open_page(lambda: RequestView.from_wsgi(environ), navigation=False)
        environ[PAGE_ENVIRON_KEY] = page
    return page
