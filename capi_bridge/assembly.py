"""The app-wide core with the tools its settings turn on: where the adapters get theirs.

:class:`~capi_bridge.pages.PageBridge` is the framework-neutral core and imports no tool; the
inspector is a tool (it reads the outbox for a person to look at). Adapters are the outer layer
that may know both, so they build their core here, and the inspector is mounted when
``settings.inspector`` is on. Imports point inward: adapters -> assembly -> pages, inspector.

Every middleware takes the same keyword arguments (``settings``, ``bridge``, ``consent_check``,
``core``) with the environment as fallback; :func:`build_core` turns them into one core, and a
bad setting or an outbox that cannot be opened into a :class:`~capi_bridge.errors.ConfigError`
naming the setting, so start-up fails loudly (pages never do).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping

from capi_bridge.bridge import Bridge
from capi_bridge.delivery.store import StoreError
from capi_bridge.drops import DropTally
from capi_bridge.errors import ConfigError
from capi_bridge.inspector import Inspector
from capi_bridge.pages import PageBridge
from capi_bridge.settings import Settings
from capi_bridge.snippet import ConsentCheck

__all__ = ["build_core"]


def build_core(
    settings: Settings | None = None,
    *,
    bridge: Bridge | None = None,
    consent_check: ConsentCheck | None = None,
    core: PageBridge | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
    debug: bool = False,
) -> PageBridge:
    """The :class:`PageBridge` a middleware serves: ``core`` as given, else one built from
    ``settings`` (else the ``CAPI_BRIDGE_*`` variables of ``environ``, default ``os.environ``),
    with the inspector when it is enabled. ``debug``: the framework runs in debug mode (no
    start-up warning about a missing ``allowed_hosts``). Raises :class:`ConfigError` naming
    the setting at fault, the outbox's included."""
    if core is not None:
        return core
    if settings is None:
        settings = Settings.from_env(environ)
    try:
        return PageBridge(
            settings,
            bridge=bridge,
            consent_check=consent_check,
            clock=clock,
            inspector=_inspector,
            debug=debug,
        )
    except (OSError, sqlite3.Error, StoreError) as exc:
        field = "outbox_url" if settings.outbox_url else "outbox_path"
        raise ConfigError(
            settings.name_of(field),
            f"the outbox {settings.store_url!r} cannot be opened ({exc})",
            "create its folder, or point it at a file the app's user may write (a PostgreSQL "
            "outbox: check that the database answers and the user may create the schema)",
            field=field,
        ) from None


def _inspector(
    settings: Settings, bridge: Bridge, drops: DropTally, clock: Callable[[], float]
) -> Inspector:
    return Inspector(settings, bridge, drops=drops, clock=clock)
