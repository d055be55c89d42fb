"""Putting the pixel snippet into HTML responses, framework-free and streaming.

Both middlewares (WSGI and ASGI) drive the same two pieces: :func:`should_inject`, the gate that
decides from the request and the response headers alone whether a response may be a page view, and
:class:`Injector`, an incremental state machine that buffers a response body only up to the
insertion point (``</head>``, else just after ``<body ...>``) or a search limit, then passes every
later chunk straight through. Work is done on bytes: the tags are ASCII, so matching is safe for
every ASCII-compatible charset and nothing is decoded or re-encoded (the flask-debugtoolbar quirk).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: New Relic's RUM injector gives up after 64 KiB; a page whose ``</head>`` is further away is
#: passed through untouched rather than held in memory.
SEARCH_LIMIT = 64 * 1024

#: How every snippet capi-bridge renders begins: a page holding this tag before its insertion
#: point (placed by the template tag, or replayed by a full-page cache) is left alone. Only the
#: tag itself counts: the words ``data-capi-bridge`` in the page's text (a search term the page
#: reflects before ``</head>``, HTML-escaped as templates do) must not turn the pixel off.
MARKER = b"<script data-capi-bridge"
_OWN_TAG = re.compile(re.escape(MARKER) + rb"[ >]")

_INSERTION = re.compile(rb"</head\s*>|<body(?:\s[^>]*)?>", re.IGNORECASE)
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
#: Longest tag text a chunk boundary can split: re-scan this much of the old buffer.
_OVERLAP = 256


#: ``Sec-Fetch-Dest`` values of a navigation, as text (WSGI, Django) and bytes (ASGI).
_NAVIGATIONS = frozenset({"document", "iframe", "", b"document", b"iframe", b""})


def is_navigation(sec_fetch_dest: str | bytes | None) -> bool:
    """Can this request be a navigation (a page load or a form post)? Decided before the app
    runs, from ``Sec-Fetch-Dest``: fetch/XHR calls, images and scripts skip the middleware
    entirely, which keeps API endpoints at zero overhead. Browsers too old to send the header,
    and non-browser clients, count as navigations (the snippet is inert without JavaScript)."""
    return sec_fetch_dest is None or sec_fetch_dest in _NAVIGATIONS


def should_inject(status: int, headers: Iterable[tuple[str, str]]) -> bool:
    """Is this response an HTML page we may rewrite? Headers are (lower-case name, value)."""
    if status != 200:
        return False
    html = False
    for name, value in headers:
        if name == "content-type":
            html = value.split(";", 1)[0].strip().lower() in _HTML_TYPES
        elif (name == "content-encoding" and value.strip().lower() not in ("", "identity")) or (
            name == "content-disposition" and value.strip().lower().startswith("attachment")
        ):
            return False
    return html


class Injector:
    """Inserts ``snippet`` into a body fed chunk by chunk.

    ``feed`` returns the bytes that may be sent now (``b""`` while still searching); ``finish``
    returns whatever is left at the end of the body. ``injected`` tells the caller, once
    ``decided``, whether the body grew by ``len(snippet)`` — which is what a ``Content-Length``
    correction needs.
    """

    __slots__ = ("_buffer", "_limit", "_scanned", "decided", "injected", "snippet")

    def __init__(self, snippet: bytes, *, limit: int = SEARCH_LIMIT) -> None:
        self.snippet = snippet
        self._limit = limit
        self._buffer = bytearray()
        self._scanned = 0
        self.decided = False
        self.injected = False

    def feed(self, chunk: bytes) -> bytes:
        if self.decided:
            return chunk
        if not self._buffer:  # the usual case: </head> is in the first chunk; no copying
            match = _INSERTION.search(chunk)
            if match is not None:
                self.decided = True
                if _OWN_TAG.search(chunk, 0, match.end()):
                    return chunk
                at = match.start() if match.group(0)[:2] == b"</" else match.end()
                self.injected = True
                return b"".join((chunk[:at], self.snippet, chunk[at:]))
            self._buffer += chunk
            self._scanned = len(chunk)
            return self._give_up() if len(chunk) > self._limit else b""
        self._buffer += chunk
        start = max(0, self._scanned - _OVERLAP)
        match = _INSERTION.search(self._buffer, start)
        if match is None:
            self._scanned = len(self._buffer)
            if len(self._buffer) > self._limit:
                return self._give_up()
            return b""
        return self._insert(match)

    def finish(self) -> bytes:
        """End of body: a page without ``</head>`` or ``<body>`` is sent unchanged."""
        if self.decided:
            return b""
        return self._give_up()

    def _insert(self, match: re.Match[bytes]) -> bytes:
        self.decided = True
        data = bytes(self._buffer)
        self._buffer = bytearray()
        if _OWN_TAG.search(data, 0, match.end()):
            return data
        at = match.start() if match.group(0)[:2] == b"</" else match.end()
        self.injected = True
        return data[:at] + self.snippet + data[at:]

    def _give_up(self) -> bytes:
        self.decided = True
        data = bytes(self._buffer)
        self._buffer = bytearray()
        return data


def inject_once(body: bytes, snippet: bytes, *, limit: int = SEARCH_LIMIT) -> tuple[bytes, bool]:
    """Whole-body convenience for responses that arrive in one piece."""
    injector = Injector(snippet, limit=limit)
    out = injector.feed(body) + injector.finish()
    return out, injector.injected
