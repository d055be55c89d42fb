"""The fake Graph API's state and judgement: what it accepted, what it was sent, what it refuses.

:class:`FakeGraph` is the object tests hold (published as :class:`capi_bridge.testing.FakeGraph`,
documented there). It owns everything handler threads and the test thread share, under one
lock and condition, so a test waits for a condition instead of sleeping; it applies Meta's
authorization order and queues the faults. Sockets live in :mod:`capi_bridge._fake_graph_http`,
Meta's body rules in :mod:`capi_bridge.fake_rules`. Production code never imports this module.
"""

from __future__ import annotations

import collections
import dataclasses
import email.utils
import hmac
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from capi_bridge._fake_graph_http import FakeServer
from capi_bridge.fake_rules import CODE_MESSAGES, Fault, GraphReject
from capi_bridge.graph import appsecret_proof


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
        self._server: FakeServer | None = None
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
            self._server = FakeServer(self._address, self)
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
