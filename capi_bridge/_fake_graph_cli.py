"""``capi-bridge fake-graph``: the fake Graph API as a process of its own, until Ctrl-C.

For trying capi-bridge by hand or from another language's test suite: the banner says where
to point ``CAPI_BRIDGE_GRAPH_URL`` and how to read the record and queue faults with ``curl``.
Kept apart from :class:`~capi_bridge.testing.FakeGraph` because signals and a console belong to
a command, not to the object tests start in-process. Private to :mod:`capi_bridge.testing`, its
public face (``serve_forever``); production code never imports this module.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from capi_bridge._fake_graph import FakeGraph


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
