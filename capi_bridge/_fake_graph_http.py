"""The fake Graph API's wire: a threaded HTTP/1.1 server that answers like Meta's, byte for byte.

Kept apart from :class:`~capi_bridge.testing.FakeGraph` (the state tests read and the rules it
applies) because this part is about sockets, not Meta: keep-alive connections that ``stop()``
must wake, replies sent in one write (two writes cost a delayed ACK per request), connections
aborted with a TCP reset for the ``reset`` fault, chunked bodies, and the control routes under
``/_fake/`` that let another process (the demo's shop, ``curl``) read the record and queue
faults. Private to :mod:`capi_bridge.testing`, its public face; production code never imports
this module.
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import socket
import struct
import sys
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from capi_bridge._fake_graph_record import (
    find_token,
    recorded_params,
    redact_headers,
    request_warnings,
)
from capi_bridge.fake_rules import (
    EDGE_PATH,
    Fault,
    GraphReject,
    check_batch,
    decode_data,
    invalid,
    parse_body,
)

if TYPE_CHECKING:
    from capi_bridge._fake_graph import FakeGraph


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive; every reply is built whole and sent with one write (see _reply)."""

    protocol_version = "HTTP/1.1"
    server: FakeServer

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
        token, source = find_token(self.headers.get("Authorization", ""), params, query)
        fault = fake._take_fault()
        reply = self._events_reply(pixel_id, query, params, problem, token, fault)
        fake._record(
            {
                "method": self.command,
                "path": self.path,
                "headers": redact_headers(self.headers),
                "token_source": source,
                "params": recorded_params(params),
                "peer": list(self.client_address[:2]),
                "warnings": request_warnings(source, params),
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
        extra = {"facebook-api-version": "v26.0", **(headers or {})}
        self._send(status, "application/json", body, extra)

    def _send_script(self, body: bytes) -> None:
        """Meta's pixel library stand-in, so a page needs no internet to run its ``fbq`` calls."""
        self._send(200, "text/javascript", body, {"Cache-Control": "no-store"})

    def _send(self, status: int, media_type: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Write one whole reply (see :meth:`_reply`): Content-Type, -Length and Date, then
        ``headers`` in order."""
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            f"Content-Type: {media_type}; charset=UTF-8",
            f"Content-Length: {len(body)}",
            f"Date: {self.server.fake.http_date()}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)

    def _drop(self) -> None:
        """Abort the connection with a TCP reset and no reply (SO_LINGER 0, then close)."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], fake: FakeGraph) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.fake = fake
        self.open_sockets: set[socket.socket] = set()
        self._sockets_lock = threading.Lock()
        super().__init__(address, Handler)

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
