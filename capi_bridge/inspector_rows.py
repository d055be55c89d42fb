"""Pairing observations into the inspector's rows: one per event id, its two copies side by side.

A redundant setup works when every event reaches Meta twice, from the pixel and through CAPI,
with the same name and id. Each row says which copies capi-bridge saw and flags what would keep
Meta from deduplicating or matching them, naming the cause (peers spec §3, complaints 1 and 5):

* **browser copy** (the pixel call): a mirror post from capi-bridge.js (which called ``fbq``
  with that name and id just before, or saw the page's own ``fbq`` call with them), or a pixel
  twin a rendered page fired;
* **server copy** (CAPI): the mirror's own server copy, or a server-originated event
  (``track()``, ``Bridge.enqueue``). Events the mirror ignored or refused are not rows: they are
  counted by name and reason (:mod:`capi_bridge.drops`), listed apart.

The pair deduplicates when both copies exist with the same name. Flags: one id under several
names, one copy only, copies carrying different ``fbp``, and a visitor's value dropped as
invalid (a note, not a copy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from capi_bridge.delivery.records import Outcome, Seen
from capi_bridge.observations import (
    BROWSER,
    NOTE,
    PIXEL_KEYS,
    SERVER,
    TWIN,
    key_labels,
    previews,
)

#: A server event's pixel twin fires on the next page within this long (pages.PENDING_MAX_AGE).
TWIN_WAIT = 600.0
#: Worst first: the state a row shows when its pixels' copies differ.
_ORDER = ("dead", "retrying", "in flight", "pending", "held", "delivered", "settled")
_PIXEL_PREVIEWS = ("fbp", "fbc", "ip", "ua")

Outcomes = Callable[[Iterable[tuple[str, str, str]]], Mapping[tuple[str, str, str], Outcome]]


def group(seen: Iterable[Seen], limit: int) -> list[list[Seen]]:
    """Observations grouped by event id, the most recently active first, ``limit`` groups."""
    groups: dict[str, list[Seen]] = {}
    for item in seen:  # newest first
        bucket = groups.get(item.row.event_id)
        if bucket is None:
            if len(groups) >= limit:
                continue
            bucket = groups[item.row.event_id] = []
        bucket.append(item)
    return list(groups.values())


def build_rows(
    groups: Sequence[list[Seen]], outcomes: Outcomes, now: float
) -> list[dict[str, Any]]:
    """The inspector's rows (JSON-ready) for grouped observations."""
    keys = [
        (s.row.pixel_id, s.row.event_name, s.row.event_id)
        for items in groups
        for s in items
        if _server_side(s)
    ]
    found = outcomes(keys)
    return [_row(items, found, now) for items in groups]


def _server_side(item: Seen) -> bool:
    return item.row.channel == SERVER or (item.row.channel == BROWSER and not item.row.problem)


def _row(
    items: list[Seen], found: Mapping[tuple[str, str, str], Outcome], now: float
) -> dict[str, Any]:
    oldest_first = items[::-1]
    browser = [s for s in oldest_first if s.row.channel in (BROWSER, TWIN)]
    server = [s for s in oldest_first if _server_side(s)]
    names = list(dict.fromkeys(s.row.event_name for s in oldest_first))
    first = oldest_first[0].row
    flags: list[str] = []
    notes: list[str] = []
    dedup = bool({s.row.event_name for s in browser} & {s.row.event_name for s in server})
    if len(names) > 1:
        flags.append(
            f"one id under several names ({', '.join(names)}): Meta deduplicates only copies "
            "with the same event name and id"
        )
    if browser and not server:
        refused = next((s.row.problem for s in browser if s.row.problem), None)
        flags.append(
            f"the server copy was refused: {refused}"
            if refused
            else "pixel copy only: no server copy with this id"
        )
    if server and not browser:
        waiting = any(s.row.twin for s in server) and now - server[0].row.at < TWIN_WAIT
        if waiting:
            notes.append("waiting for the pixel twin: the next page this browser renders fires it")
        else:
            flags.append(
                "server copy only: no pixel call with this id (track(pixel=False), a track() "
                "from fetch() without capiBridge.track(name, data, {eventID: id}), or a page "
                "never rendered)"
            )
    for problem in dict.fromkeys(s.row.problem for s in oldest_first if s.row.channel == NOTE):
        flags.append(f"sent without a visitor's value: {problem}")
    fbp_flag = _fbp_disagreement(browser, server)
    if fbp_flag:
        flags.append(fbp_flag)
    if any(s.row.channel == BROWSER and s.row.pixel_loaded == 0 for s in browser):
        notes.append(
            "fbevents.js did not load in this browser (an ad blocker, or a network error): "
            "only the server copy reaches Meta"
        )
    state, reply = _state(server, found)
    return {
        "event_id": first.event_id,
        "event_name": (server[0] if server else oldest_first[0]).row.event_name,
        "names": names,
        "first_at": min(s.row.at for s in items),
        "last_at": max(s.row.at for s in items),
        "pixels": sorted({s.row.pixel_id for s in items}),
        "browser": _browser_copy(browser),
        "server": _server_copy(server),
        "dedup": dedup,
        "state": state,
        "reply": reply,
        "flags": flags,
        "notes": notes,
    }


def _fbp_disagreement(browser: list[Seen], server: list[Seen]) -> str | None:
    """Different ``fbp`` on the two copies (compared by hash): Meta then sees two browsers."""
    served = {s.row.fbp_hash for s in server if s.row.channel == SERVER}
    pixel = {s.row.fbp_hash for s in browser}
    if not served or not pixel:
        return None  # a mirrored event's two copies share the post's cookies
    if None in served and pixel - {None}:
        return "the server copy has no fbp while the pixel copy has one"
    if (pixel - {None}) and (served - {None}) and not (pixel & served):
        return (
            "fbp differs between the pixel copy and the server copy: Meta sees two browsers "
            "(was the server event tracked before the _fbp cookie reached this browser?)"
        )
    return None


def _browser_copy(items: list[Seen]) -> dict[str, Any] | None:
    if not items:
        return None
    item = items[0].row
    loaded = [s.row.pixel_loaded for s in items if s.row.pixel_loaded is not None]
    shown = previews(item.preview)
    return {
        "seen": True,
        "via": "pixel twin" if item.channel == TWIN else "capi-bridge.js",
        "pixel_loaded": (max(loaded) == 1) if loaded else None,
        "keys": key_labels(item.keys & PIXEL_KEYS),
        "preview": {k: v for k, v in shown.items() if k in _PIXEL_PREVIEWS},
    }


def _server_copy(items: list[Seen]) -> dict[str, Any] | None:
    if not items:
        return None
    item = items[0].row
    return {
        "seen": True,
        "via": "mirror" if item.channel == BROWSER else "server",
        "keys": key_labels(item.keys),
        "preview": previews(item.preview),
    }


def _state(
    server: list[Seen], found: Mapping[tuple[str, str, str], Outcome]
) -> tuple[str, dict[str, Any] | None]:
    if not server:
        return "not sent", None
    outcomes = [
        found.get((s.row.pixel_id, s.row.event_name, s.row.event_id), Outcome("settled"))
        for s in server
    ]
    worst = min(outcomes, key=lambda o: _ORDER.index(o.state) if o.state in _ORDER else 0)
    reply = None
    if worst.fbtrace_id or worst.message or worst.events_received is not None:
        reply = {
            "fbtrace_id": worst.fbtrace_id,
            "events_received": worst.events_received,
            "batch_size": worst.batch_size,
            "message": worst.message,
            "code": worst.code,
            "subcode": worst.subcode,
        }
    return worst.state, reply
