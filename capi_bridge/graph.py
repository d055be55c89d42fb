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

import functools
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from capi_bridge._version import __version__
from capi_bridge.clock import ClockWatch
from capi_bridge.graph_replies import (
    ErrorKind,
    GraphError,
    GraphResult,
    classify,
    network_error,
    parse_response,
    parse_retry_after,
)
from capi_bridge.settings import DEFAULT_API_VERSION, DEFAULT_PARTNER_AGENT

if TYPE_CHECKING:
    from capi_bridge.settings import Settings

__all__ = [
    "MAX_EVENTS",
    "AsyncGraphClient",
    "ErrorKind",
    "GraphClient",
    "GraphError",
    "GraphResult",
    "appsecret_proof",
    "build_body",
    "build_body_encoded",
    "build_headers",
    "classify",
    "events_url",
    "network_error",
    "parse_response",
    "parse_retry_after",
]

logger = logging.getLogger("capi_bridge.graph")

#: Meta's documented ceiling for ``data``; a bigger batch is rejected whole.
MAX_EVENTS = 1000
USER_AGENT = f"capi-bridge/{__version__}"


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
    return build_body_joined(
        ",".join(events_json),
        len(events_json),
        partner_agent=partner_agent,
        test_event_code=test_event_code,
        proof=proof,
    )


def build_body_joined(
    joined: str,
    count: int,
    *,
    partner_agent: str | None,
    test_event_code: str | None = None,
    proof: str | None = None,
) -> bytes:
    """Like :func:`build_body_encoded` for ``count`` JSON object texts already joined by
    commas (the outbox hands a batch over joined, in one read)."""
    _checked_count(count)
    rest = _top_level(partner_agent, test_event_code, proof)
    tail = "," + _ENCODER.encode(rest)[1:] if rest else "}"
    return ('{"data":[' + joined + "]" + tail).encode()


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


def _log_result(pixel_id: str, count: int, result: GraphResult | GraphError) -> None:
    if isinstance(result, GraphResult):
        logger.debug("pixel %s: %d events sent, fbtrace_id=%s", pixel_id, count, result.fbtrace_id)
    else:
        logger.debug("pixel %s: %d events not sent: %s", pixel_id, count, result)


# --- clients ------------------------------------------------------------------------------------

_C = TypeVar("_C", bound="_ClientBase")


@functools.cache
def _verification() -> Any:
    """httpx's default TLS verification (certifi's CA bundle, or ``SSL_CERT_FILE``/``_DIR``),
    built once per process and shared by every client: building it parses the whole bundle,
    ~20 ms that each new client paid on its first event (every ``Bridge`` a test suite or a
    benchmark makes). An ``ssl.SSLContext`` is safe to share between clients and threads."""
    return httpx.create_ssl_context()


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
            verify=_verification(),
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
        return self.send_joined(
            pixel_id, ",".join(events_json), len(events_json), test_event_code=test_event_code
        )

    def send_joined(
        self, pixel_id: str, joined: str, count: int, *, test_event_code: str | None = None
    ) -> GraphResult:
        """:meth:`send` for ``count`` JSON object texts already joined by commas."""
        url = events_url(self._graph_url, self._api_version, pixel_id)
        body = build_body_joined(
            joined,
            count,
            partner_agent=self._partner_agent,
            test_event_code=test_event_code,
            proof=self._proof,
        )
        return self._post(pixel_id, count, url, body)

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
