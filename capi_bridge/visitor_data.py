"""A visitor's customer information, checked so that tracking never breaks the app.

``<input type=email>`` accepts ``jane@intranet``; Meta does not. Such a value is the visitor's,
not a bug in the app, so raising (a 500 at checkout) is the wrong answer: the field is dropped,
the event goes out with the rest, a warning names the field (never the value, which is personal
data; once a minute per field and reason, saying how many it left out: :class:`DropWarnings`),
and every drop is noted for the inspector and diagnostics. Programming errors still raise:
a key Meta does not know (``email=`` for ``em=``) or a value of the wrong type. ``strict``
settings (``CAPI_BRIDGE_STRICT``) make data problems raise too, for the app's own tests, with
the same value-free reason.

The same holds for a whole server event Meta would refuse because of the request alone: a
client that sends no User-Agent, no cookie and no public address leaves nothing to match on.
Anyone can send such a request to a checkout, so ``track()`` does not raise for it (a 500 and a
traceback in the app's log per request): the event is not stored, and a warning says so, once a
minute per event name (:func:`refused_by_visitor`).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from capi_bridge.bounded import Recent
from capi_bridge.errors import InvalidUserData
from capi_bridge.normalize import HASHED_FIELDS, PLAIN_FIELDS, normalize

logger = logging.getLogger("capi_bridge.pages")

#: Why a visitor's value was dropped, worded without the value (logs never carry user data).
REASONS = {
    "em": "is not an e-mail address",
    "ph": "is not a phone number with a country calling code",
    "fn": "is not a first name",
    "ln": "is not a last name",
    "ct": "is not a city",
    "st": "is not a state or province",
    "zp": "is not a postal code",
    "country": "is not a country",
    "db": "is not a date of birth",
    "ge": "is not a gender Meta accepts (m or f)",
}


class DropWarnings:
    """The warning about a dropped visitor value, at most once per field and reason every
    ``interval`` seconds in this process; the next one says how many were left out. One
    visitor's bad address is worth a line, the same mistake on every checkout is not worth a
    line per request (the inspector and diagnostics still count every drop). The state is one
    small entry per (field, reason): a handful, whatever the traffic."""

    def __init__(
        self, interval: float = 60.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._seen: Recent[tuple[float, int]] = Recent(256)

    def warn(self, field: str, reason: str) -> None:
        now = self._clock()

        def step(last: tuple[float, int] | None) -> tuple[tuple[float, int], int | None]:
            if last is not None and now - last[0] < self.interval:
                return (last[0], last[1] + 1), None  # said recently: count it, say nothing
            return (now, 0), (0 if last is None else last[1])

        left_out = self._seen.change(f"{field}\n{reason}", step)
        if left_out is None:
            return
        since = f"; {left_out} more dropped since the last warning" if left_out else ""
        logger.warning(
            "capi-bridge: user_data.%s %s; dropped, the events go out without it "
            "(CAPI_BRIDGE_STRICT=true raises instead; said once a minute per field%s)",
            field,
            reason,
            since,
        )


#: This process's drop warnings (every app in it: the log is the process's).
DROP_WARNINGS = DropWarnings()


def visitor_value(
    field: str,
    value: Any,
    *,
    country: str | None,
    strict: bool,
    dropped: dict[str, str],
    warnings: DropWarnings | None = None,
) -> Any:
    """``value`` normalized for ``field`` (a list item by item); None when it carries nothing
    or was dropped, in which case ``dropped[field]`` says why (every time: the inspector and
    diagnostics count each drop) and ``warnings`` (default: :data:`DROP_WARNINGS`) logs it,
    once a minute per field and reason. Raises ``ValueError`` for an unknown key,
    ``TypeError`` for a wrong type, and ``InvalidUserData`` when ``strict``."""
    if field not in HASHED_FIELDS and field not in PLAIN_FIELDS:
        raise ValueError(
            f"{field!r} is not a Meta customer-information key; "
            f"use one of {sorted(HASHED_FIELDS | PLAIN_FIELDS)}"
        )
    if isinstance(value, (list, tuple)):
        kept = [
            visitor_value(
                field, item, country=country, strict=strict, dropped=dropped, warnings=warnings
            )
            for item in value
            if item is not None
        ]
        return [item for item in kept if item is not None] or None
    if field == "db" and isinstance(value, datetime.date):
        value = value.strftime("%Y%m%d")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        kind = type(value).__name__
        raise TypeError(f"user_data {field!r} must be text (or a number), not {kind}")
    if field in PLAIN_FIELDS:
        return value
    try:
        return normalize(field, str(value), country=country) or None
    except InvalidUserData:
        reason = REASONS.get(field, "cannot be normalized the way Meta requires")
        if strict:
            raise InvalidUserData(field, reason) from None
        (DROP_WARNINGS if warnings is None else warnings).warn(field, reason)
        dropped[field] = reason
        return None


#: Meta's refusals the request alone can cause (the first words of ``validation.py``'s): no
#: User-Agent, or nothing to match the visitor on (no cookie, no public address, no user data).
VISITOR_REFUSALS = (
    "user_data is required and must hold",
    "user_data.client_user_agent is required",
    "user_data holds too little customer information",
)


def refused_by_visitor(
    event_name: str, problems: Sequence[str], *, strict: bool, warned: Recent[float]
) -> bool:
    """Whether every one of ``problems`` is the request's doing (not the app's): then the
    event is dropped with a warning (at most once a minute per event name, remembered in the
    app's ``warned``) instead of raising, unless ``strict``."""
    if strict or not problems or not all(p.startswith(VISITOR_REFUSALS) for p in problems):
        return False
    now = time.monotonic()

    def step(last: float | None) -> tuple[float, bool]:
        return (last, False) if last is not None and now - last < 60 else (now, True)

    if warned.change(event_name[:50], step):
        logger.warning(
            "capi-bridge: a %s server event was not stored: %s (the request had no "
            "User-Agent, cookie or public address to match the visitor on; said once a minute)",
            event_name[:50],
            problems[0],
        )
    return True
