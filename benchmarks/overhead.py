"""Per-request overhead of the middleware: the same app with and without capi-bridge.

    python benchmarks/overhead.py                    # wall clock, then instruction counts
    python benchmarks/overhead.py --no-instructions  # wall clock only (no valgrind needed)

In-process, no sockets: each request calls the WSGI callable (Flask, Django's WSGI handler) or
the ASGI callable (Starlette, on one event loop) directly, with the headers of a returning
visitor's browser navigation (user agent, Accept, ``Sec-Fetch-Dest: document``, a cookie
header holding ``_fbp``), and drains the whole body. Three responses per framework:

* ``page``: a view rendering a template of about 20 KB (a product list of 100 items): Jinja2
  for Flask and Starlette (whose endpoint is ``async def``), Django's own template engine for
  Django, the same page. Target: with/without <= 1.10.
* ``json``: a small JSON response to the same navigation headers. Target <= 1.03.
* ``trivial``: a constant 20 KB HTML string, for reference (the worst case: nothing to hide
  our work behind).

Two measures, each a ratio against the bare app measured in the same process:

* **wall clock**: short blocks of bare and wrapped requests, interleaved (bare first, then
  wrapped first, and so on, so drift cancels); the figure is the median over the pairs of
  (wrapped / bare), and the median added microseconds per request.
* **instructions** (``valgrind --tool=callgrind``, stable on a busy machine): one valgrind run
  of ``--segments`` runs every case's bare and wrapped blocks between two calls of
  ``os.getppid()``, and callgrind dumps its counters at each call (``--dump-before=getppid``),
  so each block's count is exact and start-up is left out. Instructions per request and the
  ratio; what the ratio hides, an added µs, comes from the wall clock.

The outbox is never touched on these paths (a page view is mirrored only when the browser's
script confirms it), so no Graph server is needed. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from _overhead_apps import FRAMEWORKS, KINDS, all_runners

TARGETS = {"page": 1.10, "json": 1.03}
Run = Callable[[], int]


def timed(run: Run, requests: int) -> float:
    """Seconds per request over ``requests`` calls."""
    start = time.perf_counter()
    for _ in range(requests):
        run()
    return (time.perf_counter() - start) / requests


def compare(bare: Run, wrapped: Run, block: int, pairs: int) -> dict[str, float]:
    """Median over interleaved pairs of blocks: the ratio, the added µs and the bare µs."""
    wrapped_size, bare_size = wrapped(), bare()  # warm up both; sanity-check the rewrite
    assert wrapped_size >= bare_size
    for _ in range(3):
        timed(bare, block)
        timed(wrapped, block)
    ratios, added, bares = [], [], []
    gc.collect()
    gc.freeze()  # the apps' heap (templates, modules) out of every collection: less noise
    for i in range(pairs):
        if i % 2:
            t_wrapped, t_bare = timed(wrapped, block), timed(bare, block)
        else:
            t_bare, t_wrapped = timed(bare, block), timed(wrapped, block)
        ratios.append(t_wrapped / t_bare)
        added.append((t_wrapped - t_bare) * 1e6)
        bares.append(t_bare * 1e6)
    return {
        "ratio": round(statistics.median(ratios), 3),
        "added_us": round(statistics.median(added), 1),
        "bare_us": round(statistics.median(bares), 1),
        "injected_bytes": wrapped_size - bare_size,
    }


def wall_clock(cases: list[str], block: int, pairs: int) -> dict[str, dict[str, float]]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        loop = asyncio.new_event_loop()
        runners = all_runners(f"{tmp}/outbox.sqlite3", loop)
        for case in cases:
            bare, wrapped = runners[case]
            results[case] = compare(bare, wrapped, block, pairs)
        loop.close()
    return results


def segments(cases: list[str], count: int) -> None:
    """Under callgrind: every case's bare and wrapped blocks between two ``os.getppid()``
    calls, which dump the counters (``--dump-before=getppid``). Prints the blocks' labels."""
    labels = []
    with tempfile.TemporaryDirectory() as tmp:
        loop = asyncio.new_event_loop()
        runners = all_runners(f"{tmp}/outbox.sqlite3", loop)
        for case in cases:
            bare, wrapped = runners[case]
            for _ in range(20):  # warm caches (templates, regexes) in both
                bare()
                wrapped()
            for variant, run in (("bare", bare), ("wrapped", wrapped)):
                gc.collect()
                gc.freeze()  # no full collection walks the apps' heap in the middle of a block
                os.getppid()
                for _ in range(count):
                    run()
                os.getppid()
                labels.append(f"{case}/{variant}")
        loop.close()
    print(json.dumps(labels))


def instructions(cases: list[str], count: int) -> dict[str, dict[str, float]]:
    """Instructions per request of every case, bare and wrapped, from one callgrind run."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: apt-get install valgrind, or --no-instructions")
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--dump-before=getppid",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--segments",
            "--count",
            str(count),
            "--cases",
            ",".join(cases),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        labels = json.loads(done.stdout.strip().splitlines()[-1])
        totals = {}
        for name in glob.glob(f"{out}.*"):
            with open(name) as dump:
                text = dump.read()
            totals[_field(text, "part")] = _field(text, "totals")
    per_request = {label: totals[2 * (i + 1)] / count for i, label in enumerate(labels)}
    results = {}
    for case in cases:
        bare, wrapped = per_request[f"{case}/bare"], per_request[f"{case}/wrapped"]
        results[case] = {
            "bare_instructions": round(bare),
            "added_instructions": round(wrapped - bare),
            "ratio": round(wrapped / bare, 3),
        }
    return results


def _field(dump: str, name: str) -> int:
    """A number from a callgrind dump's header (``part: 3``, ``totals: 123``)."""
    found = re.search(rf"^{name}: (\d+)", dump, re.M)
    if found is None:
        raise SystemExit(f"callgrind dump without {name}: is valgrind's callgrind too old?")
    return int(found.group(1))


def mark(case: str, ratio: float) -> str:
    target = TARGETS.get(case.split("/")[1])
    return "-" if target is None else ("ok" if ratio <= target else "MISS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--block", type=int, default=200, help="requests per timed block")
    parser.add_argument("--pairs", type=int, default=21, help="interleaved pairs per case")
    parser.add_argument("--count", type=int, default=100, help="requests per callgrind block")
    parser.add_argument("--cases", help="comma-separated framework/kind (default: all)")
    parser.add_argument("--no-instructions", action="store_true", help="skip callgrind")
    parser.add_argument("--no-wall-clock", action="store_true", help="callgrind only")
    parser.add_argument("--segments", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = (
        args.cases.split(",")
        if args.cases
        else [f"{fw}/{kind}" for kind in KINDS for fw in FRAMEWORKS]
    )
    if args.segments:
        segments(cases, args.count)
        return
    clock = {} if args.no_wall_clock else wall_clock(cases, args.block, args.pairs)
    counted = {} if args.no_instructions else instructions(cases, args.count)
    print(
        f"{'case':<18}{'bare µs':>9}{'added µs':>10}{'wall':>7}{'':>6}"
        f"{'bare instr':>12}{'added':>9}{'instr':>7}{'':>6}target"
    )
    for case in cases:
        row = f"{case:<18}"
        if case in clock:
            c = clock[case]
            row += f"{c['bare_us']:>9}{c['added_us']:>10}{c['ratio']:>7.3f}"
            row += f"{mark(case, c['ratio']):>6}"
        else:
            row += " " * 32
        if case in counted:
            n = counted[case]
            row += f"{n['bare_instructions']:>12}{n['added_instructions']:>9}{n['ratio']:>7.3f}"
            row += f"{mark(case, n['ratio']):>6}"
        else:
            row += " " * 34
        target = TARGETS.get(case.split("/")[1])
        print(row + (f"  {target:.2f}" if target else "  -"))
    print(json.dumps({"wall_clock": clock, "instructions": counted}))


if __name__ == "__main__":
    main()
