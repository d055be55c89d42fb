"""``capi-bridge worker``: delivery in a process of its own, beside the app's processes.

With a SQLite outbox the app's processes start one themselves (``delivery="auto"``, see
:mod:`capi_bridge.delivery.host_worker`: that one runs this command with ``--managed``).
Run it yourself with ``CAPI_BRIDGE_DELIVERY=worker`` in the app: any number of them, on any
hosts, for a PostgreSQL outbox (where ``auto`` means a thread in each app process), or one per
host under a supervisor of your own (systemd, a Procfile). The app's processes only store,
durably as always; the worker delivers (and ingests the app processes' journals). Why a
process at all: the thread a process would deliver from shares its GIL with the request
threads (``benchmarks/delivery.py --dispatcher thread`` against ``process``).

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
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from capi_bridge.cli_common import EXIT_FAILED, EXIT_OK, Subparsers, add_command
from capi_bridge.delivery.host_worker import (
    WorkerPresence,
    read_handover,
    watch_app_processes,
)
from capi_bridge.settings import Settings

if TYPE_CHECKING:
    from capi_bridge.bridge import Bridge

logger = logging.getLogger("capi_bridge.worker")

#: How often an idle worker looks for rows in a SQLite outbox (PostgreSQL wakes it at once):
#: two small reads, a hundred times a second, well under 1% of a core.
WORKER_POLL = 0.01


def serve(
    settings: Settings,
    stop: threading.Event,
    ready: Callable[[str], None] | None = None,
    *,
    starter: int | None = None,
) -> bool:
    """Deliver from the outbox ``settings`` name until ``stop`` is set, then flush and close;
    returns whether nothing it could send was left. ``ready`` gets the outbox's location
    once delivery runs. A SQLite outbox's worker holds its worker lock meanwhile, so app
    processes with ``delivery="process"`` start none of their own. One they started (its
    ``starter`` is the pid of the app process that did) also stops once none of them is
    left and what they stored is sent (or ``close_timeout`` has passed), or once its starter
    is gone (see :func:`~capi_bridge.delivery.host_worker.watch_app_processes`), and does
    not start at all when another worker runs."""
    managed = starter is not None
    from capi_bridge.bridge import Bridge

    presence = None
    if settings.outbox_local_posix:
        assert settings.outbox_path is not None
        presence = WorkerPresence(settings.outbox_path)
        if not (presence.adopt() if managed else presence.claim()):
            if managed:  # another app process's worker won the race: it delivers
                return True
            presence = None  # a second worker the site runs: leases keep the two apart
    bridge = Bridge(dataclasses.replace(settings, delivery="thread"))  # this one delivers
    watcher = None
    try:
        dispatcher = bridge._start()
        if dispatcher is not None and bridge.outbox.local:
            dispatcher.idle_poll = WORKER_POLL
            dispatcher._wake.set()  # the first pass sleeps with the new poll
        logger.info("delivering from %s (pid %d)", bridge.outbox.location, os.getpid())
        if ready is not None:
            ready(bridge.outbox.location)
        if starter is not None and presence is not None:
            watcher = threading.Thread(
                target=watch_app_processes,
                args=(presence, stop, lambda: _drained(bridge), settings.close_timeout, starter),
                name="capi-bridge-clients",
                daemon=True,
            )
            watcher.start()
        stop.wait()
    finally:
        flushed = bridge.close()
        if presence is not None:
            presence.release()
    return flushed


def _drained(bridge: Bridge) -> bool:
    """Nothing stored by any process is left to send (journals read first); also True when
    the outbox cannot be read any more (its folder deleted): nothing left to do then."""
    errors: tuple[type[BaseException], ...] = (OSError, *bridge.outbox.errors)
    try:
        bridge.outbox.ingest()
        stats = bridge.outbox.stats(time.time())
    except errors:
        return True
    return not stats.undelivered


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
    p.add_argument("--managed", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_worker)


def _cmd_worker(args: argparse.Namespace) -> int:
    from capi_bridge.errors import ConfigError

    if args.managed:  # started by an app process (delivery="process"): see host_worker
        return _managed()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"capi-bridge worker: {exc}")
        return EXIT_FAILED
    stop = _stop_on_signals()

    def ready(location: str) -> None:
        print(f"capi-bridge worker: delivering events stored in {location}", flush=True)

    return EXIT_OK if serve(settings, stop, ready) else EXIT_FAILED


def _managed() -> int:
    """The settings come from the app process on standard input; warnings and errors go to
    the app's standard error; it ends with status 0 however much is left (the next worker
    sends it), so that the app process counts only crashes as failed starts."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    settings, starter = read_handover(sys.stdin.buffer)
    serve(settings, _stop_on_signals(), starter=starter)
    return EXIT_OK


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop
