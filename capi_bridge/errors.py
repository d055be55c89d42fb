"""The exceptions capi-bridge raises.

Every error names the setting, field or input at fault and says how to fix it, because the person
reading it is usually a web developer who has never seen the Conversions API's error codes.
All of them derive from :class:`CapiBridgeError`, so one ``except`` catches everything ours.
"""

from __future__ import annotations

from collections.abc import Sequence


class CapiBridgeError(Exception):
    """Base class of every exception raised by capi-bridge."""


class ConfigError(CapiBridgeError, ValueError):
    """A setting is missing or malformed; raised at start-up, never per request.

    ``setting`` is the name the user wrote it under (``CAPI_BRIDGE_LINGER``, Flask's
    ``SECRET_KEY``, a keyword ``linger``...); ``field`` is the :class:`Settings` field it maps to
    (``linger``), the same whatever the source, for code that reacts to a particular setting.
    """

    def __init__(self, setting: str, problem: str, fix: str, *, field: str | None = None) -> None:
        self.setting = setting
        self.problem = problem
        self.fix = fix
        self.field = field
        super().__init__(f"{setting}: {problem}. Fix: {fix}")


class InvalidUserData(CapiBridgeError, ValueError):
    """A customer-information value cannot be normalized the way Meta requires.

    Raised instead of hashing a value Meta would never match: a wrong hash is silent data loss.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"user_data.{field}: {problem}")


class InvalidEvent(CapiBridgeError, ValueError):
    """An event Meta would reject; ``problems`` lists every fault, one line each.

    From :meth:`~capi_bridge.bridge.Bridge.enqueue_many`, ``events`` also maps the index of each
    invalid event to its own problems (unprefixed), for callers that answer per event.
    """

    def __init__(
        self, problems: Sequence[str], *, events: dict[int, list[str]] | None = None
    ) -> None:
        self.problems = list(problems)
        self.events = events or {}
        super().__init__("invalid event: " + "; ".join(self.problems))
