"""The response core every adapter drives: one page response, and bounded request bodies.

The WSGI, ASGI and Django middlewares differ only in how bytes and headers travel
(``start_response`` and an iterable; ``send()`` messages; a response object). What happens to a
response is decided here, once, so the adapters cannot drift apart:

* :class:`PageResponse`, at the start line: is this a page to rewrite (auto-injection on for a
  GET navigation, status 200, HTML, not encoded, not an attachment, a Host the site serves, and
  the template tag has not placed the snippet already)? Which cookies does the response carry
  (the page's own, or those a server event earned on a redirect)? Must its ``Cache-Control``
  become private (the page carries the visitor's raw advanced-matching data, which no shared
  cache may hand to someone else)? Must the start line be held until the body is decided?
  Only when there is a ``Content-Length`` to correct: a streamed page's headers go at once. Then
  the body, chunk by chunk, buffered only up to the insertion point or the search limit
  (:class:`~capi_bridge.injection.Injector`) and passed through after that. Streaming and
  compressed responses are never buffered: they fail the gate and pass untouched.
* :func:`read_wsgi_body`, :func:`read_asgi_body` and :func:`read_limited`: the request body of
  one of our routes, read to at most ``limit + 1`` bytes whatever the client announced or
  streamed (chunked), so an oversize POST gets the endpoint's 413 on every adapter, and no
  client can make us hold more than the limit.

The app-wide core the middlewares serve is built by :func:`capi_bridge.assembly.build_core`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

from capi_bridge.injection import Injector, should_inject
from capi_bridge.pages import Page, PageBridge

__all__ = [
    "PageResponse",
    "body_limit",
    "html_type",
    "passes_through",
    "private_cache_control",
    "read_asgi_body",
    "read_limited",
    "read_wsgi_body",
]


class PageResponse:
    """One response to a request that may be a navigation.

    ``current()`` returns the request's :class:`Page` if something made one (a view that called
    ``track``, the template tag); ``make()`` makes it when the response turns out to be a page;
    ``nonce()`` reads the app's CSP nonce (django-csp, Flask-Talisman...) when one is rendered.
    Call :meth:`start` with the status and the headers (lower-case names), send what it returns
    along with the app's headers, then pass every body chunk through :meth:`feed` and the end
    of the body through :meth:`finish`. While :attr:`held` the start line waits: send it once
    :attr:`decided`, with ``Content-Length`` set by :meth:`length`. The app's headers named in
    :attr:`replaced` are left out: the headers :meth:`start` returns replace them.
    """

    __slots__ = ("_current", "_inject", "_make", "_nonce", "held", "injector", "replaced")

    def __init__(
        self,
        current: Callable[[], Page | None],
        make: Callable[[], Page],
        *,
        inject: bool,
        nonce: Callable[[], str | None] | None = None,
    ) -> None:
        self._current = current
        self._make = make
        self._inject = inject
        self._nonce = nonce
        #: Set while the body is being rewritten (None: pass everything through).
        self.injector: Injector | None = None
        #: Whether the start line must wait for the body's decision (a length to correct).
        self.held = False
        #: Lower-case names of the app's headers to leave out (``cache-control``).
        self.replaced: frozenset[str] = _NOTHING

    def start(self, status: int, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """Decide from the status and headers; returns the headers to add (``Set-Cookie``, and
        ``Cache-Control`` in place of the app's when :attr:`replaced` says so).

        May be called again (WSGI's ``start_response`` with ``exc_info``): it starts over."""
        self.injector = None
        self.held = False
        self.replaced = _NOTHING
        page: Page | None
        if self._inject and should_inject(status, headers):
            page = self._make()
            if not page.placed and page.serves:
                if page.nonce is None and self._nonce is not None:
                    page.nonce = self._nonce()  # the app's CSP nonce, read only for a page
                # render first: the page's cookies (an fbp minted for it) come with its snippet
                self.injector = Injector(page.snippet_bytes())
                self.held = any(name == "content-length" for name, _ in headers)
        else:
            page = self._current()
        if page is None or not page.navigation:
            return []
        extra = page.response_headers()
        if page.private:
            self.replaced = _CACHE_CONTROL
            app = next((value for name, value in headers if name == "cache-control"), None)
            extra.append(("Cache-Control", private_cache_control(app)))
        return extra

    @property
    def rewriting(self) -> bool:
        return self.injector is not None

    @property
    def decided(self) -> bool:
        """Whether the body's fate is known: what is held may be sent."""
        return self.injector is None or self.injector.decided

    def feed(self, chunk: bytes) -> bytes:
        """What may be sent of the body so far (``b""`` while looking for ``</head>``)."""
        return chunk if self.injector is None else self.injector.feed(chunk)

    def finish(self) -> bytes:
        """The end of the body: whatever was still held."""
        return b"" if self.injector is None else self.injector.finish()

    def length(self, value: str) -> str:
        """The ``Content-Length`` to send in place of ``value``, once :attr:`decided`."""
        injector = self.injector
        if injector is None or not injector.injected:
            return value
        try:
            return str(int(value) + len(injector.snippet))
        except ValueError:  # a malformed length: leave it to the server, as the app sent it
            return value


def html_type(value: str | bytes) -> bool:
    """A quick look at a ``Content-Type`` value (text, or ASGI's bytes): may this response be
    an HTML page? Looser than :func:`~capi_bridge.injection.should_inject` (parameters and
    case aside, the same test), so it only ever sends more responses to the full decision."""
    if isinstance(value, str):
        return value.lstrip()[:21].lower().startswith(_HTML_PREFIXES)
    return bytes(value).lstrip()[:21].lower().startswith(_HTML_BYTES)


def passes_through(page: Page | None, inject: bool, status: int, html: bool) -> bool:
    """Whether a response is sent exactly as the app made it, decided from its start alone and
    before any header is copied: it is not an HTML page we may rewrite (``inject``, status 200,
    :func:`html_type`), and the request asked nothing of the bridge (no :class:`Page`, or a
    :attr:`~capi_bridge.pages.Page.quiet` one). JSON, files and redirects nobody tracked on
    then cost this one call: no buffering, no per-chunk work, no cookie or token."""
    return (page is None or page.quiet) and not (inject and html and status == 200)


_HTML_PREFIXES = ("text/html", "application/xhtml")
_HTML_BYTES = (b"text/html", b"application/xhtml")
_NOTHING: frozenset[str] = frozenset()
_CACHE_CONTROL = frozenset({"cache-control"})
_SHARED = frozenset({"public", "private", "s-maxage"})


def private_cache_control(value: str | None) -> str:
    """The app's ``Cache-Control`` made ``private``: shared caches (a CDN, a proxy) must not
    keep a page carrying one visitor's data; the browser's own cache may (``max-age`` and
    ``no-store`` are kept). ``public, max-age=600`` becomes ``private, max-age=600``."""
    kept = [
        part.strip()
        for part in (value or "").split(",")
        if part.strip() and part.split("=", 1)[0].strip().lower() not in _SHARED
    ]
    return ", ".join(["private", *kept])


# --- request bodies of our routes ----------------------------------------------------------------


def body_limit(core: PageBridge) -> int:
    """The largest body the endpoint takes; readers stop one byte past it (the endpoint then
    answers 413 by size). Read from the endpoint, the one place that knows."""
    return int(core.endpoint.max_body_bytes)


def read_limited(read: Callable[[int], bytes], limit: int, length: int | None = None) -> bytes:
    """Read from a file-like ``read`` until its end or ``length`` bytes, and never more than
    ``limit + 1`` bytes: one byte past the limit is enough to know the body is too large."""
    want = limit + 1 if length is None else min(length, limit + 1)
    parts: list[bytes] = []
    got = 0
    while got < want:
        chunk = read(want - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_wsgi_body(environ: Mapping[str, Any], limit: int) -> bytes:
    """A WSGI request body, bounded. PEP 3333 forbids reading past ``CONTENT_LENGTH``; a body
    without one (chunked) is read only when the server says its stream ends by itself
    (``wsgi.input_terminated``: gunicorn, Werkzeug, mod_wsgi), else it counts as empty."""
    raw = environ.get("CONTENT_LENGTH")
    length: int | None
    if raw:
        try:
            length = int(raw)
        except ValueError:
            return b""
        if length <= 0:
            return b""
    elif environ.get("wsgi.input_terminated"):
        length = None
    else:
        return b""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    return read_limited(stream.read, limit, length)


async def read_asgi_body(
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]], limit: int
) -> bytes | None:
    """An ASGI request body, bounded: no ``receive()`` once more than ``limit`` bytes came.
    None when the client disconnected first."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body", False) or len(body) > limit:
            return bytes(body[: limit + 1])
