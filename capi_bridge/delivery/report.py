"""Diagnostics: how well the redundant setup works, per event name, from the observations.

This module is the figures' model and arithmetic; the store computes the aggregates
(:meth:`~capi_bridge.delivery.store.Store.figures`) and :mod:`capi_bridge.diagnostics` (a tool)
prints them.

Events Manager reports deduplication and match quality a day late and per account; these
figures come from what capi-bridge itself saw, across every worker process, over a window
(``Bridge.diagnostics(window)``, ``{inspector_path}/diagnostics``, ``capi-bridge
diagnostics``). Counts and key presence only: no user data is read or returned.

Definitions (per event name, over the window; an *event* is one (event_name, event_id), whatever
the number of pixels it went to; events held for consent count once released):

* ``count``: distinct event ids;
* **browser copy**: a mirror post from capi-bridge.js (it called ``fbq`` with that name and id)
  or a pixel twin fired by a rendered page; **server copy**: the mirror's own server copy
  (unless the mirror refused it as invalid) or a server-originated event (``track()``,
  ``Bridge.enqueue``). A server event with a twin therefore counts as browser + server;
* ``dedup.coverage``: of the events with a browser copy, the share that also have a server copy
  with the same name and id, which is Meta's "event coverage" of a redundant setup
  (pixel-capi.md §3.3, Dataset Quality API: the share of pixel events covered by CAPI). Browser
  events the mirror ignored or refused (:mod:`capi_bridge.drops`: crawlers, headless browsers,
  unknown event names, events Meta would reject) count as browser copies without a server copy
  (``dedup.not_mirrored``); ``trackSingle`` calls to pixels the site does not configure do not;
* ``key_share``: of the events with a server copy, the share whose server copy carries each
  match key (what CAPI sends and Meta scores);
* ``fbc_age``: seconds from the ad click (the time in ``fbc``) to the event, server copies;
* ``refused``: events whose server copy the mirror refused as invalid, and dead letters (Meta
  rejected them, or they expired), by reason;
* ``ignored``: browser events the mirror ignored, by reason (see ``drops.REASONS``);
* ``dropped``: events sent without a user_data key the app gave, because the visitor's value
  was invalid (``identify(em="jane@intranet")``), by key and reason;
* ``emq_estimate``: see :data:`EMQ_WEIGHTS`.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from capi_bridge import drops
from capi_bridge.delivery.store import Store
from capi_bridge.observations import KEYS

#: Weights of the match-quality **estimate**, on Meta's 0-10 scale: score = 10 x sum(weight of
#: each key present) / sum(all weights), averaged over the events. Meta publishes no numeric
#: weights (pixel-capi.md §4, [UNDOC]); these follow the priority table of Meta's Business Help
#: Center "About Event Match Quality" as quoted in pixel-capi.md §4 (High = 3: em, fbc; Medium =
#: 2: ph, external_id, fbp; Low = 1: fn, ln, ct, zp...). The IP address, absent from that table,
#: gets 2: Meta's Best Practices name it among "high-quality customer information parameters",
#: while the Dataset Quality API's example uplift for it (20.65 %) is a third of e-mail's
#: (58.96 %). The user agent gets 1: every website event must carry it, and Meta lists it for
#: matching but in no priority tier. Meta's real score also weighs the quality of each value and
#: the share of events it matched, which capi-bridge cannot see.
EMQ_WEIGHTS: dict[str, int] = {
    "em": 3,
    "fbc": 3,
    "ph": 2,
    "external_id": 2,
    "fbp": 2,
    "ip": 2,
    "ua": 1,
    "other": 1,
}
#: Shown under the inspector's diagnostics: public pages only, and README's section on them.
EMQ_SOURCE = (
    "Meta Business Help Center, 'About Event Match Quality' "
    "(facebook.com/business/help/765081237991954): its priority table (High: email, fbc; "
    "Medium: phone, external_id, fbp, birthdate, country; Low: first/last name, city, zip); "
    "Conversions API best practices (IP among the high-quality parameters); the Dataset Quality "
    "API's example uplifts (email 58.96 %, IP 20.65 %). Meta publishes no numeric weights; "
    "capi-bridge's README, 'Inspector and diagnostics', explains these."
)
EMQ_METHOD = (
    "10 x the weighted share of match keys present on the server copies (key presence only; "
    "Meta also weighs value quality and match rates, which are not visible here)."
)
#: fbc age buckets (upper bounds in seconds).
FBC_BUCKETS = (("< 1 h", 3600), ("1-24 h", 86400), ("1-7 d", 7 * 86400), ("7-28 d", 28 * 86400))

_LABELS = [label for _, label, _ in KEYS]


@dataclasses.dataclass(frozen=True)
class EventDiagnostics:
    """The figures of one event name (see the module docstring for each definition)."""

    event_name: str
    count: int
    server_copies: int
    browser_copies: int
    deduplicated: int
    server_only: int
    key_share: dict[str, float]
    pixel_loaded_reported: int
    pixel_loaded: int
    fbc_ages: tuple[int, ...]
    refused: tuple[dict[str, Any], ...]
    ignored: tuple[dict[str, Any], ...] = ()
    #: Browser events of the site's pixels the mirror ignored or refused (no server copy).
    not_mirrored: int = 0
    dropped: tuple[dict[str, Any], ...] = ()

    @property
    def coverage(self) -> float | None:
        seen = self.browser_copies + self.not_mirrored
        return self.deduplicated / seen if seen else None

    @property
    def emq_estimate(self) -> float | None:
        """Estimated match quality, 0-10 (see :data:`EMQ_WEIGHTS`); None without server copies."""
        if not self.server_copies:
            return None
        total = sum(EMQ_WEIGHTS.values())
        score = sum(EMQ_WEIGHTS[k] * share for k, share in self.key_share.items())
        return round(10 * score / total, 1)

    def as_dict(self) -> dict[str, Any]:
        ages = self.fbc_ages
        buckets = {label: 0 for label, _ in FBC_BUCKETS} | {">= 28 d": 0}
        for age in ages:
            label = next((name for name, bound in FBC_BUCKETS if age < bound), ">= 28 d")
            buckets[label] += 1
        loaded = self.pixel_loaded_reported
        return {
            "event_name": self.event_name,
            "count": self.count,
            "server_copies": self.server_copies,
            "key_share": self.key_share,
            "dedup": {
                "browser_events": self.browser_copies + self.not_mirrored,
                "with_server_copy": self.deduplicated,
                "coverage": self.coverage,
                "server_only": self.server_only,
                "not_mirrored": self.not_mirrored,
            },
            "pixel_loaded": {
                "reported": loaded,
                "loaded": self.pixel_loaded,
                "share": self.pixel_loaded / loaded if loaded else None,
            },
            "fbc_age": {
                "events": len(ages),
                "median": statistics.median(ages) if ages else None,
                "buckets": buckets,
            },
            "refused": list(self.refused),
            "ignored": list(self.ignored),
            "dropped": list(self.dropped),
            "emq_estimate": self.emq_estimate,
        }


@dataclasses.dataclass(frozen=True)
class Diagnostics:
    """Every event name's figures over ``window`` seconds up to ``until``."""

    path: str
    window: float
    until: float
    events: tuple[EventDiagnostics, ...]

    def by_name(self) -> dict[str, EventDiagnostics]:
        return {e.event_name: e for e in self.events}

    def as_dict(self) -> dict[str, Any]:
        return {
            "outbox": self.path,
            "window": self.window,
            "since": self.until - self.window,
            "until": self.until,
            "events": [e.as_dict() for e in self.events],
            "emq": {
                "label": "estimate",
                "method": EMQ_METHOD,
                "weights": EMQ_WEIGHTS,
                "source": EMQ_SOURCE,
            },
            "definitions": {
                "count": "distinct event ids",
                "browser copy": "a mirror post from capi-bridge.js, or a pixel twin a page fired",
                "server copy": "the mirror's server copy (unless refused), or a server event",
                "dedup.coverage": "share of events with a browser copy that also have a server "
                "copy with the same name and id (browser events the mirror ignored or refused "
                "count as without one)",
                "key_share": "share of events with a server copy whose server copy has the key",
                "fbc_age": "seconds from the ad click (fbc) to the event",
            },
        }


def compute(store: Store, now: float, window: float) -> Diagnostics:
    """The figures over ``[now - window, now]``, from the store's aggregates."""
    figures = store.figures(now - window, now)
    ages: dict[str, list[int]] = {}
    for name, age in figures.fbc_ages:
        ages.setdefault(name, []).append(age)
    refused: dict[str, list[dict[str, Any]]] = {}
    for name, problem, count in figures.refused:
        refused.setdefault(name, []).append(
            {"reason": "refused by the mirror endpoint", "message": problem, "count": count}
        )
    for name, reason, message, code, subcode, count in figures.dead:
        refused.setdefault(name, []).append(
            {
                "reason": "rejected by Meta" if reason == "rejected" else reason,
                "message": message,
                "code": code,
                "subcode": subcode,
                "count": count,
            }
        )
    dropped: dict[str, list[dict[str, Any]]] = {}
    for name, problem, count in figures.dropped:
        dropped.setdefault(name, []).append({"message": problem, "count": count})
    events = []
    for row in figures.totals:
        name, count, server, browser, dedup, server_only, reported, loaded = row[:8]
        events.append(
            EventDiagnostics(
                event_name=name,
                count=count,
                server_copies=server,
                browser_copies=browser,
                deduplicated=dedup,
                server_only=server_only,
                key_share={
                    label: (hits / server if server else 0.0)
                    for label, hits in zip(_LABELS, row[8:], strict=True)
                },
                pixel_loaded_reported=reported,
                pixel_loaded=loaded,
                fbc_ages=tuple(sorted(ages.get(name, ()))),
                refused=tuple(refused.pop(name, ())),
                dropped=tuple(dropped.get(name, ())),
            )
        )
    for name, reasons in sorted(refused.items()):  # dead letters of events observed earlier
        events.append(
            EventDiagnostics(
                name, 0, 0, 0, 0, 0, dict.fromkeys(_LABELS, 0.0), 0, 0, (), tuple(reasons)
            )
        )
    events = with_drops(events, drops.read(store, now - window, now))
    return Diagnostics(store.location, window, now, tuple(events))


def with_drops(
    events: list[EventDiagnostics], counts: list[drops.DropCount]
) -> list[EventDiagnostics]:
    """``events`` with the browser events the mirror did not store (see :mod:`drops`): refusals
    join ``refused``, the rest ``ignored``; those of the site's pixels lower the coverage."""
    by_name = {e.event_name: e for e in events}
    for count in counts:
        e = by_name.get(count.event_name) or EventDiagnostics(
            count.event_name, 0, 0, 0, 0, 0, dict.fromkeys(_LABELS, 0.0), 0, 0, (), ()
        )
        if count.reason == "refused":
            entry = {"reason": "refused by the mirror endpoint", "message": count.detail}
            e = dataclasses.replace(e, refused=(*e.refused, {**entry, "count": count.count}))
        else:
            ignored = {k: v for k, v in count.as_dict().items() if k != "event_name"}
            e = dataclasses.replace(e, ignored=(*e.ignored, ignored))
        if count.uncovered:
            e = dataclasses.replace(e, not_mirrored=e.not_mirrored + count.count)
        by_name[count.event_name] = e
    return sorted(by_name.values(), key=lambda e: e.event_name)
