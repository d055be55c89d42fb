"""Small frozen records kept as one JSON text in the outbox's ``meta`` table (Meta's last
error, the last clock reading), so that every process, on every host, reads the same one."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

_R = TypeVar("_R", bound="JsonRecord")


class JsonRecord:
    """Mixed into a frozen dataclass: :meth:`encode` to a compact JSON object, :meth:`decode`
    back, giving None for no text or one this version cannot read (another version wrote it:
    a figure is lost, never a command)."""

    def encode(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))  # type: ignore[call-overload]

    @classmethod
    def decode(cls: type[_R], text: str | None) -> _R | None:
        if not text:
            return None
        try:
            fields: Any = json.loads(text)
            return cls(**fields)
        except (TypeError, ValueError):
            return None
