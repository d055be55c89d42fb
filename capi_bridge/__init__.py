"""capi-bridge: Meta's redundant setup (Pixel + Conversions API) for Python web apps.

Public names are imported lazily (PEP 562), so ``import capi_bridge`` stays cheap and an app that
only uses the WSGI middleware never imports the async HTTP stack it does not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from capi_bridge._version import __version__

_EXPORTS: dict[str, str] = {
    "AsyncGraphClient": "capi_bridge.graph",
    "Bridge": "capi_bridge.bridge",
    "CapiBridgeError": "capi_bridge.errors",
    "ConfigError": "capi_bridge.errors",
    "Content": "capi_bridge.events",
    "CustomData": "capi_bridge.events",
    "Event": "capi_bridge.events",
    "GraphClient": "capi_bridge.graph",
    "GraphError": "capi_bridge.graph",
    "GraphResult": "capi_bridge.graph",
    "InvalidEvent": "capi_bridge.errors",
    "InvalidUserData": "capi_bridge.errors",
    "STANDARD_EVENTS": "capi_bridge.events",
    "Settings": "capi_bridge.settings",
    "UserData": "capi_bridge.events",
    "hash_user_data": "capi_bridge.normalize",
    "new_event_id": "capi_bridge.events",
    "normalize": "capi_bridge.normalize",
    "validate_event": "capi_bridge.validation",
}

__all__ = [
    "STANDARD_EVENTS",
    "AsyncGraphClient",
    "Bridge",
    "CapiBridgeError",
    "ConfigError",
    "Content",
    "CustomData",
    "Event",
    "GraphClient",
    "GraphError",
    "GraphResult",
    "InvalidEvent",
    "InvalidUserData",
    "Settings",
    "UserData",
    "__version__",
    "hash_user_data",
    "new_event_id",
    "normalize",
    "validate_event",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from capi_bridge.bridge import Bridge
    from capi_bridge.errors import CapiBridgeError, ConfigError, InvalidEvent, InvalidUserData
    from capi_bridge.events import (
        STANDARD_EVENTS,
        Content,
        CustomData,
        Event,
        UserData,
        new_event_id,
    )
    from capi_bridge.graph import AsyncGraphClient, GraphClient, GraphError, GraphResult
    from capi_bridge.normalize import hash_user_data, normalize
    from capi_bridge.settings import Settings
    from capi_bridge.validation import validate_event


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'capi_bridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
