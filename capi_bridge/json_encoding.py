"""The one compact JSON encoder: the events' wire JSON and the outbox journal's records.

Kept apart from :mod:`capi_bridge.accept` (which makes events' rows) so the delivery package
can write its journal with the same encoder without importing the request path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

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


#: The wire JSON of an event: ``_ENCODER.encode``'s bytes, errors and C encoder.
encode_json = _c_encoder()
