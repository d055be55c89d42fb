"""Where one ``Bridge.enqueue()`` spends its time: µs and instructions per stage.

    python benchmarks/enqueue_breakdown.py [--events 5000] [--repeats 5] [--callgrind]

The stages are cumulative levels of the same pipeline, each run on the same realistic events
(those of ``benchmarks/delivery.py``): a level does everything the one before it does plus one
stage, so a stage's cost is the difference between two levels. Timing is the median over
``--repeats`` of each level's µs per event (noisy on a shared machine); ``--callgrind`` also
runs every level under ``valgrind --tool=callgrind`` twice (with a short and a long list of
events, so interpreter start-up, imports and warm-up cancel out) and reports instructions per
event, which do not depend on the machine's load.

Levels (see :data:`LEVELS`):
  events      make the test events only (the baseline the others are measured from)
  prepare     copy the mapping, give it an event_id
  hashing     + normalize and hash user_data
  validation  + the schema guard
  row         + JSON, the observation tag and the stored row
  store       + storing it durably as Bridge does: the journal append (no dispatcher)
  dispatch    + the dispatcher ingesting them into the SQLite outbox and delivering them to
              a loopback ack server in full batches, until every event is acknowledged
              (``Bridge.flush``)

The dispatcher runs after the events are stored, not alongside: under callgrind everything is
~50 times slower, so alongside it would send batches of a few events where a real run sends
1000 per request, and its count per event would mean nothing. ``benchmarks/delivery.py`` has
the two running together.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

LEVELS = ("events", "prepare", "hashing", "validation", "row", "store", "dispatch")
SHORT = 300  # callgrind: events of the short run (the long one adds --events)


def _events(n: int, prefix: str) -> list[dict[str, Any]]:
    from helpers.delivery_worker import make_event

    return [make_event(i, prefix) for i in range(n)]


def _pipeline(level: str, outbox: str, url: str) -> tuple[Callable[[dict[str, Any]], Any], Any]:
    """A function doing ``level``'s work on one event, and the Bridge behind it."""
    import delivery as bench

    bridge = bench.make_bridge(url, {"outbox_path": outbox})
    return _step(bridge, "store" if level == "dispatch" else level), bridge


def _step(bridge: Any, level: str) -> Callable[[dict[str, Any]], Any]:
    """The first ``level`` stages of ``Bridge.enqueue``, written with the functions it calls."""
    from capi_bridge.events import graph_event, new_event_id
    from capi_bridge.validation import validate_event

    def prepare(event: dict[str, Any]) -> Any:
        data = dict(event)
        if not data.get("event_id"):
            data["event_id"] = new_event_id()
        return data

    maker = getattr(bridge, "rows", None)  # since issue 14: capi_bridge.accept.RowMaker
    hasher = getattr(maker, "memo", None)

    def hashing(event: dict[str, Any]) -> Any:
        if hasher is not None:
            return graph_event(prepare(event), hasher.hash_user_data)
        return graph_event(prepare(event))

    def validation(event: dict[str, Any]) -> Any:
        wire = hashing(event)
        return validate_event(wire, now=time.time())

    make = maker.rows if maker is not None else bridge._rows

    def row(event: dict[str, Any]) -> Any:
        return make(event, None, None, time.time(), None)

    outbox = bridge.outbox
    keep = getattr(outbox, "append", outbox.enqueue)  # since issue 14: the journal (intake)

    def store(event: dict[str, Any]) -> Any:
        now = time.time()
        rows, _, tags = make(event, None, None, now, None)
        return keep(rows, now, tags=tags, origin=bridge._origin)

    steps = {
        "events": lambda event: None,
        "prepare": prepare,
        "hashing": hashing,
        "validation": validation,
    }
    return {**steps, "row": row, "store": store}[level]


def run_level(level: str, n: int, url: str, warm: int = 200) -> float:
    """Seconds per event for ``level`` over ``n`` fresh events (after ``warm`` warm-up ones)."""
    with tempfile.TemporaryDirectory(prefix="capi-breakdown-") as tmp:
        step, bridge = _pipeline(level, os.path.join(tmp, "outbox.sqlite3"), url)
        for event in _events(warm, f"w{level}"):
            step(event)
        if level == "dispatch" and not bridge.flush(60):
            raise RuntimeError("flush timed out")
        batch = _events(n, f"{level}{time.time_ns()}")
        started = time.perf_counter()
        for event in batch:
            step(event)
        if level == "dispatch" and not bridge.flush(600):
            raise RuntimeError("flush timed out")
        seconds = time.perf_counter() - started
        if level == "store":  # its rows stay journaled, as an enqueue leaves them: moving
            bridge.outbox.journal.close()  # them into SQLite is the dispatch level's work
        else:
            bridge.close(10)
    return seconds / n


def _ack_server() -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "delivery.py"), "--serve"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    return server, f"http://127.0.0.1:{int(server.stdout.readline())}"


def _instructions(level: str, n: int, url: str) -> int:
    """Instructions of one process running ``level`` on ``n`` events (callgrind's total)."""
    with tempfile.TemporaryDirectory(prefix="capi-callgrind-") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                os.path.abspath(__file__),
                "--one",
                level,
                str(n),
                url,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with open(out) as f:
            found = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.MULTILINE)
        assert found, "no totals in callgrind's output"
        return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--callgrind", action="store_true", help="count instructions too")
    parser.add_argument("--callgrind-events", type=int, default=2000)
    parser.add_argument("--levels", default=",".join(LEVELS), help="levels to run (comma list)")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        level, n, url = args.one
        run_level(level, int(n), url, warm=SHORT if int(n) > SHORT else 0)
        return 0
    levels = [level for level in LEVELS if level in args.levels.split(",")]
    server, url = _ack_server()
    try:
        micros: dict[str, float] = {}
        for level in levels:
            runs = [run_level(level, args.events, url) for _ in range(args.repeats)]
            micros[level] = statistics.median(runs) * 1e6
        counts: dict[str, float] = {}
        if args.callgrind:
            m = args.callgrind_events
            for level in levels:
                long, short = _instructions(level, SHORT + m, url), _instructions(level, SHORT, url)
                counts[level] = (long - short) / m
    finally:
        server.terminate()
        server.wait()
    print(f"{'stage':<12}{'µs/event':>10}{'cumulative':>12}", end="")
    print(f"{'instr/event':>14}{'cumulative':>12}" if counts else "")
    before_us = micros.get("events", 0.0)
    before_ir = counts.get("events", 0.0)
    for level in levels:
        if level == "events":  # the baseline itself: what making one test event costs
            line = f"{'(events)':<12}{micros[level]:>10.1f}{'':>12}"
            print(line + (f"{counts[level]:>14,.0f}" if counts else ""))
            continue
        name = level
        base_us, base_ir = micros.get("events", 0.0), counts.get("events", 0.0)
        line = f"{name:<12}{micros[level] - before_us:>10.1f}{micros[level] - base_us:>12.1f}"
        if counts:
            line += f"{counts[level] - before_ir:>14,.0f}{counts[level] - base_ir:>12,.0f}"
            before_ir = counts[level]
        before_us = micros[level]
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
