"""Carrying out what the mirror endpoint decided: the one place a browser request has effects.

:class:`~capi_bridge.endpoint.BrowserEndpoint` checks a request and returns an
:class:`EndpointResult`; :func:`settle` then stores its events with one
``Bridge.enqueue_many`` (all or none: Meta's rules are checked there, once per event), releases
or forgets held events on a consent choice, and counts the events that were not stored (see
:mod:`capi_bridge.drops`). A failure of the outbox turns the answer into a 503 (the browser may
retry); an event Meta would reject turns it into a 400 listing Meta's reasons.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

from capi_bridge.bridge import Bridge
from capi_bridge.browser_payload import Rejected
from capi_bridge.drops import Drop, DropTally
from capi_bridge.errors import InvalidEvent
from capi_bridge.observations import Origin
from capi_bridge.request import Response

logger = logging.getLogger("capi_bridge.endpoint")

BROWSER_ORIGIN = Origin("browser")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


@dataclasses.dataclass(frozen=True)
class Batch:
    """The events a post asks to store, enriched, and how (``Bridge.enqueue_many``'s
    arguments). ``positions``: each event's index in the post, for error fields."""

    events: tuple[dict[str, Any], ...]
    hold: str | None = None
    pixel_id: str | None = None
    origin: Origin = BROWSER_ORIGIN
    test_event_code: str | None = None
    positions: tuple[int, ...] = ()

    def position(self, index: int) -> int:
        return self.positions[index] if index < len(self.positions) else index


@dataclasses.dataclass(frozen=True)
class Choice:
    """A consent message's effect on the events held under ``hold``: ``release`` or
    ``forget`` them."""

    hold: str
    action: str


@dataclasses.dataclass(frozen=True)
class EndpointResult:
    """What the endpoint decided: the answer (once the effects below succeed), the events to
    store, the consent choice to act on, and the events it did not keep (to count)."""

    response: Response
    batch: Batch | None = None
    choice: Choice | None = None
    dropped: tuple[Drop, ...] = ()

    @property
    def events(self) -> tuple[dict[str, Any], ...]:
        """The accepted events (enriched, not yet checked against Meta's rules)."""
        return self.batch.events if self.batch is not None else ()


def answer_rejected(exc: Rejected) -> EndpointResult:
    """The result of a refused request: its 4xx answer and nothing else."""
    return EndpointResult(exc.response())


def settle(result: EndpointResult, bridge: Bridge, tally: DropTally | None = None) -> Response:
    """Store, release or forget as ``result`` says; returns the answer to send."""
    response = result.response
    dropped = list(result.dropped)
    batch = result.batch
    if batch is not None:
        try:  # submit: a locked or unavailable outbox never fails nor holds the request
            bridge.submit_many(
                batch.events,
                pixel_id=batch.pixel_id,
                test_event_code=batch.test_event_code,
                hold=batch.hold,
                origin=batch.origin,
            )
        except InvalidEvent as exc:
            response = _invalid(batch, exc)
            dropped += _refused(batch, exc)
        except Exception as exc:  # a full disk, a closed outbox: never the visitor's fault
            logger.error("the outbox raised %s; answering 503", type(exc).__name__)
            response = Rejected(
                503,
                "unavailable",
                "events cannot be stored right now",
                headers=(("Retry-After", "30"),),
            ).response()
    choice = result.choice
    if choice is not None:
        try:
            (bridge.release if choice.action == "release" else bridge.forget)(choice.hold)
        except Exception as exc:  # the choice is the visitor's: its cookies still go out
            error = type(exc).__name__
            logger.error("%s of held events raised %s; answering 503", choice.action, error)
            cookies = tuple((k, v) for k, v in response.headers if k == "Set-Cookie")
            response = Rejected(
                503,
                "unavailable",
                "the consent choice is recorded but held events cannot be updated now",
                headers=(("Retry-After", "30"), *cookies),
            ).response()
    if dropped and tally is not None:
        tally.add(dropped)
    return response


def _problems(batch: Batch, exc: InvalidEvent) -> dict[int, list[str]]:
    return exc.events if exc.events else {0: exc.problems}


def _invalid(batch: Batch, exc: InvalidEvent) -> Response:
    """400 naming the first invalid event and Meta's reasons for refusing it."""
    found = _problems(batch, exc)
    first = min(found)
    problems = found[first]
    return Rejected(
        400,
        "invalid_event",
        "; ".join(problems),
        f"events[{batch.position(first)}]",
        problems=problems,
    ).response()


def _refused(batch: Batch, exc: InvalidEvent) -> list[Drop]:
    """Every event of the post counts as refused (none is stored); the reason keeps no value
    the problem quotes (an fbp, an address, a currency code)."""
    found = _problems(batch, exc)
    return [
        Drop(
            str(event["event_name"]),
            "refused",
            _QUOTED.sub("…", "; ".join(found[index]))
            if index in found
            else "not stored: another event of its post was refused",
        )
        for index, event in enumerate(batch.events)
    ]
