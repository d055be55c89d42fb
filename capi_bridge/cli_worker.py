"""``capi-bridge worker``: delivery in a process of its own, beside the app's processes.

By default every app process delivers what it stores in a thread of its own
(``CAPI_BRIDGE_DELIVERY=thread``): nothing else to run. That thread shares the process's GIL
with the request threads, so a process that stores events as fast as it can (a bulk
``enqueue_many`` import) spends part of its time waiting for it: measured with
``benchmarks/delivery.py --dispatcher worker``, ``enqueue_many`` went from 2.3x to 3.5x the
throughput of Meta's SDK at its best. With ``CAPI_BRIDGE_DELIVERY=worker`` the app's processes
only store (durably, as always) and one ``capi-bridge worker`` per outbox delivers: per host
for a SQLite outbox, or any number of them, on any hosts, for a PostgreSQL one.

The worker reads the same settings as the app (``CAPI_BRIDGE_*`` in its environment; the same
outbox, pixel and token), claims with the same leases, and stops on SIGTERM or Ctrl-C after
flushing what it holds (``CAPI_BRIDGE_CLOSE_TIMEOUT``). A worker that dies loses nothing: its
leases expire, or the next worker on the host reclaims them at start-up. SQLite cannot signal
across processes, so the worker looks for new rows every ``WORKER_POLL`` seconds when idle.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable

from capi_bridge.cli_common import EXIT_FAILED, EXIT_OK, Subparsers, add_command
from capi_bridge.settings import Settings

logger = logging.getLogger("capi_bridge.worker")

#: How often an idle worker looks for rows in a SQLite outbox (PostgreSQL wakes it at once):
#: two small reads, a hundred times a second, well under 1% of a core.
WORKER_POLL = 0.01


def serve(
    settings: Settings, stop: threading.Event, ready: Callable[[str], None] | None = None
) -> bool:
    """Deliver from the outbox ``settings`` name until ``stop`` is set, then flush and close;
    returns whether nothing it could send was left. ``ready`` gets the outbox's location
    once delivery runs."""
    from capi_bridge.bridge import Bridge

    bridge = Bridge(dataclasses.replace(settings, delivery="thread"))  # this one delivers
    try:
        dispatcher = bridge._start()
        if dispatcher is not None and bridge.outbox.local:
            dispatcher.idle_poll = WORKER_POLL
            dispatcher._wake.set()  # the first pass sleeps with the new poll
        logger.info("delivering from %s (pid %d)", bridge.outbox.location, os.getpid())
        if ready is not None:
            ready(bridge.outbox.location)
        stop.wait()
    finally:
        flushed = bridge.close()
    return flushed


def add_commands(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "worker",
        summary="deliver the outbox's events in a process of its own (CAPI_BRIDGE_DELIVERY=worker)",
        description="Send what the app's processes store, from the same outbox, with the same "
        "settings\n(CAPI_BRIDGE_* in the environment: outbox, pixel, access token). Run one "
        "per host beside an\napp configured with CAPI_BRIDGE_DELIVERY=worker (a SQLite "
        "outbox), or any number on any\nhosts (PostgreSQL). Stops on SIGTERM or Ctrl-C once "
        "what it holds is flushed.",
        examples=[
            "capi-bridge worker      # the app's settings, CAPI_BRIDGE_DELIVERY=worker in the app",
            "capi-bridge worker      # with CAPI_BRIDGE_OUTBOX_URL=postgresql://db/shop: any host",
        ],
        exits=[
            (EXIT_OK, "stopped by SIGTERM or Ctrl-C, what it held flushed"),
            (EXIT_FAILED, "bad settings (it says which and how to fix them), or events left"),
        ],
    )
    p.set_defaults(func=_cmd_worker)


def _cmd_worker(args: argparse.Namespace) -> int:
    from capi_bridge.errors import ConfigError

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"capi-bridge worker: {exc}")
        return EXIT_FAILED
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def ready(location: str) -> None:
        print(f"capi-bridge worker: delivering events stored in {location}", flush=True)

    return EXIT_OK if serve(settings, stop, ready) else EXIT_FAILED
