"""From an app's event to the outbox rows ``Bridge`` stores: the request path's own work.

One event becomes one row per target pixel, built once and final: the hashed wire JSON the
dispatcher splices into a request as is, its idempotency key, its expiry, and the observation
it carries for the inspector. The steps run in this order, each once per event: hash the
customer information (through a bounded memo, :mod:`capi_bridge.hash_memo`), check the result
against Meta's rules (:func:`~capi_bridge.validation.validate_wire`, told the hashes are its
own), encode it, describe it. The event is copied once; the JSON's C encoder is built once.
Kept apart from :mod:`capi_bridge.bridge` (storing, delivery, lifecycle) because this is the
part of an enqueue that costs CPU: ``benchmarks/enqueue_breakdown.py`` times it step by step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from capi_bridge.delivery.store import NewRow
from capi_bridge.errors import InvalidEvent, InvalidUserData
from capi_bridge.events import Event, hash_in_place, new_event_id
from capi_bridge.hash_memo import HashMemo
from capi_bridge.json_encoding import encode_json
from capi_bridge.observations import SERVER_ORIGIN, Origin, Tag, describe, tag, tag_prefix
from capi_bridge.settings import Settings
from capi_bridge.validation import MAX_AGE_PHYSICAL_STORE, MAX_AGE_SECONDS, validate_wire

EventLike = Event | Mapping[str, Any]

#: The observation tag's first three values for an event enqueued with no ``origin``.
_SERVER_PREFIX = tag_prefix(SERVER_ORIGIN)


class RowMaker:
    """Builds the rows of events for one ``Bridge`` (its pixels, test code, LDU options)."""

    def __init__(self, settings: Settings, memo: HashMemo | None = None) -> None:
        self.pixels = settings.pixel_ids
        self.test_code = settings.test_event_code or ""
        self.previews = settings.inspector
        self.memo = memo if memo is not None else HashMemo()
        self._hasher = self.memo.hash_user_data
        self._dpo: dict[str, Any] = {}
        if settings.data_processing_options:
            self._dpo["data_processing_options"] = list(settings.data_processing_options)
            if settings.data_processing_options_country is not None:
                self._dpo["data_processing_options_country"] = (
                    settings.data_processing_options_country
                )
                self._dpo["data_processing_options_state"] = settings.data_processing_options_state

    def wire(self, event: EventLike, now: float) -> dict[str, Any]:
        """The hashed, validated wire dict of ``event`` (InvalidEvent with every problem)."""
        if event.__class__ is dict:  # the usual case, without the Mapping ABC's check
            data = dict(event)
        elif isinstance(event, Event):
            data = event.to_dict()
        elif isinstance(event, Mapping):
            data = dict(event)
        else:
            raise InvalidEvent([f"an event is an Event or a mapping, not {type(event).__name__}"])
        if not data.get("event_id"):
            data["event_id"] = new_event_id()
        if self._dpo and "data_processing_options" not in data:
            data.update(self._dpo)
        try:
            wire = hash_in_place(data, self._hasher)  # data is our copy: no second one
        except (InvalidUserData, TypeError, ValueError) as exc:  # unhashable PII, bad shapes
            raise InvalidEvent([str(exc)]) from None
        problems = validate_wire(wire, now, hashed_here=True)  # our hasher made user_data
        if problems:
            raise InvalidEvent(problems)
        return wire

    def rows(
        self,
        event: EventLike,
        pixel_id: str | None,
        test_code: str | None,
        now: float,
        origin: Origin | None,
    ) -> tuple[list[NewRow], str, list[Tag]]:
        """The hashed wire JSON of ``event`` as one outbox row per target pixel, and the
        observation each row carries (described from the hashed wire form: no raw data;
        masked previews only while the inspector is on, the one reader that shows them)."""
        if pixel_id is not None and not (isinstance(pixel_id, str) and pixel_id.isdigit()):
            raise InvalidEvent([f"pixel_id {pixel_id!r} is not a pixel id (digits only)"])
        wire = self.wire(event, now)
        try:
            payload = encode_json(wire)
        except (TypeError, ValueError) as exc:
            raise InvalidEvent([f"the event cannot be sent as JSON: {exc}"]) from None
        name, event_id, when = wire["event_name"], wire["event_id"], wire["event_time"]
        store = wire.get("action_source") == "physical_store"
        expires = float(when + (MAX_AGE_PHYSICAL_STORE if store else MAX_AGE_SECONDS))
        code = self.test_code if test_code is None else test_code
        described = describe(wire.get("user_data"), when, previews=self.previews)
        seen = _SERVER_PREFIX + described if origin is None else tag(origin, described)
        if pixel_id is None and len(self.pixels) == 1:
            return [(self.pixels[0], name, event_id, code, expires, payload)], event_id, [seen]
        pixels = self.pixels if pixel_id is None else (pixel_id,)
        rows = [(pid, name, event_id, code, expires, payload) for pid in pixels]
        return rows, event_id, [seen] * len(pixels)

    def many(
        self,
        events: Iterable[EventLike],
        pixel_id: str | None,
        test_code: str | None,
        now: float,
        origin: Origin | None,
    ) -> tuple[list[NewRow], list[str], list[Tag]]:
        """Every event's rows, or :class:`InvalidEvent` with the problems of all invalid ones
        (as lines prefixed with their position, and by position in ``events``)."""
        rows: list[NewRow] = []
        ids: list[str] = []
        tags: list[Tag] = []
        problems: dict[int, list[str]] = {}
        make = self.rows
        for index, event in enumerate(events):
            try:
                event_rows, event_id, event_tags = make(event, pixel_id, test_code, now, origin)
            except InvalidEvent as exc:
                problems[index] = exc.problems
                continue
            rows.extend(event_rows)
            ids.append(event_id)
            tags.extend(event_tags)
        if problems:
            lines = [f"event {i}: {p}" for i, found in problems.items() for p in found]
            raise InvalidEvent(lines, events=problems)
        return rows, ids, tags
