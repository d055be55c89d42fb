"""A fake Graph API: a real HTTP server on loopback that answers ``/{pixel_id}/events`` like Meta.

Tests, the demo and the benchmarks point capi-bridge, and Meta's own SDK, at it; nothing ever
reaches Meta. It enforces what Meta enforces (pixel-capi.md §2-§3: whole-batch rejection, the
7-day window, hashed customer information, too-broad matching keys, unknown keys, 1000 events)
and deliberately does not import ``capi_bridge.validation``: a bug in our own guard must not be
mirrored here, or the fake would agree with it. Faults (5xx, 429, slow answers, dropped
connections, any Graph code) are queued through :meth:`FakeGraph.add_fault` or ``/_fake/faults``.
``GET /fbevents.js`` answers with ``static/fbevents-stub.js``, Meta's pixel library stand-in, so
a page runs its ``fbq`` calls without internet (:attr:`FakeGraph.pixel_script_url`). Every answer
carries a ``Date`` header, as Meta's do; :attr:`FakeGraph.clock_skew` sets its clock apart from
this machine's (Date, and the event-time rules), as a server with a wrong clock would see Meta.
Production code never imports this module.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import email.utils
import functools
import hmac
import json
import secrets
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from capi_bridge.fake_rules import (
    CODE_MESSAGES,
    EDGE_PATH,
    TOP_LEVEL_KEYS,
    Fault,
    GraphReject,
    check_batch,
    decode_data,
    invalid,
    parse_body,
)
from capi_bridge.graph import appsecret_proof

# --- the HTTP server ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive; every reply is built whole and sent with one write (see _reply)."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line; ``FakeGraph.requests`` is the record."""

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        fake = self.server.fake
        if path == "/_fake/events":
            self._reply(200, {"events": fake.events})
        elif path == "/_fake/requests":
            self._reply(200, {"requests": fake.requests})
        elif path in PIXEL_SCRIPT_PATHS:
            self._read_body()
            self._send_script(_pixel_stub())
        else:
            self._read_body()
            self._reply(*_error_reply(invalid("(#100) Unsupported get request.")))

    def do_DELETE(self) -> None:
        path, fake = urlsplit(self.path).path, self.server.fake
        actions = {"/_fake/events": fake.clear_events, "/_fake/requests": fake.clear_requests}
        actions["/_fake/faults"] = fake.clear_faults
        self._read_body()
        if path in actions:
            actions[path]()
            self._reply(200, {"cleared": path.rsplit("/", 1)[1]})
        else:
            self._reply(404, {"error": f"no control endpoint {path}"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        edge = EDGE_PATH.fullmatch(url.path)
        if url.path == "/_fake/faults":
            self._post_fault(self._read_body())
        elif edge:
            self._handle_events(edge.group(2), parse_qs(url.query))
        else:
            self._read_body()
            reject = GraphReject(400, 2500, f"Unknown path components: {url.path}")
            self._reply(*_error_reply(reject))

    def _handle_events(self, pixel_id: str, query: dict[str, list[str]]) -> None:
        """One POST to the edge: record it, apply a queued fault or validate like Meta."""
        fake = self.server.fake
        raw = self._read_body()
        try:
            params, problem = parse_body(self.headers.get("Content-Type", ""), raw), None
        except GraphReject as exc:
            params, problem = {}, exc
        token, source = _find_token(self.headers.get("Authorization", ""), params, query)
        fault = fake._take_fault()
        reply = self._events_reply(pixel_id, query, params, problem, token, fault)
        fake._record(
            {
                "method": self.command,
                "path": self.path,
                "headers": _redact_headers(self.headers),
                "token_source": source,
                "params": _recorded_params(params),
                "peer": list(self.client_address[:2]),
                "warnings": _warnings(source, params),
                "fault": fault.mode if fault else None,
                "status": reply[0] if reply else None,
            }
        )
        if reply is None:
            self._drop()
        else:
            self._reply(*reply)

    def _events_reply(
        self,
        pixel_id: str,
        query: dict[str, list[str]],
        params: dict[str, Any],
        problem: GraphReject | None,
        token: str | None,
        fault: Fault | None,
    ) -> tuple[int, Any, dict[str, str]] | None:
        """The reply to send, or None to drop the connection without one."""
        fake = self.server.fake
        if fault is not None and fault.mode in ("status", "code"):
            return _error_reply(fault.reject())
        if fault is not None and (fault.mode == "reset" or fake._hold(fault.seconds)):
            return None  # a reset, or stop() cut a delay short
        try:
            fake._authorize(token, params, query, pixel_id)
            if problem is not None:
                raise problem
            events = decode_data(params.get("data"))
            check_batch(events, fake.now())
        except GraphReject as reject:
            return _error_reply(reject)
        fake._accept(events, pixel_id, params.get("test_event_code"))
        trace = _trace_id()
        body = {"events_received": len(events), "messages": [], "fbtrace_id": trace}
        return 200, body, {"x-fb-trace-id": trace}

    def _post_fault(self, raw: bytes) -> None:
        try:
            spec = json.loads(raw or b"null")
            if not isinstance(spec, dict):
                raise ValueError('send a JSON object such as {"mode": "status", "status": 500}')
            fault = self.server.fake.add_fault(**spec)
        except (ValueError, TypeError) as exc:
            self._reply(400, {"error": str(exc)})
            return
        self._reply(201, {"queued": vars(fault), "pending": self.server.fake.pending_faults})

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return bytes(body)

    def _reply(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        """Status line, headers and body in one ``write``: two writes on a keep-alive connection
        make the client wait for a delayed ACK (~40 ms) on every request."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            "Content-Type: application/json; charset=UTF-8",
            f"Content-Length: {len(body)}",
            f"Date: {self.server.fake.http_date()}",
            "facebook-api-version: v26.0",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)

    def _send_script(self, body: bytes) -> None:
        """Meta's pixel library stand-in, so a page needs no internet to run its ``fbq`` calls."""
        lines = [
            "HTTP/1.1 200 OK",
            "Content-Type: text/javascript; charset=UTF-8",
            f"Content-Length: {len(body)}",
            f"Date: {self.server.fake.http_date()}",
            "Cache-Control: no-store",
        ]
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)

    def _drop(self) -> None:
        """Abort the connection with a TCP reset and no reply (SO_LINGER 0, then close)."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], fake: FakeGraph) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.fake = fake
        self.open_sockets: set[socket.socket] = set()
        self._sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._sockets_lock:
            self.open_sockets.add(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self._sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def close_open_sockets(self) -> None:
        """Wake handler threads parked on idle keep-alive connections so they end."""
        with self._sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)  # a bug in the fake: show it


#: Where the fake serves ``static/fbevents-stub.js`` (Meta's own path, and its locale form).
PIXEL_SCRIPT_PATHS = frozenset({"/fbevents.js", "/en_US/fbevents.js"})


@functools.cache
def _pixel_stub() -> bytes:
    return (resources.files("capi_bridge") / "static" / "fbevents-stub.js").read_bytes()


def _trace_id() -> str:
    return secrets.token_urlsafe(8)


def _error_reply(reject: GraphReject) -> tuple[int, Any, dict[str, str]]:
    trace = _trace_id()
    return reject.status, reject.envelope(trace), {"x-fb-trace-id": trace, **reject.headers}


def _find_token(
    authorization: str, params: Mapping[str, Any], query: Mapping[str, list[str]]
) -> tuple[str | None, str | None]:
    """The token and where it came from; Meta reads all three places."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() in ("bearer", "oauth") and value.strip():
        return value.strip(), "authorization"
    if params.get("access_token"):
        return str(params["access_token"]), "body"
    if query.get("access_token"):
        return query["access_token"][-1], "query"
    return None, None


def _warnings(source: str | None, params: Mapping[str, Any]) -> list[str]:
    """Things Meta accepts but capi-bridge must never do; tests assert this list is empty."""
    warnings = [
        f"unknown top-level parameter {key!r}" for key in params if key not in TOP_LEVEL_KEYS
    ]
    if source == "query":
        warnings.append(
            "access_token was sent in the URL query string, where proxies and access logs "
            "record it; send it in an Authorization: Bearer header"
        )
    return warnings


def _recorded_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level fields except the events; a body token is kept as a marker, not a value."""
    kept = {key: value for key, value in params.items() if key != "data"}
    if "access_token" in kept:
        kept["access_token"] = "[redacted]"
    return kept


def _redact_headers(headers: Any) -> dict[str, str]:
    redacted = {}
    for name, value in headers.items():
        if name.lower() == "authorization":
            value = f"{value.split(' ', 1)[0]} [redacted]"
        redacted[name] = value
    return redacted


# --- the public object -------------------------------------------------------------------------


class FakeGraph:
    """A started-on-demand fake Graph API; use as a context manager or start()/stop().

    ``token=None`` accepts any token and ``pixels=None`` any numeric pixel id. With
    ``app_secret`` set, ``appsecret_proof`` is required and checked. All state is guarded by
    one lock: handler threads write it while the test thread reads it.
    """

    def __init__(
        self,
        *,
        token: str | None = "test-token",
        pixels: Iterable[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        app_secret: str | None = None,
        clock_skew: float = 0.0,
    ) -> None:
        self.token = token
        #: Seconds the fake's clock is ahead of this machine's (negative: behind); settable.
        self.clock_skew = clock_skew
        self.pixels = None if pixels is None else frozenset(str(p) for p in pixels)
        self.app_secret = app_secret
        self._address = (host, port)
        self._changed = threading.Condition()
        self._events: list[dict[str, Any]] = []
        self._requests: list[dict[str, Any]] = []
        self._faults: collections.deque[Fault] = collections.deque()
        self._stopping = threading.Event()
        self._releases = 0  # release_held() calls: a delay ends when this changes
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FakeGraph:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._server else "stopped"
        return f"FakeGraph({where}, events={len(self._events)})"

    def start(self) -> FakeGraph:
        if self._server is None:
            self._stopping.clear()
            self._server = _Server(self._address, self)
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name="fake-graph", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut short any delay fault and close idle keep-alive connections."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()  # delays end now
        server.shutdown()
        server.server_close()
        server.close_open_sockets()
        if self._thread is not None:
            self._thread.join()

    @property
    def url(self) -> str:
        """The base URL to use as ``graph_url`` (``CAPI_BRIDGE_GRAPH_URL``)."""
        if self._server is None:
            raise RuntimeError("FakeGraph is not started")
        host, port = self._server.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def pixel_script_url(self) -> str:
        """The local stand-in for Meta's fbevents.js (``CAPI_BRIDGE_PIXEL_SCRIPT_URL``)."""
        return self.url + "/fbevents.js"

    @property
    def events(self) -> list[dict[str, Any]]:
        """Accepted events, as sent plus ``pixel_id``, ``received_at`` and ``test_event_code``.

        A fresh list of shallow copies: appending to it or replacing keys is safe."""
        with self._changed:
            return [dict(event) for event in self._events]

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every POST to the edge: method, path, headers (Authorization redacted), warnings..."""
        with self._changed:
            return [dict(request) for request in self._requests]

    def wait_for_events(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` events were accepted; False on timeout (no polling)."""
        return self.wait_for(lambda fake: len(fake._events) >= count, timeout)

    def wait_for(self, predicate: Callable[[FakeGraph], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(self)`` holds, checked again whenever a request is answered
        or a fault taken (``lambda g: g.pending_faults == 0``: a delay fault now holds a
        request); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def release_held(self) -> None:
        """End every delay fault now: the requests they hold are answered as usual."""
        with self._changed:
            self._releases += 1
            self._changed.notify_all()

    def clear(self) -> None:
        self.clear_events()
        self.clear_requests()

    def clear_events(self) -> None:
        with self._changed:
            self._events.clear()

    def clear_requests(self) -> None:
        with self._changed:
            self._requests.clear()

    def add_fault(self, **fault: Any) -> Fault:
        """Queue a fault (see the module docstring); ValueError for a malformed spec."""
        parsed = Fault.parse(fault)
        with self._changed:
            self._faults.append(parsed)
        return dataclasses.replace(parsed)

    def clear_faults(self) -> None:
        with self._changed:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """How many more event POSTs will meet a fault."""
        with self._changed:
            return sum(fault.count for fault in self._faults)

    def now(self) -> float:
        """The fake's clock: what Meta's would read (this machine's plus :attr:`clock_skew`)."""
        return time.time() + self.clock_skew

    def http_date(self) -> str:
        """The ``Date`` header of its answers (RFC 9110 format, GMT), from :meth:`now`."""
        return email.utils.formatdate(self.now(), usegmt=True)

    # --- used by the handler threads -----------------------------------------------------------

    def _hold(self, seconds: float) -> bool:
        """Wait out a delay fault; True when stop() cut it short (then no answer is sent),
        False once it elapsed or :meth:`release_held` ended it."""
        with self._changed:
            generation = self._releases
            self._changed.wait_for(
                lambda: self._stopping.is_set() or self._releases != generation, seconds
            )
        return self._stopping.is_set()

    def _take_fault(self) -> Fault | None:
        with self._changed:
            if not self._faults:
                return None
            fault = self._faults[0]
            fault.count -= 1
            if fault.count == 0:
                self._faults.popleft()
            self._changed.notify_all()
            return fault

    def _authorize(
        self,
        token: str | None,
        params: Mapping[str, Any],
        query: Mapping[str, list[str]],
        pixel: str,
    ) -> None:
        """Meta's order: the token (190), then the proof, then the pixel (100/33)."""
        if not token or (self.token is not None and not _same(token, self.token)):
            raise GraphReject(401, 190, CODE_MESSAGES[190])
        if self.app_secret is not None:
            proof = params.get("appsecret_proof") or (query.get("appsecret_proof") or [""])[-1]
            if not _same(str(proof), appsecret_proof(self.app_secret, token)):
                raise GraphReject(
                    400, 100, "Invalid appsecret_proof provided in the API argument",
                    type="GraphMethodException",
                )  # fmt: skip
        if not pixel.isdigit() or (self.pixels is not None and pixel not in self.pixels):
            raise GraphReject(
                400, 100,
                f"Unsupported post request. Object with ID '{pixel}' does not exist, cannot be "
                "loaded due to missing permissions, or does not support this operation.",
                error_subcode=33, type="GraphMethodException",
            )  # fmt: skip

    def _accept(self, events: list[dict[str, Any]], pixel: str, test_event_code: Any) -> None:
        now = time.time()
        extra = {"pixel_id": pixel, "received_at": now, "test_event_code": test_event_code}
        with self._changed:
            self._events.extend({**event, **extra} for event in events)
            self._changed.notify_all()

    def _record(self, request: dict[str, Any]) -> None:
        request["received_at"] = time.time()
        with self._changed:
            self._requests.append(request)
            self._changed.notify_all()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def serve_forever(
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    pixels: Iterable[str] | None = None,
) -> int:
    """Run a FakeGraph until Ctrl-C or SIGTERM (the ``capi-bridge fake-graph`` command)."""
    fake = FakeGraph(token=token, pixels=pixels, host=host, port=port)
    try:
        fake.start()
    except OSError as exc:
        print(f"fake-graph: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    restore = _stop_on_sigterm()
    try:
        print(_banner(fake, token, pixels), flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        restore()
        fake.stop()
    print(f"fake-graph: stopped ({len(fake.events)} events accepted)", flush=True)
    return 0


_EXAMPLE_FAULT = '{"mode": "status", "status": 500, "count": 3}'


def _banner(fake: FakeGraph, token: str | None, pixels: Iterable[str] | None) -> str:
    accepts = "any token" if token is None else "only the token given with --token"
    pixel_text = (
        "any pixel id" if pixels is None else "pixels " + ", ".join(sorted(fake.pixels or ()))
    )
    return "\n".join(
        [
            f"fake Graph API listening on {fake.url} ({accepts}; {pixel_text})",
            "point capi-bridge at it (never reaches Meta):",
            f"  export CAPI_BRIDGE_GRAPH_URL={fake.url}",
            f"pixel library stand-in (no internet needed): {fake.pixel_script_url}",
            f"inspect: curl {fake.url}/_fake/events   |   curl {fake.url}/_fake/requests",
            f"faults:  curl -X POST {fake.url}/_fake/faults -d '{_EXAMPLE_FAULT}'",
            "press Ctrl-C to stop",
        ]
    )


def _stop_on_sigterm() -> Callable[[], object]:
    """Turn SIGTERM into KeyboardInterrupt (main thread only); returns the undo function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)
