"""Framework-neutral request and response views.

The browser bridge (identity, snippet, endpoint) only ever sees a :class:`RequestView` and
returns a :class:`Response`, so the WSGI and ASGI adapters reduce to "build a view from the
environ/scope, call the core, write the response". Both constructors parse plain dicts: this
module imports no web framework.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any, TypeVar, overload
from urllib.parse import parse_qs

from capi_bridge.cookies import parse_cookie_header

_T = TypeVar("_T")


class Headers(Mapping[str, str]):
    """Immutable, case-insensitive headers; a repeated header reads as its values joined.

    RFC 9110 §5.3 lets a recipient combine repeated fields with ", " (HTTP/2 sends one
    ``cookie`` field per cookie, which RFC 9113 §8.2.3 says to join with "; ").
    """

    __slots__ = ("_items", "_joined")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = tuple((name.lower(), value) for name, value in items)
        joined: dict[str, str] = {}
        for name, value in self._items:
            if name in joined:
                joined[name] += ("; " if name == "cookie" else ", ") + value
            else:
                joined[name] = value
        self._joined = joined

    @classmethod
    def from_raw(cls, raw: Iterable[tuple[bytes, bytes]]) -> Headers:
        """Headers from ASGI's (name, value) byte pairs, decoded and joined in one pass."""
        items: list[tuple[str, str]] = []
        joined: dict[str, str] = {}
        for raw_name, raw_value in raw:
            name = bytes(raw_name).decode("latin-1").lower()
            value = bytes(raw_value).decode("latin-1")
            items.append((name, value))
            if name in joined:
                joined[name] += ("; " if name == "cookie" else ", ") + value
            else:
                joined[name] = value
        headers = cls.__new__(cls)
        headers._items = tuple(items)
        headers._joined = joined
        return headers

    def __getitem__(self, name: str) -> str:
        return self._joined[name.lower()]

    @overload
    def get(self, name: str, /) -> str | None: ...
    @overload
    def get(self, name: str, /, default: str | _T) -> str | _T: ...
    def get(self, name: str, /, default: object = None) -> object:
        """One dict look-up (Mapping's own ``get`` goes through ``__getitem__`` and a
        ``KeyError``): the bridge reads a few headers on every page."""
        return self._joined.get(name.lower(), default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._joined)

    def __len__(self) -> int:
        return len(self._joined)

    def get_all(self, name: str) -> list[str]:
        """Every value sent for ``name``, in order."""
        key = name.lower()
        return [value for item, value in self._items if item == key]

    def __repr__(self) -> str:
        return f"Headers({list(self._joined)!r})"


class _WSGIHeaders(Headers):
    """A WSGI ``environ``'s headers, read from it when asked: a page reads five or six of them,
    and gathering all of them walks the whole environ (the server's keys and the framework's
    too). The server has joined repeated headers already."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Mapping[str, Any]) -> None:  # no parent call: nothing to gather
        self._environ = environ

    def __getitem__(self, name: str) -> str:
        value = self._environ.get(_environ_key(name))
        if not value:
            raise KeyError(name)
        return str(value)

    @overload
    def get(self, name: str, /) -> str | None: ...
    @overload
    def get(self, name: str, /, default: str | _T) -> str | _T: ...
    def get(self, name: str, /, default: object = None) -> object:
        value = self._environ.get(_environ_key(name))
        return str(value) if value else default

    def _all(self) -> dict[str, str]:
        joined: dict[str, str] = {}
        for key, value in self._environ.items():
            if key[:5] == "HTTP_":
                if value:
                    joined[key[5:].replace("_", "-").lower()] = str(value)
            elif key in _CONTENT_KEYS and value:
                joined[_CONTENT_KEYS[key]] = str(value)
        return joined

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def get_all(self, name: str) -> list[str]:
        value = self.get(name)
        return [] if value is None else [value]

    def __repr__(self) -> str:
        return f"Headers({list(self._all())!r})"


_CONTENT_KEYS = {"CONTENT_TYPE": "content-type", "CONTENT_LENGTH": "content-length"}
_ENVIRON_KEYS: dict[str, str] = {}


def _environ_key(name: str) -> str:
    """The ``environ`` key of a header: ``HTTP_USER_AGENT`` for ``User-Agent``."""
    key = _ENVIRON_KEYS.get(name)
    if key is None:
        lower = name.lower()
        key = {v: k for k, v in _CONTENT_KEYS.items()}.get(lower)
        if key is None:
            key = "HTTP_" + lower.upper().replace("-", "_")
        if len(_ENVIRON_KEYS) < 512:  # the bridge's own names; bounded whatever asks
            _ENVIRON_KEYS[name] = key
    return key


def _wsgi_text(value: Any) -> str:
    """PEP 3333 hands paths over as latin-1-decoded bytes; recover the UTF-8 text."""
    text = str(value or "")
    if text.isascii():  # the usual path: the same text either way
        return text
    try:
        return text.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text


@dataclasses.dataclass(frozen=True)
class RequestView:
    """What the bridge needs to know about one HTTP request."""

    method: str
    scheme: str
    host: str
    path: str
    query_string: str = ""
    headers: Headers = dataclasses.field(default_factory=Headers)
    cookies: Mapping[str, str] = dataclasses.field(default_factory=dict)
    client_addr: str | None = None

    @classmethod
    def build(
        cls,
        method: str,
        scheme: str,
        host: str,
        path: str,
        query_string: str = "",
        headers: Headers | Iterable[tuple[str, str]] | Mapping[str, str] = (),
        client_addr: str | None = None,
    ) -> RequestView:
        """A view from parts; cookies are read from the ``Cookie`` header."""
        if isinstance(headers, Headers):
            hdrs = headers
        else:
            hdrs = Headers(headers.items() if isinstance(headers, Mapping) else headers)
        return cls(
            method=method.upper(),
            scheme=scheme.lower(),
            host=host.lower(),
            path=path or "/",
            query_string=query_string,
            headers=hdrs,
            cookies=parse_cookie_header(hdrs.get("cookie")),
            client_addr=client_addr or None,
        )

    @classmethod
    def from_wsgi(cls, environ: Mapping[str, Any]) -> RequestView:
        """A view of a PEP 3333 ``environ`` (``REMOTE_ADDR`` is the socket peer)."""
        scheme = str(environ.get("wsgi.url_scheme") or "http")
        host = str(environ.get("HTTP_HOST") or "")
        if not host:
            host = str(environ.get("SERVER_NAME") or "localhost")
            port = str(environ.get("SERVER_PORT") or "")
            if port and port != {"http": "80", "https": "443"}.get(scheme):
                host = f"{host}:{port}"
        path = _wsgi_text(environ.get("SCRIPT_NAME")) + _wsgi_text(environ.get("PATH_INFO"))
        return cls.build(
            method=str(environ.get("REQUEST_METHOD") or "GET"),
            scheme=scheme,
            host=host,
            path=path,
            query_string=str(environ.get("QUERY_STRING") or ""),
            headers=_WSGIHeaders(environ),
            client_addr=str(environ.get("REMOTE_ADDR") or "") or None,
        )

    @classmethod
    def from_asgi(cls, scope: Mapping[str, Any]) -> RequestView:
        """A view of an ASGI HTTP ``scope`` (``scope["client"]`` is the socket peer)."""
        hdrs = Headers.from_raw(scope.get("headers") or ())
        scheme = str(scope.get("scheme") or "http")
        host = hdrs.get("host") or ""
        server = scope.get("server")
        if not host and server:
            name, port = server[0], server[1]
            default = {"http": 80, "https": 443}.get(scheme)
            host = str(name) if port in (None, default) else f"{name}:{port}"
        client = scope.get("client")
        raw_query = scope.get("query_string") or b""
        return cls.build(
            method=str(scope.get("method") or "GET"),
            scheme=scheme,
            host=host or "localhost",
            path=str(scope.get("path") or "/"),
            query_string=bytes(raw_query).decode("latin-1"),
            headers=hdrs,
            client_addr=str(client[0]) if client else None,
        )

    @property
    def url(self) -> str:
        """The URL as the app received it (scheme and host as seen by this server)."""
        query = f"?{self.query_string}" if self.query_string else ""
        return f"{self.scheme}://{self.host}{self.path}{query}"

    def query_param(self, name: str) -> str | None:
        """The first value of a query parameter, blank values kept (``None`` when absent)."""
        values = parse_qs(self.query_string, keep_blank_values=True).get(name)
        return values[0] if values else None


@dataclasses.dataclass(frozen=True)
class Response:
    """A complete response; adapters copy it onto their own response type."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @classmethod
    def json(cls, status: int, data: Any, *, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """A JSON response that no cache keeps (every answer here is per request)."""
        body = json.dumps(data, separators=(",", ":")).encode()
        return cls(
            status,
            (
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                *headers,
            ),
            body,
        )

    @classmethod
    def empty(cls, status: int = 204, *, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """A response without a body (204 No Content, 304 Not Modified)."""
        return cls(status, (("Cache-Control", "no-store"), *headers), b"")

    @property
    def status_line(self) -> str:
        """``"202 Accepted"``: the form WSGI's ``start_response`` wants."""
        return f"{self.status} {HTTPStatus(self.status).phrase}"

    def header(self, name: str) -> str | None:
        """The first value of a response header."""
        key = name.lower()
        return next((v for k, v in self.headers if k.lower() == key), None)
