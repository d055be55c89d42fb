"""The app-wide core with the tools its settings turn on: where the adapters get theirs.

:class:`~capi_bridge.pages.PageBridge` is the framework-neutral core and imports no tool; the
inspector is a tool (it reads the outbox for a person to look at). Adapters are the outer layer
that may know both, so they build their core here, and the inspector is mounted when
``settings.inspector`` is on. Imports point inward: adapters -> assembly -> pages, inspector.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from capi_bridge.bridge import Bridge
from capi_bridge.inspector import Inspector
from capi_bridge.pages import PageBridge
from capi_bridge.settings import Settings
from capi_bridge.snippet import ConsentCheck


def build_core(
    settings: Settings,
    *,
    bridge: Bridge | None = None,
    consent_check: ConsentCheck | None = None,
    clock: Callable[[], float] = time.time,
) -> PageBridge:
    """A :class:`PageBridge` for ``settings``, with the inspector when it is enabled."""
    return PageBridge(
        settings,
        bridge=bridge,
        consent_check=consent_check,
        clock=clock,
        inspector=_inspector,
    )


def _inspector(settings: Settings, bridge: Bridge, clock: Callable[[], float]) -> Inspector:
    return Inspector(settings, bridge, clock=clock)
