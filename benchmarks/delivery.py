"""End-to-end delivery throughput and recovery, per store, against Meta's facebook-business SDK.

    python benchmarks/delivery.py [--store sqlite|postgresql] [--events 100000] [--runs 1]
        [--outage 60] [--backlog 1000000] [--dispatcher process|thread|worker]
        [--postgres-url URL]

Every throughput figure is "from the first event handed over until the server has acknowledged
all of them", on the same realistic website events (raw e-mail, phone, names, external id, IP,
user agent, fbp/fbc, URL, value/currency/contents), against the same minimal loopback server: a
separate process that acknowledges each POST at once without parsing JSON (it counts events with
one ``bytes.count``), HTTP/1.1 keep-alive, one write per reply with TCP_NODELAY. Not the fake
Graph server: its validation would dominate the measurement.

In one run, on the chosen store (a fresh SQLite file, or a fresh schema dropped afterwards):
``enqueue()`` per event from 1 process and from 4 processes at once (each durable on return),
``enqueue_many()`` in chunks of 1000; and the SDK with one ``EventRequest`` of 1000 events (best
case) and one per event (common use). Then the drain time after an outage: the ack server
answers 500 for ``--outage`` seconds while 3,000 events wait; the figure is the time from its
recovery until it has acknowledged all of them. Then the backlog: ``--backlog`` events (a
million by default) stored with ``enqueue_many`` while the server answers 500, in a process of
their own, whose peak RSS is the figure; then the server recovers and the time until all are
acknowledged is the drain. Prints events/s, the three ratios of issue 14 (each taken within one
run, then the median and range over ``--runs``) with their goals, and one JSON line.

Who delivers in the single-process enqueue runs: ``--dispatcher process`` (the default, what
``delivery="auto"`` means with SQLite: the app process starts a delivery process of its own,
and its start is inside the measured time), ``thread`` (the app process's dispatcher thread,
what ``auto`` means with PostgreSQL) or ``worker`` (a ``capi-bridge worker`` started before the
run). The 4-process run, the outage and the backlog use the library's default. With a delivery
process, the backlog's peak RSS is the app process's and the delivery process's, summed.
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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

TOKEN = "bench-token"
POSTGRES_URL = os.environ.get(
    "CAPI_BRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

# --- the ack server (runs in its own process) -------------------------------------------------


class _Ack(socketserver.StreamRequestHandler):
    count = 0
    down = False  # an outage: every POST answers 500
    lock = threading.Lock()
    counted = threading.Condition(lock)  # notified whenever ``count`` grows

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
            status = b"200 OK"
            if line.startswith(b"GET /_count"):
                reply = json.dumps({"events": _Ack.count}).encode()
            elif line.startswith(b"GET /_wait/"):  # /_wait/<target>/<seconds>: a long poll
                target, seconds = (float(x) for x in line.split()[1].split(b"/")[2:4])
                with _Ack.counted:
                    _Ack.counted.wait_for(lambda: _Ack.count >= target, seconds)  # noqa: B023
                    reply = json.dumps({"events": _Ack.count}).encode()
            elif line.startswith((b"GET /_down", b"GET /_up")):
                _Ack.down = line.startswith(b"GET /_down")
                reply = b"{}"
            elif _Ack.down:
                status, reply = (
                    b"500 Internal Server Error",
                    b'{"error":{"message":"down","code":2}}',
                )
            else:
                n = body.count(b"event_name")
                with _Ack.counted:
                    _Ack.count += n
                    _Ack.counted.notify_all()
                reply = b'{"events_received":%d,"messages":[],"fbtrace_id":"x"}' % n
            self.wfile.write(
                b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (status, len(reply), reply)
            )


def serve() -> None:
    socketserver.ThreadingTCPServer.daemon_threads = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Ack) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


def control(url: str, what: str) -> Any:
    with urllib.request.urlopen(f"{url}/_{what}") as response:
        return json.load(response)


def acknowledged(url: str) -> int:
    return int(control(url, "count")["events"])


def wait_acknowledged(url: str, target: int, timeout: float = 600) -> None:
    """Block until the server has acknowledged ``target`` events: one long poll, which the
    server answers the moment its count gets there. Not a poll every millisecond: that loop
    and the server's answers to it took a good part of the 2 cores the measured processes
    share, during the whole of every run."""
    deadline = time.monotonic() + timeout
    while (got := control(url, f"wait/{target}/5"))["events"] < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"server acknowledged {got['events']} of {target} events")


# --- stores -----------------------------------------------------------------------------------


@contextmanager
def fresh_store(kind: str, pg_url: str) -> Iterator[dict[str, str]]:
    """Settings naming a new, empty outbox of ``kind``; removed afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="capi-bench-") as tmp:
            yield {"outbox_path": os.path.join(tmp, "outbox.sqlite3")}
        return
    import psycopg

    schema = "bench_" + uuid.uuid4().hex[:12]
    try:
        yield {"outbox_url": pg_url, "outbox_schema": schema}
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def make_bridge(url: str, where: dict[str, str], **options: Any) -> Any:
    from capi_bridge.bridge import Bridge
    from capi_bridge.settings import Settings

    settings = Settings(
        pixel_id="1234567890", access_token=TOKEN, graph_url=url, **where, **options
    )
    return Bridge(settings)


# --- the runs ---------------------------------------------------------------------------------


def events(n: int, prefix: str) -> list[dict[str, Any]]:
    from helpers.delivery_worker import make_event

    return [make_event(i, prefix) for i in range(n)]


@contextmanager
def worker_process(url: str, where: dict[str, str]) -> Iterator[None]:
    """``--dispatcher worker``: a ``capi-bridge worker`` on the same outbox delivers while the
    app process only stores (``CAPI_BRIDGE_DELIVERY=worker``, see capi_bridge/cli_worker.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPI_BRIDGE_")}
    env |= {
        "CAPI_BRIDGE_PIXEL_ID": "1234567890",
        "CAPI_BRIDGE_ACCESS_TOKEN": TOKEN,
        "CAPI_BRIDGE_GRAPH_URL": url,
    }
    env |= {f"CAPI_BRIDGE_{key.upper()}": value for key, value in where.items()}
    child = subprocess.Popen(
        [sys.executable, "-m", "capi_bridge.cli", "worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    if not child.stdout.readline().startswith("capi-bridge worker: delivering"):
        raise RuntimeError("capi-bridge worker did not start")
    try:
        yield
    finally:
        child.terminate()
        child.wait(60)


def run_bridge(
    url: str,
    where: dict[str, str],
    batch: list[dict[str, Any]],
    many: bool,
    delivery: str = "auto",
) -> float:
    """Seconds from the first event handed over until all are acknowledged; ``delivery`` as
    the setting ("worker": a ``capi-bridge worker`` runs beside this process)."""
    worker = delivery == "worker"
    if worker:
        with worker_process(url, where):
            return _run(url, make_bridge(url, where, delivery="worker"), batch, many)
    return _run(url, make_bridge(url, where, delivery=delivery), batch, many)


def _run(url: str, bridge: Any, batch: list[dict[str, Any]], many: bool) -> float:
    base = acknowledged(url)
    started = time.perf_counter()
    _hand_over(bridge, batch, many)
    # Our own dispatcher sends the partial rest at once when asked to flush; a delivery
    # process sends it when its linger is over. Either way the run ends when the server has
    # all of them.
    if bridge.settings.delivery_mode == "thread" and not bridge.flush(600):
        raise RuntimeError(f"flush timed out: {bridge.stats()}")
    wait_acknowledged(url, base + len(batch))
    done = time.perf_counter()
    bridge.close(10)
    return done - started


def _hand_over(bridge: Any, batch: list[dict[str, Any]], many: bool) -> None:
    """The measured part: every event handed to the bridge, in chunks of 1000 or one by one."""
    if many:
        for start in range(0, len(batch), 1000):
            bridge.enqueue_many(batch[start : start + 1000])
    else:
        enqueue = bridge.enqueue
        for event in batch:
            enqueue(event)


def producer(url: str, where_json: str, prefix: str, count: int) -> int:
    """One of several app processes (``--produce``): ready, then enqueue on "go"."""
    bridge = make_bridge(url, json.loads(where_json))
    batch = events(count, prefix)
    bridge.enqueue(batch[0])  # opens the connections and starts the dispatcher
    print("ready", flush=True)
    sys.stdin.readline()
    for event in batch[1:]:
        bridge.enqueue(event)
    ok = bridge.flush(600)
    bridge.close(10)
    return 0 if ok else 1


def start_ready(commands: list[list[str]]) -> list[subprocess.Popen[str]]:
    """Start one Python process per command (its arguments after the interpreter), with pipes
    for "go" and "ready", and wait until each has printed "ready"."""
    procs = [
        subprocess.Popen(
            [sys.executable, *command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for command in commands
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return procs


def run_processes(url: str, where: dict[str, str], n: int, processes: int, prefix: str) -> float:
    """``enqueue()`` from ``processes`` processes at once; seconds until all acknowledged."""
    base = acknowledged(url)
    share = n // processes
    here, where_json = os.path.abspath(__file__), json.dumps(where)
    procs = start_ready(
        [[here, "--produce", url, where_json, f"{prefix}{p}", str(share)] for p in range(processes)]
    )
    wait_acknowledged(url, base + processes)  # their first events
    started = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    wait_acknowledged(url, base + processes * share)
    seconds = time.perf_counter() - started
    for proc in procs:
        if proc.wait(60) != 0:
            raise RuntimeError("a producer process failed")
    return seconds


def drain_after_outage(url: str, kind: str, pg_url: str, outage: float, n: int = 3000) -> float:
    """Seconds from the end of an ``outage`` (500s) until ``n`` waiting events are acked."""
    with fresh_store(kind, pg_url) as where:
        bridge = make_bridge(url, where)
        base = acknowledged(url)
        control(url, "down")
        started = time.monotonic()
        try:
            bridge.enqueue_many(events(n, "outage"))
            time.sleep(max(0.0, outage - (time.monotonic() - started)))
        finally:
            control(url, "up")
        recovered = time.perf_counter()
        wait_acknowledged(url, base + n)
        seconds = time.perf_counter() - recovered
        bridge.close(10)
    return seconds


def backlog(url: str, where_json: str, n: int) -> int:
    """``--backlog-child``: store ``n`` events while the Graph API is down, then recover.

    Runs in a process of its own so its peak RSS is the bridge's, not the benchmark's. Events
    are made 1000 at a time (the app's own memory is not the figure) and handed to
    ``enqueue_many`` while every POST answers 500; then the server recovers and the figure is
    the time until all ``n`` are acknowledged. Prints one JSON line.
    """
    bridge = make_bridge(url, json.loads(where_json))
    base = acknowledged(url)
    control(url, "down")
    started = time.perf_counter()
    try:
        for start in range(0, n, 1000):
            batch = [_event(i, "backlog") for i in range(start, min(n, start + 1000))]
            bridge.enqueue_many(batch)
        stored = time.perf_counter() - started
        app_down, delivery_down = peak_rss_mb(), peak_rss_mb(delivery_pid(bridge))
    finally:
        control(url, "up")
    recovered = time.perf_counter()
    wait_acknowledged(url, base + n, timeout=3600)
    drain = time.perf_counter() - recovered
    app, delivery = peak_rss_mb(), peak_rss_mb(delivery_pid(bridge))
    bridge.close(10)
    print(
        json.dumps(
            {
                "events": n,
                "store_s": stored,
                "peak_rss_mb_down": app_down + delivery_down,
                "peak_rss_mb": app + delivery,
                "peak_rss_mb_app": app,
                "peak_rss_mb_delivery": delivery,
                "drain_s": drain,
            }
        ),
        flush=True,
    )
    return 0


def delivery_pid(bridge: Any) -> int | None:
    """The process delivering this bridge's SQLite outbox on this host, if one holds its
    worker lock (``delivery="process"``); None for PostgreSQL or a thread."""
    from capi_bridge.delivery.host_worker import delivery_pid as holder

    path = bridge.settings.outbox_path
    return holder(path) or None if path and not bridge.settings.outbox_url else None


def peak_rss_mb(pid: int | str | None = "self") -> float:
    """A process's peak RSS in MB (0 for ``None``): ``VmHWM``, the high-water mark of its own
    memory.

    Not ``getrusage().ru_maxrss``: on Linux a child started by fork and exec keeps the
    parent's peak there (the benchmark's process holds 100,000 events at that moment), which
    once reported 352 MB for a child that never passed 58 MB."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        if pid != "self":
            return 0.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _event(i: int, prefix: str) -> dict[str, Any]:
    from helpers.delivery_worker import make_event

    return make_event(i, prefix)


def run_backlog(url: str, kind: str, pg_url: str, n: int) -> dict[str, Any]:
    """The backlog figure, from a child process (see :func:`backlog`)."""
    with fresh_store(kind, pg_url) as where:
        out = subprocess.run(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--backlog-child",
                url,
                json.dumps(where),
                str(n),
            ],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def run_sdk(url: str, batch: list[dict[str, Any]], per_request: int) -> float:
    import _sdk_baseline

    base = acknowledged(url)
    seconds = _sdk_baseline.run(batch, per_request)
    wait_acknowledged(url, base + len(batch))
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--events", type=int, default=100_000, help="events per run")
    parser.add_argument("--sdk-common", type=int, default=2000, help="events for SDK common use")
    parser.add_argument("--runs", type=int, default=1, help="runs of each; medians are reported")
    parser.add_argument("--outage", type=float, default=60.0, help="outage seconds (0: skip)")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="database for postgresql")
    parser.add_argument(
        "--backlog", type=int, default=1_000_000, help="events stored while Graph is down (0: skip)"
    )
    parser.add_argument("--backlog-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument(
        "--dispatcher",
        choices=("process", "thread", "worker"),
        default="process",
        help="who delivers in the enqueue runs: a delivery process the app starts (the default,"
        " CAPI_BRIDGE_DELIVERY=auto with SQLite), the app's own dispatcher thread (=thread), or"
        " a `capi-bridge worker` process started before the run (=worker)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--produce", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    if args.backlog_child:
        url, where, count = args.backlog_child
        return backlog(url, where, int(count))
    if args.produce:
        url, where, prefix, count = args.produce
        return producer(url, where, prefix, int(count))
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
    n, kind = args.events, args.store
    with fresh_store(kind, args.postgres_url) as where:  # imports, first connections
        run_bridge(url, where, events(2000, "warm"), many=False)
    _sdk_baseline.run(events(200, "warm"), 100)
    names = ("enqueue", "enqueue_4p", "many", "best", "common")
    rates: dict[str, list[float]] = {k: [] for k in names}
    delivery = args.dispatcher  # a delivery process needs SQLite: auto picks threads on PG
    if kind != "sqlite" and delivery == "process":
        delivery = "auto"
    for run in range(args.runs):
        with fresh_store(kind, args.postgres_url) as where:
            apart = delivery
            batch = events(n, f"r{run}")
            rates["enqueue"].append(n / run_bridge(url, where, batch, False, apart))
        with fresh_store(kind, args.postgres_url) as where:
            rates["enqueue_4p"].append(n / run_processes(url, where, n, 4, f"p{run}-"))
        with fresh_store(kind, args.postgres_url) as where:
            batch = events(n, f"m{run}")
            rates["many"].append(n / run_bridge(url, where, batch, True, apart))
        rates["best"].append(n / run_sdk(url, events(n, f"b{run}"), 1000))
        common = events(args.sdk_common, f"c{run}")
        rates["common"].append(len(common) / run_sdk(url, common, 1))
        print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items()))
    med = {k: statistics.median(v) for k, v in rates.items()}
    # Each ratio is taken within one run (same minute, same load), then summarized over runs.
    pairs = {
        "enqueue_vs_sdk_best": ("enqueue", "best"),
        "enqueue_vs_sdk_common": ("enqueue", "common"),
        "many_vs_sdk_best": ("many", "best"),
        "enqueue_4p_vs_sdk_best": ("enqueue_4p", "best"),
    }
    per_run = {
        name: [a / b for a, b in zip(rates[top], rates[bottom], strict=True)]
        for name, (top, bottom) in pairs.items()
    }
    drain = drain_after_outage(url, kind, args.postgres_url, args.outage) if args.outage else None
    backlog_figure = (
        run_backlog(url, kind, args.postgres_url, args.backlog) if args.backlog else None
    )
    print(f"\nstore: {kind}; events per run: {n:,} (SDK common use: {args.sdk_common:,});")
    print(f"dispatcher: {args.dispatcher} (enqueue and enqueue_many runs)")
    print(f"medians of {args.runs}, end to end (handed over until acknowledged):")
    print(f"  enqueue() per event, 1 process:        {med['enqueue']:>10,.0f} events/s")
    print(f"  enqueue() per event, 4 processes:      {med['enqueue_4p']:>10,.0f} events/s")
    print(f"  enqueue_many(1000):                    {med['many']:>10,.0f} events/s")
    print(f"  SDK best case (1000 per EventRequest): {med['best']:>10,.0f} events/s")
    print(f"  SDK common use (1 per EventRequest):   {med['common']:>10,.0f} events/s")
    print("ratios, each within one run (median [lowest-highest] over runs; goal):")
    goals = {
        "enqueue_vs_sdk_best": 1.2,
        "enqueue_vs_sdk_common": 20,
        "many_vs_sdk_best": 3,
        "enqueue_4p_vs_sdk_best": None,
    }
    for name, values in per_run.items():
        goal = f"; goal >= {goals[name]:g}x" if goals[name] else ""
        print(
            f"  {name:<24} {statistics.median(values):6.2f}x"
            f"  [{min(values):.2f}-{max(values):.2f}]{goal}"
        )
    if drain is not None:
        print(f"  drain after a {args.outage:g} s outage (3,000 events): {drain:.1f} s")
    if backlog_figure is not None:
        print(
            f"  backlog of {backlog_figure['events']:,} events while Graph is down: peak RSS"
            f" {backlog_figure['peak_rss_mb_down']:.0f} MB (stored in"
            f" {backlog_figure['store_s']:.0f} s); after recovery drained in"
            f" {backlog_figure['drain_s']:.0f} s"
            f" (peak RSS then {backlog_figure['peak_rss_mb']:.0f} MB)"
        )
    ratios = {name: statistics.median(values) for name, values in per_run.items()}
    summary = {"store": kind, "events": n, "runs": args.runs, "dispatcher": args.dispatcher}
    summary |= {"events_per_s": med}
    summary |= {"ratios": ratios, "ratios_per_run": per_run}
    summary |= {"outage_s": args.outage, "drain_s": drain, "backlog": backlog_figure}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
