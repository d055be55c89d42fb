"""Django settings for capi-bridge, read lazily, and the one core per process built from them.

``settings.CAPI_BRIDGE`` is a dict of the ``CAPI_BRIDGE_*`` names without the prefix
(``{"PIXEL_ID": ..., "ACCESS_TOKEN": ...}``), Django's way (``DEBUG_TOOLBAR_CONFIG``,
``REST_FRAMEWORK``); environment variables fill what it leaves out (or sets to None), and the
secret key that signs page tokens defaults to Django's ``SECRET_KEY``. ``CONSENT_CHECK`` may
name a function
(``"myapp.consent.allowed"``) that decides consent from a :class:`~capi_bridge.request.RequestView`.

The :class:`~capi_bridge.pages.PageBridge` is built on first use in each process (the middleware
builds it when Django loads the middleware chain), never in ``AppConfig.ready()``, which may run
twice and before a server forks its workers; the delivery dispatcher itself starts with the
first event of each process. ``override_settings`` (the test framework's ``setting_changed``
signal) drops the core, which the next request rebuilds.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from capi_bridge.assembly import build_core
from capi_bridge.errors import ConfigError
from capi_bridge.pages import PageBridge
from capi_bridge.settings import ENV_PREFIX, Settings

#: The Django setting that holds capi-bridge's own.
SETTING = "CAPI_BRIDGE"
_lock = threading.Lock()
_core: PageBridge | None = None


def configured() -> dict[str, Any]:
    """``settings.CAPI_BRIDGE`` as a dict (empty when unset); fails naming it if not a dict."""
    value = getattr(django_settings, SETTING, None)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            SETTING,
            f"is a {type(value).__name__}, not a dict",
            'write CAPI_BRIDGE = {"PIXEL_ID": "...", "ACCESS_TOKEN": "..."} in settings.py',
        )
    return dict(value)


def read_settings(environ: Mapping[str, str] | None = None) -> tuple[Settings, Any]:
    """The :class:`Settings` (and consent check) from ``CAPI_BRIDGE``, then ``CAPI_BRIDGE_*``
    variables, with ``SECRET_KEY`` as the default secret. Raises :class:`ConfigError` naming
    the key as the project writes it."""
    environ = os.environ if environ is None else environ
    mine = configured()
    check = mine.pop("CONSENT_CHECK", None)
    values: dict[str, Any] = {k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)}
    values.update((ENV_PREFIX + str(k).upper(), v) for k, v in mine.items() if v is not None)
    overrides: dict[str, Any] = {}
    secret = getattr(django_settings, "SECRET_KEY", None)
    if not values.get(ENV_PREFIX + "SECRET_KEY") and secret:
        overrides["secret_key"] = str(secret)
    base_dir = getattr(django_settings, "BASE_DIR", None)  # startproject's: db.sqlite3's folder
    if isinstance(base_dir, (str, os.PathLike)):
        overrides["outbox_folder"] = base_dir  # the default outbox's place, when none is set
    try:
        settings = Settings.from_mapping(values, **overrides)
        consent_check = import_string(check) if isinstance(check, str) else check
    except ConfigError as exc:
        raise _named(exc, mine) from None
    except ImportError as exc:
        raise ConfigError(
            f'{SETTING}["CONSENT_CHECK"]',
            f"cannot be imported ({exc})",
            "give the dotted path of a function taking a RequestView and returning a bool",
        ) from None
    return settings, consent_check


def _named(exc: ConfigError, mine: Mapping[str, Any]) -> ConfigError:
    """The error naming ``CAPI_BRIDGE["KEY"]`` when the key came from settings.py."""
    key = exc.setting[len(ENV_PREFIX) :] if exc.setting.startswith(ENV_PREFIX) else ""
    if key and key in {str(k).upper() for k in mine}:
        return ConfigError(f'{SETTING}["{key}"]', exc.problem, exc.fix)
    if key:
        return ConfigError(f'{SETTING}["{key}"] (or {exc.setting})', exc.problem, exc.fix)
    return exc


def core() -> PageBridge:
    """This process's core, built on first use; a bad setting raises ImproperlyConfigured
    naming it (the server does not start)."""
    found = _core
    if found is not None:
        return found
    return _build()


def _build() -> PageBridge:
    global _core
    with _lock:
        if _core is None:
            try:
                settings, consent_check = read_settings()
                debug = bool(getattr(django_settings, "DEBUG", False))
                _core = build_core(settings=settings, consent_check=consent_check, debug=debug)
            except ConfigError as exc:
                raise ImproperlyConfigured(f"capi-bridge: {exc}") from None
        return _core


def reset(*, setting: str, **kwargs: Any) -> None:
    """``setting_changed`` receiver: a changed ``CAPI_BRIDGE`` or ``SECRET_KEY`` takes effect
    on the next request (the old core is closed without waiting)."""
    global _core
    if setting not in (SETTING, "SECRET_KEY"):
        return
    with _lock:
        old, _core = _core, None
    if old is not None:
        old.close(timeout=0)
