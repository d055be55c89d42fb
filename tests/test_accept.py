"""The enqueue path's shortcuts (capi_bridge.accept and what it calls) give exactly what the
general code gives: the same rows, payload JSON, observation tags and problems as hashing
with hash_user_data, checking with validate_event and encoding with json; and each
shortcut agrees with the rule it stands for."""

from __future__ import annotations

import copy
import enum
import hashlib
import json
import math
import random
import sys
import uuid
from typing import Any

import pytest
from helpers.delivery_worker import make_event

from capi_bridge import json_encoding
from capi_bridge.accept import RowMaker
from capi_bridge.errors import InvalidEvent
from capi_bridge.events import graph_event
from capi_bridge.json_encoding import (
    _ENCODER,
    encode_json,
    encode_json_standard,
    encode_own_json,
)
from capi_bridge.normalize import _ASCII_EMAIL, _EMAIL, _HAS_CONTENT, _external_id
from capi_bridge.normalize_text import JS_SPACE, JS_SPACE_CHARS
from capi_bridge.observations import SERVER_ORIGIN, Origin, describe, tag
from capi_bridge.settings import Settings
from capi_bridge.validation import MAX_AGE_PHYSICAL_STORE, MAX_AGE_SECONDS, validate_event

NOW = 1_800_000_000


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def event(**changes: Any) -> dict[str, Any]:
    base = make_event(7, "acc", when=NOW - 10)
    user = changes.pop("user", {})
    base["user_data"].update(user)
    base["user_data"] = {k: v for k, v in base["user_data"].items() if v is not None}
    base.update(changes)
    return base


EVENTS: list[Any] = [
    *(make_event(i, "acc", when=NOW - 10) for i in range(20)),
    event(user={"em": sha("a").upper(), "external_id": [" X 1", "x1", None], "ph": None}),
    event(user={"em": "not an address"}),
    event(user={"em": 42}),
    event(user={"fbp": "nope", "client_ip_address": "1.2.3.4:80", "client_user_agent": None}),
    event(user={"fn": "!!!", "ln": "O’Connor", "ge": "f", "unknown": 1}),
    event(user_data={"ct": "Paris", "country": "fr", "client_user_agent": "UA"}),
    event(user_data={}),
    event(user_data=[1]),
    event(custom_data={"value": math.nan, "currency": "usd"}),
    event(custom_data={"value": "12", "currency": "XXX", "net_revenue": 10**400}),
    event(custom_data={"currency": "EU", "contents": [1, {"id": "", "quantity": 2.0}]}),
    event(custom_data={"value": 1, "currency": "USD", "odd": {1, 2}}),
    event(custom_data={"value": 1, "currency": "USD", 3: "int key", "text": "é\u2028\"\\"}),
    event(event_time=NOW * 1000, action_source="physical_store"),
    event(action_source="physical_store"),
    event(event_name="", opt_out="yes", unknown_key=1),
    "not an event",
]


def reference(maker: RowMaker, item: Any, pixel: str | None, origin: Origin | None) -> Any:
    """What RowMaker.rows gives, from the general functions (no memo, no shortcuts)."""
    data = dict(item)
    if maker._dpo and "data_processing_options" not in data:
        data.update(maker._dpo)
    try:
        wire = graph_event(data)
    except (TypeError, ValueError) as exc:
        return ("invalid", [str(exc)])
    problems = validate_event(wire, now=NOW)
    if problems:
        return ("invalid", problems)
    try:
        payload = _ENCODER.encode(wire)
    except (TypeError, ValueError) as exc:
        return ("invalid", [f"the event cannot be sent as JSON: {exc}"])
    described = describe(wire["user_data"], wire["event_time"], previews=maker.previews)
    seen = tag(origin or SERVER_ORIGIN, described)
    store = wire.get("action_source") == "physical_store"
    expires = float(wire["event_time"] + (MAX_AGE_PHYSICAL_STORE if store else MAX_AGE_SECONDS))
    code = maker.test_code
    pixels = maker.pixels if pixel is None else (pixel,)
    rows = [(p, wire["event_name"], wire["event_id"], code, expires, payload) for p in pixels]
    return (rows, wire["event_id"], [seen] * len(pixels))


def decoded(result: Any) -> Any:
    """Rows with their payload parsed: the encoders agree on the JSON, not on every byte."""
    if result[0] == "invalid":
        return result
    rows, event_id, tags = result
    return ([(*row[:5], json.loads(row[5])) for row in rows], event_id, tags)


@pytest.mark.parametrize("inspector", [False, True])
@pytest.mark.parametrize("pixel", [None, "999"])
@pytest.mark.parametrize("origin", [None, Origin("browser", True, False)])
def test_rows_are_what_the_general_functions_give(
    tmp_path: Any, inspector: bool, pixel: str | None, origin: Origin | None
) -> None:
    settings = Settings(
        pixel_id="1234567890,2345678901",
        access_token="t",
        graph_url="http://127.0.0.1:9",
        outbox_path=str(tmp_path / "o.sqlite3"),
        inspector=inspector,
    )
    maker = RowMaker(settings)
    for _ in range(2):  # computed, then remembered by the memo
        for item in EVENTS:
            if not isinstance(item, dict):
                continue
            expected = reference(maker, copy.deepcopy(item), pixel, origin)
            try:
                got: Any = maker.rows(copy.deepcopy(item), pixel, None, float(NOW), origin)
            except InvalidEvent as exc:
                got = ("invalid", exc.problems)
            assert decoded(got) == decoded(expected)
            assert repr(decoded(got)) == repr(decoded(expected))  # same types (tuples, floats)
            if got[0] != "invalid":  # compact: never longer than the standard encoding
                assert all(
                    len(a[5].encode()) <= len(b[5].encode())
                    for a, b in zip(got[0], expected[0], strict=True)
                )


class Colour(enum.Enum):
    RED = "red"


class Label(str):
    pass


@pytest.mark.parametrize("encode", [encode_json, encode_json_standard])
def test_encode_json_gives_the_standard_json_and_errors(encode: Any) -> None:
    """Both encoders (orjson's where installed, and the standard one it defers to) give the
    standard encoder's JSON value, compact, and its exact error wherever it fails."""
    samples = [e for e in EVENTS if isinstance(e, dict)]
    samples += [{"a": [1, 2.5, -0.0, 1e300, 1e-05, 10**30, None, True, False]}, {1: 1, 2.5: 2}]
    samples += [{"s": "".join(map(chr, range(0, 0x3000, 7))) + "\ud800"}, {"l": Label("x")}]
    samples += [{"v": math.nan}, {"v": [-math.inf]}, {"v": object()}, {(1, 2): 1}]

    def outcome(encode: Any, sample: Any) -> Any:
        try:
            return json.loads(encode(sample))
        except (TypeError, ValueError) as exc:
            return (type(exc), str(exc))

    failed = 0
    for sample in samples:
        assert outcome(encode, sample) == outcome(_ENCODER.encode, sample)
        failed += isinstance(outcome(encode, sample), tuple)
        if not isinstance(outcome(encode, sample), tuple):  # compact, as the standard's
            assert len(encode(sample).encode()) <= len(_ENCODER.encode(sample).encode())
    assert failed == 6  # the NaN and the set events of EVENTS, and the four above


def test_encode_json_is_the_standard_encoder_byte_for_byte_without_orjson() -> None:
    samples = [e for e in EVENTS if isinstance(e, dict)] + [{"t": "é\u2028", "f": 1e-05}]
    for sample in samples:
        try:
            expected = _ENCODER.encode(sample)
        except (TypeError, ValueError):
            continue
        assert encode_json_standard(sample) == expected


def test_the_journal_encoder_keeps_nones_and_defers_what_it_cannot_encode() -> None:
    """The journal's rows hold Nones (no test code, no preview) that encode_json would hand
    to the standard encoder every time; encode_own_json does not, and still gives its JSON."""
    row = ["111", "Purchase", "e1", "", 1.8e9 + 0.25, 1_800_000_000.5, None, '{"a":"é"}', 3]
    assert json.loads(encode_own_json([row, row])) == json.loads(_ENCODER.encode([row, row]))
    assert json.loads(encode_own_json([[10**30, Label("x")]])) == [[10**30, "x"]]
    with pytest.raises(TypeError):
        encode_own_json([[object()]])


@pytest.mark.skipif(json_encoding.orjson is None, reason="orjson is not installed here")
def test_what_only_orjson_accepts_is_encoded_as_its_value() -> None:
    """The documented difference: a UUID or a plain Enum member becomes its value."""
    key = uuid.UUID(int=5)
    assert json.loads(encode_json({"id": key, "c": Colour.RED})) == {"id": str(key), "c": "red"}
    with pytest.raises(TypeError):
        encode_json_standard({"id": key})


def test_the_ascii_email_pattern_matches_what_the_full_one_does() -> None:
    """On ASCII text \\w is [A-Za-z0-9_]: the plain-class pattern must accept the same."""
    alphabet = "aZ09_.-@!#$%&'*+/=?^`{|}~ \"(),:;<>[\\]\t"
    rng = random.Random(14)
    texts = ["a@b.co", "a..b@c.d", "a@b", "@b.c", "a@-b.co", "a@b-.co", "a@" + "b" * 63 + ".co"]
    for _ in range(20000):
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14))))
    texts += [rng.choice(["x", "x.y", "_"]) + "@" + t for t in texts[:5000]]
    for text in texts:
        assert (_ASCII_EMAIL.fullmatch(text) is None) == (_EMAIL.fullmatch(text) is None), text


def test_the_external_id_shortcut_removes_what_the_rule_removes() -> None:
    others = ["a", "A", "1", "\x1c", "\x85", "\u200b", "é", "\U0001f600", "\x00"]
    for space in [*JS_SPACE_CHARS, ""]:
        for other in others:
            for text in (f"{other}{space}X", f"{space}{other}", f"Ab{other}"):
                assert _external_id(text, None) == JS_SPACE.sub("", text).lower()


def test_a_word_made_of_letters_or_digits_has_content() -> None:
    """normalize's isalnum() shortcut: every such character is one _HAS_CONTENT finds."""
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if char.isalnum():
            assert _HAS_CONTENT.search(char), hex(code)

