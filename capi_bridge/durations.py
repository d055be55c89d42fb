"""Durations as people write them: ``90s``, ``15m``, ``24h``, ``7d``, or a plain number of seconds.

One parser serves every duration capi-bridge reads, settings (``CAPI_BRIDGE_HELD_TTL=24h``)
and command-line options (``--older-than 7d``) alike, so a unit learnt in one place works in all
of them and no option counts in hours while its neighbour counts in seconds. The syntax is
deliberately small (one number, one optional unit, no signs, no ``inf``): a duration that
``float()`` would accept, such as ``inf`` or ``1e9``, is exactly what a configuration mistake
looks like.
"""

from __future__ import annotations

import re

#: Seconds per unit; a number without a unit is seconds.
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: How help texts and error messages describe the syntax.
SYNTAX = "90s, 15m, 24h or 7d (a plain number is seconds)"

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)[ ]?([smhd]?)", re.ASCII)


def parse_duration(text: str, *, unit_required: bool = False) -> float:
    """Seconds in ``text``; raises ``ValueError`` saying how to write it.

    ``unit_required`` refuses a bare number, for options whose bare numbers once meant
    something other than seconds (a bare ``48`` must not silently shrink from hours to seconds).
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration; write it as {SYNTAX}")
    number, unit = match.groups()
    if unit_required and not unit:
        raise ValueError(f"{text!r} has no unit; write it as 90s, 15m, 24h or 7d")
    return float(number) * UNITS[unit or "s"]


def format_duration(seconds: float) -> str:
    """The form people read best that :func:`parse_duration` reads back: ``48h``, ``7d``, ``90s``.

    Days only from a week up (``48h`` reads better than ``2d`` for Meta's dedup window).
    """
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0 and (unit != "d" or seconds >= 7 * size):
            return _number(seconds / size) + unit
    return _number(seconds) + "s"


def _number(value: float) -> str:
    """Fixed-point, trailing zeros dropped: ``%g`` would write a large value as ``1e+06``."""
    return f"{value:.3f}".rstrip("0").rstrip(".")
