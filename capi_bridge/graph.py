"""The Graph API client: one POST of up to 1000 events to ``/{pixel_id}/events``.

Two clients, :class:`GraphClient` (sync, for the delivery thread) and :class:`AsyncGraphClient`,
share every byte of request building and response parsing (:func:`build_body`,
:func:`parse_response`); only the transport call differs. Every failure, from a refused
connection to Meta's error envelope, becomes one :class:`GraphError` whose :attr:`~GraphError.kind`
tells the caller what to do next (retry, pause for credentials, drop the batch, fix the setup).

The access token travels only in the ``Authorization`` header. Meta's own SDK puts it in the URL,
where every proxy and access log records it; nothing here ever logs or formats it.
"""

from __future__ import annotations

import email.utils
import enum
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from capi_bridge._version import __version__
from capi_bridge.clock import ClockWatch
from capi_bridge.errors import CapiBridgeError
from capi_bridge.settings import DEFAULT_API_VERSION, DEFAULT_PARTNER_AGENT

if TYPE_CHECKING:
    from capi_bridge.settings import Settings

logger = logging.getLogger("capi_bridge.graph")

#: Meta's documented ceiling for ``data``; a bigger batch is rejected whole.
MAX_EVENTS = 1000
USER_AGENT = f"capi-bridge/{__version__}"

_RETRY_CODES = frozenset({1, 2, 4, 17, 341, 368})
_AUTH_CODES = frozenset({102, 190})
# 803 "alias does not exist" and 2500 "unknown path components": the URL names no events edge.
_CONFIG_CODES = frozenset({3, 10, 803, 2500, *range(200, 300)})
_PIXEL_SUBCODE = 33


def _jsonable(obj: object) -> Any:
    """Callers may pass any Mapping (e.g. a frozen view); the C encoder only knows dict."""
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"{type(obj).__name__} cannot be sent to the Graph API as JSON")


# Built once: json.dumps() with non-default options constructs a new encoder on every call,
# which shows up on the hot path of the benchmark.
_ENCODER = json.JSONEncoder(
    separators=(",", ":"), check_circular=False, allow_nan=False, default=_jsonable
)


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


def appsecret_proof(app_secret: str, access_token: str) -> str:
    """HMAC-SHA256(app_secret, token) in hex: proves the caller also holds the app secret."""
    return hmac.new(app_secret.encode(), access_token.encode(), hashlib.sha256).hexdigest()


def _checked_count(count: int) -> None:
    if not count:
        raise ValueError("no events to send: Meta requires at least one event in data")
    if count > MAX_EVENTS:
        raise ValueError(f"{count} events in one request; Meta accepts at most {MAX_EVENTS}")


def _top_level(
    partner_agent: str | None, test_event_code: str | None, proof: str | None
) -> dict[str, Any]:
    """The fields besides ``data``; optional ones are left out rather than sent empty."""
    fields = {"partner_agent": partner_agent, "test_event_code": test_event_code}
    fields["appsecret_proof"] = proof
    return {key: value for key, value in fields.items() if value}


def build_body(
    events: Sequence[Mapping[str, Any]],
    *,
    partner_agent: str | None,
    test_event_code: str | None = None,
    proof: str | None = None,
) -> bytes:
    """The compact JSON body of one POST; refuses (ValueError) what Meta would reject whole."""
    _checked_count(len(events))
    body = {"data": events if isinstance(events, list) else list(events)}
    body.update(_top_level(partner_agent, test_event_code, proof))
    return _ENCODER.encode(body).encode()


def build_body_encoded(
    events_json: Sequence[str],
    *,
    partner_agent: str | None,
    test_event_code: str | None = None,
    proof: str | None = None,
) -> bytes:
    """Like :func:`build_body` for events already encoded as JSON object texts.

    The outbox stores each event's compact JSON; splicing it into the body saves a parse and
    a re-encode per event on the delivery path. The texts must be JSON objects (not checked).
    """
    _checked_count(len(events_json))
    rest = _top_level(partner_agent, test_event_code, proof)
    tail = "," + _ENCODER.encode(rest)[1:] if rest else "}"
    return ('{"data":[' + ",".join(events_json) + "]" + tail).encode()


def build_headers(access_token: str) -> dict[str, str]:
    """Per-client headers; the token goes here and never into the URL or the body."""
    if not access_token or not access_token.strip():
        raise ValueError("an access token is required")
    return {
        "Authorization": f"Bearer {access_token}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }


def events_url(graph_url: str, api_version: str, pixel_id: str) -> str:
    """The edge URL; a non-numeric pixel id is refused so it cannot rewrite the path."""
    if not pixel_id.isdigit():
        raise ValueError(f"{pixel_id!r} is not a pixel id (digits only)")
    return f"{graph_url}/{api_version}/{pixel_id}/events"


# --- response parsing (shared) ------------------------------------------------------------------


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


def _log_result(pixel_id: str, count: int, result: GraphResult | GraphError) -> None:
    if isinstance(result, GraphResult):
        logger.debug("pixel %s: %d events sent, fbtrace_id=%s", pixel_id, count, result.fbtrace_id)
    else:
        logger.debug("pixel %s: %d events not sent: %s", pixel_id, count, result)


# --- clients ------------------------------------------------------------------------------------

_C = TypeVar("_C", bound="_ClientBase")


class _ClientBase:
    """Construction, ``repr`` and ``from_settings`` common to both clients."""

    def __init__(
        self,
        access_token: str,
        *,
        graph_url: str = "https://graph.facebook.com",
        api_version: str = DEFAULT_API_VERSION,
        app_secret: str | None = None,
        timeout: float = 10.0,
        partner_agent: str | None = DEFAULT_PARTNER_AGENT,
        clock_watch: ClockWatch | None = None,
    ) -> None:
        """``clock_watch`` receives Meta's ``Date`` of every answer (:mod:`capi_bridge.clock`);
        by default the client keeps its own, :attr:`clock_watch`."""
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if not re.fullmatch(r"https?://\S+", graph_url):
            raise ValueError(f"graph_url {graph_url!r} is not an http(s) URL")
        self._graph_url = graph_url.rstrip("/")
        self._api_version = api_version
        self._timeout = float(timeout)
        self._partner_agent = partner_agent
        self._proof = appsecret_proof(app_secret, access_token) if app_secret else None
        self.clock_watch = clock_watch or ClockWatch()
        # Explicit timeouts: Meta's SDK waits forever by default, which stalls a delivery thread.
        self._open(
            headers=build_headers(access_token),
            timeout=httpx.Timeout(self._timeout),
            follow_redirects=False,
        )

    def _open(self, **options: Any) -> None:
        raise NotImplementedError

    @classmethod
    def from_settings(
        cls: type[_C], settings: Settings, *, clock_watch: ClockWatch | None = None
    ) -> _C:
        """A client configured from :class:`~capi_bridge.settings.Settings`."""
        return cls(
            settings.access_token,
            graph_url=settings.graph_url,
            api_version=settings.api_version,
            app_secret=settings.app_secret,
            timeout=settings.request_timeout,
            partner_agent=settings.partner_agent,
            clock_watch=clock_watch,
        )

    def _prepare(
        self, pixel_id: str, events: Sequence[Mapping[str, Any]], test_event_code: str | None
    ) -> tuple[str, bytes]:
        url = events_url(self._graph_url, self._api_version, pixel_id)
        body = build_body(
            events,
            partner_agent=self._partner_agent,
            test_event_code=test_event_code,
            proof=self._proof,
        )
        return url, body

    def _failed(self, pixel_id: str, count: int, exc: httpx.TransportError, url: str) -> GraphError:
        error = network_error(exc, url, self._timeout)
        _log_result(pixel_id, count, error)
        return error

    def __repr__(self) -> str:
        proof = "yes" if self._proof else "no"
        return (
            f"{type(self).__name__}(graph_url={self._graph_url!r}, "
            f"api_version={self._api_version!r}, appsecret_proof={proof})"
        )


class GraphClient(_ClientBase):
    """Synchronous client with one pooled keep-alive ``httpx.Client`` per instance."""

    _http: httpx.Client

    def _open(self, **options: Any) -> None:
        self._http = httpx.Client(**options)

    def send(
        self,
        pixel_id: str,
        events: Sequence[Mapping[str, Any]],
        *,
        test_event_code: str | None = None,
    ) -> GraphResult:
        """POST ``events`` to the pixel; returns Meta's answer or raises :class:`GraphError`.

        Raises ValueError, before any I/O, for an empty batch, more than 1000 events or a
        pixel id that is not numeric: those are caller bugs, not delivery failures.
        """
        url, body = self._prepare(pixel_id, events, test_event_code)
        return self._post(pixel_id, len(events), url, body)

    def send_encoded(
        self,
        pixel_id: str,
        events_json: Sequence[str],
        *,
        test_event_code: str | None = None,
    ) -> GraphResult:
        """:meth:`send` for events given as JSON object texts (one per event), spliced as is."""
        url = events_url(self._graph_url, self._api_version, pixel_id)
        body = build_body_encoded(
            events_json,
            partner_agent=self._partner_agent,
            test_event_code=test_event_code,
            proof=self._proof,
        )
        return self._post(pixel_id, len(events_json), url, body)

    def _post(self, pixel_id: str, count: int, url: str, body: bytes) -> GraphResult:
        try:
            response = self._http.post(url, content=body)
        except httpx.TransportError as exc:
            raise self._failed(pixel_id, count, exc, url) from exc
        return _finish(pixel_id, count, response, self.clock_watch)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GraphClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncGraphClient(_ClientBase):
    """The same client for asyncio apps: the same body bytes, the same errors."""

    _http: httpx.AsyncClient

    def _open(self, **options: Any) -> None:
        self._http = httpx.AsyncClient(**options)

    async def send(
        self,
        pixel_id: str,
        events: Sequence[Mapping[str, Any]],
        *,
        test_event_code: str | None = None,
    ) -> GraphResult:
        """POST ``events`` to the pixel; returns Meta's answer or raises :class:`GraphError`."""
        url, body = self._prepare(pixel_id, events, test_event_code)
        try:
            response = await self._http.post(url, content=body)
        except httpx.TransportError as exc:
            raise self._failed(pixel_id, len(events), exc, url) from exc
        return _finish(pixel_id, len(events), response, self.clock_watch)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncGraphClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _finish(
    pixel_id: str, count: int, response: httpx.Response, clock_watch: ClockWatch
) -> GraphResult:
    clock_watch.observe(response.headers.get("date"))  # Meta's time, whatever the answer
    try:
        result = parse_response(response.status_code, response.headers, response.content)
    except GraphError as error:
        _log_result(pixel_id, count, error)
        raise
    _log_result(pixel_id, count, result)
    return result
