"""README's code blocks, for the tests that run or type-check each one as written."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


@dataclass(frozen=True)
class Block:
    line: int  # README line of the opening fence
    lang: str
    code: str


def blocks(lang: str | None = None) -> list[Block]:
    """Every fenced block (of ``lang``, when given), in README order."""
    text = README.read_text()
    found = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        block = Block(text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2))
        if lang is None or block.lang == lang:
            found.append(block)
    return found


def block_starting(text: str, lang: str | None = None) -> Block:
    """The one block whose code starts with ``text``."""
    [block] = [b for b in blocks(lang) if b.code.startswith(text)]
    return block
