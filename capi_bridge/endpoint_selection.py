"""Which of a browser's events the endpoint mirrors, and to which pixel.

The page's ``fbq`` calls reach the endpoint whatever they are, and the pixel has sent its copy
already; the server copy is made only for events worth deduplicating. A crawler's or headless
browser's events, a ``trackSingle`` to a pixel the site does not configure, the events the
pixel sends by itself and names that are neither standard nor one of ``custom_events`` are not
mirrored: they are answered 202 and counted as drops (:mod:`capi_bridge.drops`), never silent.
It decides on events already checked (:func:`~capi_bridge.browser_payload.check_events`), with
no I/O, kept apart from :class:`~capi_bridge.endpoint.BrowserEndpoint` (which handles the
request: host, origin, token, limits) so the rule reads as one list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capi_bridge.browser_payload import Rejected
from capi_bridge.drops import Drop
from capi_bridge.events import STANDARD_EVENTS
from capi_bridge.settings import Settings

#: Events the pixel sends by itself; a page may pass them to fbq, they are never mirrored.
AUTOMATIC_EVENTS = frozenset({"SubscribedButtonClick", "Microdata"})


@dataclass(frozen=True)
class Selection:
    """The events to mirror (``pixel_id`` removed), their places in the post, the pixel they
    go to (None: every configured one), and those left out: drops to count, and the
    ``ignored`` entries of the 202 answer."""

    kept: list[dict[str, Any]]
    positions: list[int]
    target: str | None
    dropped: list[Drop]
    ignored: list[dict[str, str]]


class EventSelector:
    """The site's rule for what is mirrored, from its settings; one per endpoint."""

    def __init__(self, settings: Settings) -> None:
        self.event_names = STANDARD_EVENTS | frozenset(settings.custom_events)
        self.pixels = frozenset(settings.pixel_ids)

    def select(self, events: list[dict[str, Any]], agent: tuple[str, str] | None) -> Selection:
        """Sort one post's events; ``agent`` is the crawler or headless browser that sent it
        (:func:`~capi_bridge.drops.classify_agent`). Rejected when the kept events go to more
        than one pixel target: one post, one target."""
        kept: list[dict[str, Any]] = []
        positions: list[int] = []
        dropped: list[Drop] = []
        ignored: list[dict[str, str]] = []
        for index, event in enumerate(events):
            drop = self._ignored(event, agent)
            if drop is None:
                kept.append(event)
                positions.append(index)
            else:
                dropped.append(drop)
                ignored.append({"field": f"events[{index}]", "reason": drop.reason})
        targets = {self._target(e.pop("pixel_id", None)) for e in kept}
        if len(targets) > 1:
            raise Rejected(
                400,
                "mixed_pixels",
                "one post carries events for one pixel target: post trackSingle events apart",
                "events",
            )
        return Selection(kept, positions, next(iter(targets), None), dropped, ignored)

    def _ignored(self, event: dict[str, Any], agent: tuple[str, str] | None) -> Drop | None:
        """Why ``event`` is not mirrored (a drop to count), or None to keep it."""
        name = event["event_name"]
        if agent is not None:
            return Drop(name, *agent)
        pixel = event.get("pixel_id")
        if pixel is not None and pixel not in self.pixels:
            return Drop(name, "unknown_pixel", pixel)
        if name in AUTOMATIC_EVENTS:
            return Drop(name, "automatic")
        if name not in self.event_names:
            return Drop(name, "unknown_event")
        return None

    def _target(self, pixel: str | None) -> str | None:
        """The pixel an event goes to (None: every configured one, as plain track does)."""
        return None if pixel is None or self.pixels == {pixel} else pixel
