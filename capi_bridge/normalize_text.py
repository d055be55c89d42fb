"""Text helpers every normalization rule shares: JavaScript's whitespace, and values masked
for error messages.

A module of its own so the rule modules (places, phone numbers, dates) and normalize.py, which
assembles them, can all use one definition without importing each other in a circle.
"""

from __future__ import annotations

import re

__all__ = ["JS_SPACE", "JS_SPACE_CHARS", "masked"]

# The whitespace JavaScript's ``\s`` and ``trim()`` know. The pixel normalizes with these, so using
# the same set (rather than Python's, which adds \x1c-\x1f and \x85 and lacks \ufeff) keeps browser
# and server hashes equal.
JS_SPACE_CHARS = (
    "\t\n\v\f\r \u00a0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
JS_SPACE = re.compile(f"[{JS_SPACE_CHARS}]+")
_MAX_SHOWN = 60


def masked(text: str) -> str:
    """``text`` for an error message, masked: its shape, never its value (letters become
    ``x``, digits ``9``; spaces and punctuation stay, so ``'xxxx xxx@xxxxx.xx'`` still shows
    why it is no e-mail address), quoted and cut short. An error about a visitor's value ends
    up in the app's tracebacks and logs, where raw personal data must never be."""
    shape = "".join(
        "x" if ch.isalpha() else "9" if ch.isdigit() else ch if ch.isprintable() else "?"
        for ch in text[:_MAX_SHOWN]
    )
    return repr(shape + ("..." if len(text) > _MAX_SHOWN else ""))
