"""This machine's clock against Meta's: the ``Date`` header of every Graph API answer.

Every event is dated with the local clock (``event_time``), and Meta judges it with its own:
older than 7 days it is rejected, in the future it is refused or misattributed. A server whose
clock is off by days (a VM restored from a snapshot, a container without NTP, a dead RTC
battery) would see its events dead-lettered as too old, or sent "from the future", with no
other sign. Each answer of the Graph API carries Meta's time in its ``Date`` header, so every
request measures the difference for free; a difference over :data:`SKEW_LIMIT` is logged once
as a WARNING with the fix, and the latest reading is shown by ``capi-bridge check``,
``Bridge.stats()`` / ``capi-bridge outbox stats`` and the inspector.

``Date`` has one-second resolution and is stamped before the answer travels back, so a reading
is accurate to a second or two plus the request's latency: far below the limit, which is about
hours and days, not seconds. The delivery code does not correct ``event_time`` by the reading:
a wrong clock is the machine's fault to fix, and a silent correction would hide it.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from capi_bridge.json_record import JsonRecord

logger = logging.getLogger("capi_bridge.clock")

#: A difference beyond this (seconds, either way) is reported: Meta's own tolerance for
#: timestamps is coarse, but five minutes is already far beyond what NTP leaves.
SKEW_LIMIT = 300.0
#: A new reading is passed on (stored for ``stats()``) when it moved this much, or ...
_MOVED = 30.0
#: ... when the last one passed on is this old, so a reading's time stays recent.
_REFRESH = 3600.0

FIX = (
    "events carry this clock's time (event_time), so Meta rejects them as too old or from the "
    "future. Fix the machine's clock: turn on NTP (timedatectl set-ntp true, or chrony)"
)


@dataclasses.dataclass(frozen=True)
class ClockSkew(JsonRecord):
    """One reading: Meta's clock minus this machine's, in seconds (positive: ours is behind),
    taken at local time ``at`` on ``host``."""

    seconds: float
    at: float
    host: str = ""

    @property
    def off(self) -> bool:
        """Whether the difference exceeds :data:`SKEW_LIMIT`."""
        return abs(self.seconds) > SKEW_LIMIT

    def describe(self) -> str:
        """``4 days behind Meta's`` / ``within 2 s of Meta's``, for a line of output."""
        if not self.off:
            return f"within {max(1, round(abs(self.seconds)))} s of Meta's"
        direction = "behind" if self.seconds > 0 else "ahead of"
        return f"{_span(abs(self.seconds))} {direction} Meta's"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the verdict, the sentence and, when off, the fix (the inspector
        shows them)."""
        verdict = {"off": self.off, "text": self.describe(), "fix": FIX if self.off else None}
        return {**dataclasses.asdict(self), **verdict}


def _span(seconds: float) -> str:
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{round(seconds / 86400)} days"


def measure(date_header: str | None, received: float) -> float | None:
    """Meta's time (``Date``) minus ``received`` (local), or None without a usable header."""
    if not date_header:
        return None
    try:
        when = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a header without a zone is not one
        return None
    return when.timestamp() - received


class ClockWatch:
    """The latest reading of one Graph client (the dispatcher's, or ``check``'s).

    Thread-safe. Warns once when a reading is off, and once more (INFO) if the clock comes
    back in step. ``on_reading`` (the :class:`~capi_bridge.bridge.Bridge` storing it for
    ``stats()``) is called with the first reading and then only when the reading moved or aged,
    never once per request.
    """

    def __init__(
        self,
        on_reading: Callable[[ClockSkew], None] | None = None,
        *,
        log: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``log=False`` for a caller that reports the reading itself (``capi-bridge check``)."""
        self.latest: ClockSkew | None = None
        self._on_reading = on_reading
        self._log = log
        self._clock = clock
        self._passed: ClockSkew | None = None
        self._warned = False
        self._lock = threading.Lock()

    def observe(self, date_header: str | None) -> ClockSkew | None:
        """Record the reading an answer's ``Date`` gives; None when it has none."""
        now = self._clock()
        seconds = measure(date_header, now)
        if seconds is None:
            return None
        reading = ClockSkew(seconds, now, socket.gethostname())
        with self._lock:
            self.latest = reading
            warn = reading.off and not self._warned
            settled = self._warned and not reading.off
            if warn or settled:
                self._warned = warn
            passed = self._passed
            pass_on = (
                passed is None
                or abs(reading.seconds - passed.seconds) >= _MOVED
                or reading.at - passed.at >= _REFRESH
            )
            if pass_on:
                self._passed = reading
        if warn and self._log:
            logger.warning(
                "capi-bridge: this machine's clock is %s (the Graph API's Date header); %s",
                reading.describe(),
                FIX,
            )
        elif settled and self._log:
            logger.info("capi-bridge: this machine's clock is %s again", reading.describe())
        if pass_on and self._on_reading is not None:
            self._on_reading(reading)
        return reading
