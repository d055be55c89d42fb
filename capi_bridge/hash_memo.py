"""A bounded memo of hashed customer information, for the enqueue path.

The same values come back again and again: a visitor's phone number and name on every event of
their visit, a shop's few countries and cities on every order. Normalizing them is
most of an enqueue's hashing cost (a phone number is parsed against its country's numbering
plan), and its result, the SHA-256 hash, is what the outbox stores anyway. So the result is
kept, in a bounded table of this process.

No raw value is kept: the table's keys are a keyed BLAKE2s digest of (field, country hint, raw
value), under a random key drawn per process and never written anywhere, so neither the table
nor a memory dump of it can be reversed or matched against a guessed value without the key.
Its values are the SHA-256 hashes Meta receives. Values that cannot be normalized are not
memoized (they raise :class:`~capi_bridge.errors.InvalidUserData` each time, with their reason).
The result is exactly :func:`capi_bridge.normalize.hash_user_data`'s: the memo only skips
recomputing it (a test checks both agree).

``em`` and ``external_id`` (:data:`DIRECT_FIELDS`) are hashed without the memo: their rules are
cheap (trim, lowercase, a shape check: about twice a look-up's keyed digest), and they are the
values most often new on every event (an order's e-mail, a customer id), where the look-up is
pure overhead: measured by ``benchmarks/enqueue_breakdown.py``, memoizing them cost more than it
saved. Nothing of them is kept.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

from capi_bridge.normalize import (
    HASHED_FIELDS,
    PLAIN_FIELDS,
    _hash_one,
    _hint_from_value,
)

#: Hashed fields normalized and hashed on every event, not looked up (see above).
DIRECT_FIELDS = frozenset({"em", "external_id"})

_DIRECT, _MEMO, _PLAIN = 1, 2, 3
#: How hash_user_data treats a key's text: one look-up per key.
_KINDS = {
    **dict.fromkeys(HASHED_FIELDS, _MEMO),
    **dict.fromkeys(DIRECT_FIELDS, _DIRECT),
    **dict.fromkeys(PLAIN_FIELDS, _PLAIN),
}

#: Entries kept; about 200 bytes each (a 16-byte digest, a 64-character hash, the slot): 3 MB.
DEFAULT_SIZE = 16384


class HashMemo:
    """Hashed values by keyed digest of the raw value; at most ``size`` of them."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ValueError("a HashMemo holds at least one value")
        self.size = size
        self._base = hashlib.blake2s(key=os.urandom(32), digest_size=16)
        # No lock: reads, inserts and ``pop(key, None)`` are atomic dict operations, so two
        # threads evicting at once only drop a few more entries than needed.
        self._values: dict[bytes, str | None] = {}

    def __len__(self) -> int:
        return len(self._values)

    def _digest(self, field: str, hint: str | None, value: str) -> bytes:
        state = self._base.copy()  # the keyed state: copying skips re-keying per value
        state.update(f"{field}\0{hint or ''}\0{value}".encode("utf-8", "surrogatepass"))
        return state.digest()

    def hash_one(self, field: str, value: Any, hint: str | None) -> str | None:
        """The hashed wire value of one raw ``value`` of ``field`` (None: nothing to send)."""
        if value.__class__ is not str or field in DIRECT_FIELDS:
            return _hash_one(field, value, hint)  # dates, wrong types: the rule says why
        key = self._digest(field, hint, value)
        values = self._values
        try:
            return values[key]
        except KeyError:
            pass
        hashed = _hash_one(field, value, hint)  # raises for a value that is not one
        if len(values) >= self.size:  # drop the oldest quarter at once: eviction stays rare
            for old in list(values)[: max(1, self.size // 4)]:
                values.pop(old, None)
        values[key] = hashed
        return hashed

    def hash_user_data(self, mapping: Mapping[str, Any]) -> dict[str, Any]:
        """:func:`capi_bridge.normalize.hash_user_data` (without ``country=``), memoized."""
        country = mapping.get("country")
        hint = None if country is None else _hint_from_value(country)
        out: dict[str, Any] = {}
        kinds = _KINDS
        for key, value in mapping.items():
            if value.__class__ is str:  # most values: the same steps as below, fewer tests
                if not value:
                    continue
                kind = kinds.get(key)
                if kind == _DIRECT:
                    one = _hash_one(key, value, hint)
                    if one:
                        out[key] = one
                elif kind == _MEMO:
                    one = self.hash_one(key, value, hint)
                    if one:
                        out[key] = one
                elif kind == _PLAIN:
                    stripped = value.strip()
                    if stripped:
                        out[key] = stripped
                else:
                    out[key] = value
                continue
            if value is None or value == "" or value == [] or value == ():
                continue
            if key in HASHED_FIELDS:
                if isinstance(value, (list, tuple)):
                    hashes = (self.hash_one(key, v, hint) for v in value if v is not None)
                    hashed: Any = list(dict.fromkeys(h for h in hashes if h)) or None
                else:
                    hashed = self.hash_one(key, value, hint)
                if hashed:
                    out[key] = hashed
            elif key in PLAIN_FIELDS and isinstance(value, str):
                stripped = value.strip()
                if stripped:
                    out[key] = stripped
            else:
                out[key] = value
        return out
