"""End-to-end delivery throughput: capi-bridge against Meta's facebook-business SDK.

    python benchmarks/delivery.py [--events 100000] [--sdk-common 2000] [--runs 1]

Every figure is "from the first event handed over until the server has acknowledged all of
them", on the same realistic website events (raw e-mail, phone, names, external id, IP, user
agent, fbp/fbc, URL, value/currency/contents), against the same minimal loopback server: a
separate process that acknowledges each POST at once without parsing JSON (it counts events with
one ``bytes.count``), HTTP/1.1 keep-alive, one write per reply with TCP_NODELAY. Not the fake
Graph server: its validation would dominate the measurement.

Runs: capi-bridge ``enqueue()`` per event (each durable on return) and ``enqueue_many()`` in
chunks of 1000, each on a fresh outbox in a temporary directory; the SDK with one
``EventRequest`` of 1000 events at a time (best case) and one per event (common use). Prints
events/s, the ratios and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

TOKEN = "bench-token"

# --- the ack server (runs in its own process) -------------------------------------------------


class _Ack(socketserver.StreamRequestHandler):
    count = 0
    lock = threading.Lock()

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        while True:
            line = self.rfile.readline()
            if not line:
                return
            length = 0
            while (header := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                if header[:15].lower() == b"content-length:":
                    length = int(header[15:])
            body = self.rfile.read(length) if length else b""
            if line.startswith(b"GET /_count"):
                reply = json.dumps({"events": _Ack.count}).encode()
            else:
                n = body.count(b"event_name")
                with _Ack.lock:
                    _Ack.count += n
                reply = b'{"events_received":%d,"messages":[],"fbtrace_id":"x"}' % n
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(reply), reply)
            )


def serve() -> None:
    socketserver.ThreadingTCPServer.daemon_threads = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Ack) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


def acknowledged(url: str) -> int:
    with urllib.request.urlopen(url + "/_count") as response:
        return int(json.load(response)["events"])


def wait_acknowledged(url: str, target: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while acknowledged(url) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"server acknowledged {acknowledged(url)} of {target} events")
        time.sleep(0.001)


# --- the runs ---------------------------------------------------------------------------------


def events(n: int, prefix: str) -> list[dict[str, Any]]:
    from helpers.delivery_worker import make_event

    return [make_event(i, prefix) for i in range(n)]


def run_bridge(url: str, batch: list[dict[str, Any]], many: bool) -> dict[str, float]:
    from capi_bridge.bridge import Bridge
    from capi_bridge.settings import Settings

    with tempfile.TemporaryDirectory(prefix="capi-bench-") as tmp:
        settings = Settings(
            pixel_id="1234567890",
            access_token=TOKEN,
            graph_url=url,
            outbox_path=os.path.join(tmp, "outbox.sqlite3"),
        )
        bridge = Bridge(settings)
        base = acknowledged(url)
        started = time.perf_counter()
        if many:
            for start in range(0, len(batch), 1000):
                bridge.enqueue_many(batch[start : start + 1000])
        else:
            enqueue = bridge.enqueue
            for event in batch:
                enqueue(event)
        accepted = time.perf_counter()
        if not bridge.flush(600):
            raise RuntimeError(f"flush timed out: {bridge.stats()}")
        wait_acknowledged(url, base + len(batch))
        done = time.perf_counter()
        bridge.close(10)
    return {"accept_s": accepted - started, "total_s": done - started}


def run_sdk(url: str, batch: list[dict[str, Any]], per_request: int) -> float:
    import _sdk_baseline

    base = acknowledged(url)
    seconds = _sdk_baseline.run(batch, per_request)
    wait_acknowledged(url, base + len(batch))
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per run")
    parser.add_argument("--sdk-common", type=int, default=2000, help="events for SDK common use")
    parser.add_argument("--runs", type=int, default=1, help="runs of each; medians are reported")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}"
        return _measure(url, args)
    finally:
        server.terminate()
        server.wait()


def _measure(url: str, args: argparse.Namespace) -> int:
    import _sdk_baseline

    _sdk_baseline.init(url, TOKEN)
    n = args.events
    run_bridge(url, events(2000, "warm"), many=False)  # imports, first connections
    _sdk_baseline.run(events(200, "warm"), 100)
    rates: dict[str, list[float]] = {k: [] for k in ("enqueue", "accept", "many", "best", "common")}
    for run in range(args.runs):
        batch = events(n, f"r{run}")
        one = run_bridge(url, batch, many=False)
        rates["enqueue"].append(n / one["total_s"])
        rates["accept"].append(n / one["accept_s"])
        batch = events(n, f"m{run}")
        rates["many"].append(n / run_bridge(url, batch, many=True)["total_s"])
        rates["best"].append(n / run_sdk(url, events(n, f"b{run}"), 1000))
        common = events(args.sdk_common, f"c{run}")
        rates["common"].append(len(common) / run_sdk(url, common, 1))
        print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items()))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\nevents per run: {n:,} (SDK common use: {args.sdk_common:,}); medians of {args.runs}")
    print(f"  capi-bridge enqueue() per event, end to end: {med['enqueue']:>10,.0f} events/s")
    print(f"    (accepted, durable on return:             {med['accept']:>10,.0f} events/s)")
    print(f"  capi-bridge enqueue_many(1000), end to end:  {med['many']:>10,.0f} events/s")
    print(f"  SDK best case (1000 per EventRequest):       {med['best']:>10,.0f} events/s")
    print(f"  SDK common use (1 per EventRequest):         {med['common']:>10,.0f} events/s")
    ratios = {
        "enqueue_vs_sdk_best": med["enqueue"] / med["best"],
        "enqueue_vs_sdk_common": med["enqueue"] / med["common"],
        "many_vs_sdk_best": med["many"] / med["best"],
    }
    for name, value in ratios.items():
        print(f"  {name}: {value:.2f}x")
    print(json.dumps({"events": n, "runs": args.runs, "events_per_s": med, "ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
