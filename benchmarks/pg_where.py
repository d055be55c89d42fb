"""Where the time of ``enqueue()`` from several processes on PostgreSQL goes.

    python benchmarks/pg_where.py [--events 20000] [--processes 4] [--modes bridge,raw,rows]

Each mode runs ``--processes`` producer processes at once, each with ``--events / processes``
realistic events (the events of ``benchmarks/delivery.py``), against the loopback ack server of
that benchmark, in a fresh schema:

* ``bridge``: ``Bridge.enqueue`` per event, each process's own dispatcher delivering, end to end
  (handed over until the server has acknowledged all of them), as ``delivery.py``;
* ``store``: ``Bridge.enqueue`` per event with no dispatcher (nothing delivered): the request
  path alone;
* ``raw``: the upper bound of the insert side: the rows made beforehand, then the store's own
  one-row statement with plain psycopg (one connection, autocommit, ``synchronous_commit=off``),
  no dispatcher, nothing delivered;
* ``rows``: validation and hashing alone (``RowMaker.rows``), no database.

Besides events/s it prints CPU seconds per 1,000 events of the producer processes (their
threads together: request path and dispatcher), of their PostgreSQL backends (read from
``/proc`` by pid, found by ``application_name``), and statements and transactions per event
(``pg_stat_database`` deltas: other users of the database add to them, so run it on a quiet one
for those). Wall clock is shared with whatever else runs on the machine: compare modes within
one run.

``PG_WHERE_COUNT=1`` also prints the statements the first process sent, by their first words
(counted at ``Connection.execute`` and again at the ``Cursor.execute`` it calls: halve them);
``PG_WHERE_SPY=FILE`` records that process with py-spy (``--gil``, raw collapsed stacks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import delivery

TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except OSError:
            pass
    return total


def child(mode: str, url: str, where_json: str, prefix: str, count: int) -> int:
    """One producer: ready, go, produce, report its CPU, wait for 'end', close."""
    where = json.loads(where_json)
    events = delivery.events(count + 1, prefix)
    counts = _count_statements() if os.environ.get("PG_WHERE_COUNT") else None
    if mode == "raw":
        import psycopg

        from capi_bridge.delivery import postgres_store

        bridge = delivery.make_bridge(url, where)
        made = [bridge.rows.rows(e, None, None, time.time(), None) for e in events]
        conn = psycopg.connect(where["outbox_url"], autocommit=True)
        conn.execute(f'SET search_path = "{where["outbox_schema"]}"')
        conn.execute("SET synchronous_commit = off")
        store = bridge.outbox

        def one(i: int) -> None:
            rows, _, tags = made[i]
            params: dict[str, Any] = {"now": time.time(), "origin": "o", "hold": None, "n": 1}
            params["state"] = 0
            params.update((f"a{k}", v) for k, v in enumerate(rows[0]))
            params.update((f"h{k}", None) for k in range(7))
            params.update((f"o{k}", v) for k, v in enumerate(tags[0]))
            conn.execute(postgres_store._INSERT_ONE, params)

        del store
    elif mode == "rows":
        bridge = delivery.make_bridge(url, where)

        def one(i: int) -> None:
            bridge.rows.rows(events[i], None, None, time.time(), None)

    else:
        bridge = delivery.make_bridge(url, where)
        if mode == "store":  # no dispatcher: what the request path alone costs
            bridge._notify = lambda count: None  # type: ignore[method-assign]

        def one(i: int) -> None:
            bridge.enqueue(events[i])

    one(0)
    print("ready", flush=True)
    sys.stdin.readline()
    spy = None
    if os.environ.get("PG_WHERE_SPY") and prefix.endswith("0-"):  # one process is enough
        spy = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "py-spy"),
                "record",
                "-p",
                str(os.getpid()),
                "-f",
                "raw",
                "-r",
                "200",
                "-o",
                os.environ["PG_WHERE_SPY"],
                "--nonblocking",
                "--threads",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
    before = os.times()
    started = time.perf_counter()
    for i in range(1, count + 1):
        one(i)
    stored = time.perf_counter() - started
    if mode == "bridge":
        bridge.flush(600)
    after = os.times()
    if spy is not None:
        spy.send_signal(2)
        spy.wait()
    cpu = after.user - before.user + after.system - before.system
    threads = {}
    for t in threading.enumerate():
        try:
            with open(f"/proc/self/task/{t.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            threads[t.name] = (int(fields[11]) + int(fields[12])) / TICK
        except OSError:
            pass
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:12] if counts is not None else []
    print(
        json.dumps({"cpu": cpu, "stored_s": stored, "statements": top, "threads": threads}),
        flush=True,
    )
    sys.stdin.readline()
    if mode != "raw":
        bridge.close(10)
    return 0


def _count_statements() -> dict[str, int]:
    """Count the statements this process sends, by their first words (PG_WHERE_COUNT=1)."""
    import collections

    import psycopg

    counts: collections.Counter[str] = collections.Counter()
    for cls in (psycopg.Connection, psycopg.Cursor):
        original = cls.execute

        def execute(self: Any, query: Any, *a: Any, _o: Any = original, **k: Any) -> Any:
            text = query if isinstance(query, str) else type(query).__name__
            counts[" ".join(str(text).split())[:70]] += 1
            return _o(self, query, *a, **k)

        cls.execute = execute  # type: ignore[method-assign]
    return counts


def backend_pids(pg_url: str, app: str) -> list[int]:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchall()
    return [r[0] for r in rows]


def db_counts(pg_url: str) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback, tup_inserted + tup_updated + tup_deleted"
            " FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def run(mode: str, ack: str, pg_url: str, n: int, processes: int) -> dict[str, Any]:
    import psycopg

    app = "pgwhere_" + uuid.uuid4().hex[:8]
    sep = "&" if "?" in pg_url else "?"
    url = f"{pg_url}{sep}application_name={app}"
    schema = "bench_" + uuid.uuid4().hex[:12]
    where = {"outbox_url": url, "outbox_schema": schema}
    share = n // processes
    try:
        procs = delivery.start_ready(
            [
                [__file__, "--child", mode, ack, json.dumps(where), f"{mode}{p}-", str(share)]
                for p in range(processes)
            ]
        )
        base = delivery.acknowledged(ack)
        if mode == "bridge":
            delivery.wait_acknowledged(ack, base)
            time.sleep(0.5)  # the first events' batches settled
        pids = backend_pids(pg_url, app)
        backend0, client0 = cpu_of(pids), cpu_of([p.pid for p in procs])
        tx0, tup0 = db_counts(pg_url)
        started = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = []
        for proc in procs:
            assert proc.stdout is not None
            reports.append(json.loads(proc.stdout.readline()))
        print(json.dumps([r["threads"] for r in reports]), flush=True)
        if reports[0]["statements"]:
            print(json.dumps(reports[0]["statements"], indent=0), flush=True)
        if mode == "bridge":
            delivery.wait_acknowledged(ack, base + processes * share)
        seconds = time.perf_counter() - started
        pids = sorted(set(pids) | set(backend_pids(pg_url, app)))
        backend = cpu_of(pids) - backend0
        client = cpu_of([p.pid for p in procs]) - client0
        tx1, tup1 = db_counts(pg_url)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("end\n")
            proc.stdin.close()
            proc.wait(60)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    total = processes * share
    return {
        "mode": mode,
        "events_per_s": total / seconds,
        "client_cpu_ms_per_1k": 1000 * client / total * 1000,
        "backend_cpu_ms_per_1k": 1000 * backend / total * 1000,
        "backends": len(pids),
        "tx_per_event": (tx1 - tx0) / total,
        "tuples_per_event": (tup1 - tup0) / total,
        "stored_s_max": max(r["stored_s"] for r in reports),
        "loadavg": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--modes", default="bridge,raw,rows")
    parser.add_argument("--postgres-url", default=delivery.POSTGRES_URL)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, ack, where, prefix, count = args.child
        return child(mode, ack, where, prefix, int(count))
    server = subprocess.Popen(
        [sys.executable, delivery.__file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        ack = f"http://127.0.0.1:{int(server.stdout.readline())}"
        for _ in range(args.runs):
            for mode in args.modes.split(","):
                result = run(mode, ack, args.postgres_url, args.events, args.processes)
                print(
                    json.dumps(
                        {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}
                    ),
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
