"""Meta's answers, read: a :class:`GraphResult`, or one :class:`GraphError` whose ``kind``
says what to do next (retry, pause for credentials, drop the batch, fix the setup).

Apart from :mod:`capi_bridge.graph` (building and sending requests) because this is the part
the delivery loop's decisions rest on (:mod:`capi_bridge.delivery.retry`): every failure, from
a refused connection to Meta's error envelope, is classified here and only here. The names are
re-exported by :mod:`capi_bridge.graph`, where they have always been imported from.
"""

from __future__ import annotations

import email.utils
import enum
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from capi_bridge.errors import CapiBridgeError

_RETRY_CODES = frozenset({1, 2, 4, 17, 341, 368})
_AUTH_CODES = frozenset({102, 190})
# 803 "alias does not exist" and 2500 "unknown path components": the URL names no events edge.
_CONFIG_CODES = frozenset({3, 10, 803, 2500, *range(200, 300)})
_PIXEL_SUBCODE = 33


class ErrorKind(str, enum.Enum):
    """What the caller should do about a failed send."""

    RETRY = "retry"  # try the same batch again later (network, throttling, Meta-side trouble)
    AUTH = "auth"  # the token is bad or expired: pause delivery until someone fixes it
    REJECTED = "rejected"  # Meta refused the batch's content: isolate and drop the bad events
    CONFIG = "config"  # wrong pixel id, missing permission, wrong URL: retrying cannot help


@dataclass(frozen=True)
class GraphResult:
    """Meta's success answer: how many events it took, warnings, and the support trace id."""

    events_received: int
    messages: list[str]
    fbtrace_id: str | None


def classify(
    status: int | None, code: int | None, subcode: int | None, is_transient: bool | None
) -> ErrorKind:
    """Map a failure to an :class:`ErrorKind`, following pixel-capi.md §3.6.

    ``status`` is None for network failures and timeouts. A 5xx, a 429 or ``is_transient`` is
    always retried, whatever the code. Otherwise Meta's ``code`` wins over the HTTP status,
    because Meta answers most errors, throttling included, with a plain 400.
    """
    if status is None or status >= 500 or status == 429 or is_transient:
        return ErrorKind.RETRY
    if code is not None:
        return _classify_code(code, subcode)
    return _classify_status(status)


def _classify_code(code: int, subcode: int | None) -> ErrorKind:
    if code in _RETRY_CODES:
        return ErrorKind.RETRY
    if code in _AUTH_CODES:
        return ErrorKind.AUTH
    if code in _CONFIG_CODES or (code == 100 and subcode == _PIXEL_SUBCODE):
        return ErrorKind.CONFIG
    return ErrorKind.REJECTED


def _classify_status(status: int) -> ErrorKind:
    """Without a Graph envelope all we have is the status, e.g. from a proxy in between."""
    if status == 408 or 200 <= status < 300:
        return ErrorKind.RETRY  # a 2xx without a Graph body: some middlebox, try again
    if status == 401:
        return ErrorKind.AUTH
    if status < 400 or status in (403, 404, 405):
        return ErrorKind.CONFIG  # a redirect or a missing edge: graph_url points elsewhere
    return ErrorKind.REJECTED


class GraphError(CapiBridgeError):
    """A send that did not deliver; Meta's error envelope fields, parsed, plus :attr:`kind`."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        error_subcode: int | None = None,
        type: str | None = None,
        error_user_title: str | None = None,
        error_user_msg: str | None = None,
        fbtrace_id: str | None = None,
        is_transient: bool | None = None,
        retry_after: float | None = None,
        blame_field_specs: list[Any] | None = None,
        kind: ErrorKind | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.code = code
        self.error_subcode = error_subcode
        self.type = type
        self.error_user_title = error_user_title
        self.error_user_msg = error_user_msg
        self.fbtrace_id = fbtrace_id
        self.is_transient = is_transient
        self.retry_after = retry_after
        self.blame_field_specs = blame_field_specs
        self.kind = kind or classify(status, code, error_subcode, is_transient)
        super().__init__(self._describe())

    def _describe(self) -> str:
        """One line for a log or an alert: where, which code, Meta's words, the trace id."""
        where = [f"HTTP {self.status}"] if self.status is not None else []
        if self.code is not None:
            where.append(f"code {self.code}")
        if self.error_subcode is not None:
            where.append(f"subcode {self.error_subcode}")
        text = self.message
        if self.error_user_title or self.error_user_msg:
            detail = ": ".join(p for p in (self.error_user_title, self.error_user_msg) if p)
            text = f"{text} ({detail})" if detail != text else text
        prefix = f"Graph API error ({', '.join(where)}): " if where else ""
        trace = f" [fbtrace_id {self.fbtrace_id}]" if self.fbtrace_id else ""
        return " ".join(f"{prefix}{text}{trace}".split())

    def __reduce__(self) -> tuple[Any, ...]:
        """Keyword-only state does not survive the default Exception pickling; rebuild it."""
        state = {k: v for k, v in vars(self).items() if k != "message"}
        return (_rebuild_error, (self.message, state))


def _rebuild_error(message: str, state: dict[str, Any]) -> GraphError:
    return GraphError(message, **state)


# --- request building (shared) ------------------------------------------------------------------


def parse_response(status: int, headers: Mapping[str, str], body: bytes) -> GraphResult:
    """Meta's answer as a :class:`GraphResult`, or a :class:`GraphError` raised."""
    payload = _json_or_none(body)
    if 200 <= status < 300 and isinstance(payload, dict) and "error" not in payload:
        received = payload.get("events_received")
        if isinstance(received, int) and not isinstance(received, bool):
            messages = payload.get("messages") or []
            trace = payload.get("fbtrace_id") or headers.get("x-fb-trace-id")
            return GraphResult(received, [str(m) for m in messages], _str(trace))
    retry_after = parse_retry_after(headers.get("retry-after"))
    envelope = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(envelope, dict):
        raise _error_from_envelope(status, envelope, headers, retry_after)
    ctype = headers.get("content-type", "no content type").split(";")[0]
    raise GraphError(
        f"HTTP {status} with a {ctype} body ({len(body)} bytes) that is not a Graph API answer",
        status=status,
        fbtrace_id=headers.get("x-fb-trace-id"),
        retry_after=retry_after,
    )


def _error_from_envelope(
    status: int, env: Mapping[str, Any], headers: Mapping[str, str], retry_after: float | None
) -> GraphError:
    transient = env.get("is_transient")
    return GraphError(
        _str(env.get("message")) or "no message",
        status=status,
        code=_int(env.get("code")),
        error_subcode=_int(env.get("error_subcode")),
        type=_str(env.get("type")),
        error_user_title=_str(env.get("error_user_title")),
        error_user_msg=_str(env.get("error_user_msg")),
        fbtrace_id=_str(env.get("fbtrace_id") or headers.get("x-fb-trace-id")),
        is_transient=transient if isinstance(transient, bool) else None,
        retry_after=retry_after,
        blame_field_specs=_blame_field_specs(env.get("error_data")),
    )


def _blame_field_specs(error_data: Any) -> list[Any] | None:
    """``error_data`` comes as an object or as a JSON string, depending on the endpoint."""
    if isinstance(error_data, str):
        error_data = _json_or_none(error_data.encode())
    specs = error_data.get("blame_field_specs") if isinstance(error_data, dict) else None
    return specs if isinstance(specs, list) else None


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now; it may be a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def network_error(exc: httpx.TransportError, url: str, timeout: float) -> GraphError:
    """A transport failure as a RETRY error that says what was tried and what went wrong."""
    reason = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc)).strip() or type(exc).__name__
    reason = reason[:1].lower() + reason[1:]
    if isinstance(exc, httpx.ConnectTimeout):
        text = f"timed out after {timeout:g}s connecting to {url}"
    elif isinstance(exc, httpx.TimeoutException):
        text = f"no response within {timeout:g}s from {url}"
    elif isinstance(exc, httpx.ConnectError):
        text = f"could not connect to {url}: {reason}"
    else:
        text = f"connection to {url} failed before a response: {reason}"
    return GraphError(text, status=None, kind=ErrorKind.RETRY)
