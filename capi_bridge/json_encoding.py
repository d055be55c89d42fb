"""The one compact JSON encoder: the events' wire JSON and the outbox journal's records.

Kept apart from :mod:`capi_bridge.accept` (which makes events' rows) so the delivery package
can write its journal with the same encoder without importing the request path.

Encoding an event was a sixth of an enqueue's CPU with the standard library's C encoder (5 µs
of about 30 for a shop's Purchase): it builds one string object per key, value and separator
and joins them. ``orjson`` (a dependency on CPython, where it has wheels) writes the bytes
directly, ten times faster, so :func:`encode_json` uses it when it can be imported, and the
standard encoder otherwise (PyPy). Both give the same JSON *value*, and fail on the same
inputs, because orjson only answers where its answer is the standard one:

* whatever orjson refuses (a set, an integer past 64 bits, a lone surrogate, a subclass of
  ``str``/``int``/``dict``/``list``, a date) goes to the standard encoder, which encodes it or
  raises its own error, with its own message;
* orjson writes NaN and infinities as ``null`` where the standard encoder refuses them (Meta
  cannot read them), so output holding ``null`` anywhere is encoded again by the standard one.

The bytes may differ: orjson writes non-ASCII text as UTF-8 rather than ``\\u`` escapes, and
some floats without an exponent (``0.00001`` for ``1e-05``); Meta reads either. The one
difference in what is accepted: a ``uuid.UUID`` or a plain ``enum.Enum`` member is encoded (as
its text or value) where the standard encoder raises.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


#: orjson, or None where it has no wheel for this interpreter (the standard encoder does all).
orjson: Any = _optional("orjson")

# One encoder, built once: json.dumps() with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False, allow_nan=False)


def _c_encoder() -> Callable[[Any], str]:
    """``_ENCODER.encode``, minus what it redoes on every call: ``JSONEncoder.encode`` builds
    a new C encoder object each time (``iterencode``), with these same arguments. Built once
    here instead, when the C encoder is there and gives ``_ENCODER``'s bytes on a sample (the
    arguments are CPython's own, so a version that changed them falls back, not breaks)."""
    e = _ENCODER
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None or e.check_circular:  # (an indent shows in the sample below)
        return e.encode
    strings = (
        json.encoder.encode_basestring_ascii if e.ensure_ascii else json.encoder.encode_basestring
    )
    try:
        chunks = make(
            None, e.default, strings, None, e.key_separator, e.item_separator, e.sort_keys,
            e.skipkeys, e.allow_nan,
        )  # fmt: skip
        sample = {"a": [1, 2.5, -0.0, 10**20, "é\u2028\"", None, True], "b": {"c": {}}, 3: []}
        if "".join(chunks(sample, 0)) != e.encode(sample):
            return e.encode
    except (TypeError, ValueError):
        return e.encode

    def encode(wire: Any) -> str:
        return "".join(chunks(wire, 0))

    return encode


def _orjson_encoder(fallback: Callable[[Any], str]) -> Callable[[Any], str]:
    """orjson's ``dumps``, deferring to ``fallback`` wherever it could differ (see above)."""
    dumps = orjson.dumps
    # Dates and dataclasses orjson would encode: refused, as the standard encoder refuses them.
    option = (
        orjson.OPT_NON_STR_KEYS
        | orjson.OPT_PASSTHROUGH_DATETIME
        | orjson.OPT_PASSTHROUGH_DATACLASS
        | orjson.OPT_PASSTHROUGH_SUBCLASS
    )

    def encode(wire: Any) -> str:
        try:
            out: bytes = dumps(wire, option=option)
        except TypeError:  # orjson.JSONEncodeError: the standard encoder decides
            return fallback(wire)
        if b"null" in out:  # maybe a NaN or an infinity, which must fail
            return fallback(wire)
        return out.decode()

    return encode


def _own_encoder(fallback: Callable[[Any], str]) -> Callable[[Any], bytes]:
    """UTF-8 JSON of values capi-bridge made itself (the outbox journal's rows: texts, ids,
    clock readings, expiries, counts, None), where no NaN can be: orjson's answer as is, with
    no second look at its nulls (they are the rows' Nones)."""
    if orjson is None:
        return lambda rows: fallback(rows).encode()
    dumps = orjson.dumps

    def encode(rows: Any) -> bytes:
        try:
            out: bytes = dumps(rows)
        except TypeError:  # not ours after all: the standard encoder says why
            return fallback(rows).encode()
        return out

    return encode


#: The standard library's compact encoding, built once: ``_ENCODER.encode``'s bytes and errors.
encode_json_standard = _c_encoder()

#: The wire JSON of an event: orjson where it is installed, else :data:`encode_json_standard`.
encode_json = encode_json_standard if orjson is None else _orjson_encoder(encode_json_standard)

#: :data:`encode_json` for the rows capi-bridge itself writes (see :func:`_own_encoder`), as bytes.
encode_own_json = _own_encoder(encode_json_standard)
