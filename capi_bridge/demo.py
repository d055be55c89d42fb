"""``capi-bridge demo``: the example shop, a fake Graph API and the pixel stand-in, one command.

A newcomer with no Meta account and no internet should see the redundant setup work within a
second: the fake Graph API (:class:`~capi_bridge.testing.FakeGraph`, in this process) plays
Meta's server and also serves ``fbevents-stub.js`` in place of Meta's pixel library; the shop is
``examples/flask_app.py``, ``examples/starlette_app.py`` or ``examples/django_shop/`` from the
source tree, loaded as is and configured only through the ``CAPI_BRIDGE_*`` variables README
documents, so what the demo runs is exactly what a developer would copy. Everything binds to
127.0.0.1.

Finding, loading and serving the example shops is :mod:`capi_bridge.demo_shops`; this module is
the command around them: the fake Graph API, the environment the shop reads, the console, the
readiness checks and Ctrl-C.

The outbox lives in a temporary directory removed at exit: the fake Graph API forgets its events
when the demo stops, so a durable outbox would only resend them to the next demo.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import TextIO

from capi_bridge.demo_shops import (
    CLOSE_TIMEOUT,
    HOST,
    DemoError,
    Running,
    check_dependencies,
    examples_dir,
    listen,
    shop_file,
    start_shop,
)
from capi_bridge.errors import ConfigError
from capi_bridge.settings import ENV_PREFIX, Settings
from capi_bridge.testing import FakeGraph

DEMO_PIXEL = "1234567890"
DEMO_TOKEN = "demo-token"  # the only token the demo's fake Graph API accepts
FRAMEWORKS = ("flask", "starlette", "django")
#: How long a server may take to answer its first request before the demo gives up.
READY_TIMEOUT = 15.0
#: Names other modules and the tests take from here (some are defined in demo_shops).
__all__ = [
    "CLOSE_TIMEOUT",
    "DEMO_PIXEL",
    "DEMO_TOKEN",
    "FRAMEWORKS",
    "HOST",
    "READY_TIMEOUT",
    "DemoError",
    "demo_environment",
    "environment",
    "examples_dir",
    "run",
    "wait_until_answers",
]


def demo_environment(graph: FakeGraph, outbox_path: str) -> dict[str, str]:
    """The ``CAPI_BRIDGE_*`` variables the example shops read (README "Examples")."""
    values = {
        "PIXEL_ID": DEMO_PIXEL,
        "ACCESS_TOKEN": DEMO_TOKEN,
        "SECRET_KEY": secrets.token_urlsafe(32),
        "GRAPH_URL": graph.url,
        "PIXEL_SCRIPT_URL": graph.pixel_script_url,
        "OUTBOX_PATH": outbox_path,
        "LINGER": "0.05",
        "INSPECTOR": "true",
        "ALLOWED_HOSTS": f"{HOST},localhost",  # the demo answers for loopback names only
    }
    return {ENV_PREFIX + name: value for name, value in values.items()}


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, restored afterwards (the examples read settings
    from the environment when their app starts)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- readiness and signals ----------------------------------------------------------------------


def wait_until_answers(
    url: str, stop: threading.Event, alive: Callable[[], bool] = lambda: True
) -> int | None:
    """GET ``url`` until it answers; its status, or None when stopped, dead or out of time.

    A server may accept connections before it can answer (uvicorn's lifespan start-up), so only
    an HTTP answer counts. Proxies from the environment are ignored: this is loopback.
    """
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT
    headers = {"User-Agent": "capi-bridge-demo (readiness check)"}
    with httpx.Client(trust_env=False, timeout=2.0, headers=headers) as client:
        while not stop.is_set() and alive() and time.monotonic() < deadline:
            try:
                return client.get(url).status_code
            except httpx.TransportError:
                stop.wait(0.02)  # the interval between two tries, not a guess at readiness
    return None


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event, out: TextIO) -> Iterator[None]:
    """Ctrl-C and SIGTERM ask for a clean stop; a second one, while stopping, ends at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            print("capi-bridge demo: stopping right now, without flushing", file=out, flush=True)
            os._exit(1)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --- the command --------------------------------------------------------------------------------


def run(
    port: int = 8000,
    framework: str = "flask",
    *,
    started: float | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the demo until Ctrl-C or SIGTERM; 0 after a clean stop, 1 (with the reason) when it
    cannot start. ``started`` is the ``perf_counter`` at which the command began."""
    out = out or sys.stdout
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter() if started is None else started
    stop = threading.Event()
    with _stop_on_signals(stop, out), contextlib.ExitStack() as stack:
        try:
            return _run(port, framework, started, stop, stack, out)
        except DemoError as exc:
            print(f"capi-bridge demo: {exc}", file=sys.stderr, flush=True)
            return 1


def _run(
    port: int,
    framework: str,
    started: float,
    stop: threading.Event,
    stack: contextlib.ExitStack,
    out: TextIO,
) -> int:
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    if framework not in FRAMEWORKS:
        raise DemoError(f"unknown framework {framework!r}; use one of {', '.join(FRAMEWORKS)}")
    example = shop_file(framework)
    check_dependencies(framework)
    sock = listen(port)
    stack.callback(sock.close)
    shop_url = f"http://{HOST}:{sock.getsockname()[1]}"

    graph = stack.enter_context(FakeGraph(token=DEMO_TOKEN, pixels=[DEMO_PIXEL], host=HOST))
    workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="capi-bridge-demo-"))
    outbox = os.path.join(workdir, "outbox.sqlite3")
    env = demo_environment(graph, outbox)
    stack.enter_context(environment(env))
    settings = _settings()
    say(f"capi-bridge demo: the example {framework} shop against a local fake of Meta's Graph API")
    say("  (no Meta account needed; nothing leaves this machine)")
    say(f"  example         {example}")
    _mention_user_settings(env, say)

    if wait_until_answers(graph.pixel_script_url, stop) is None:
        return _stopped_early(stop, "the fake Graph API did not answer")
    say(f"  fake Graph API  {graph.url}  (events it received: {graph.url}/_fake/events)")
    say(f"  pixel script    {graph.pixel_script_url}  (stand-in for Meta's fbevents.js)")

    try:
        shop = start_shop(framework, example, sock)
    except ConfigError as exc:
        raise DemoError(str(exc)) from None
    stack.callback(_stop_shop, shop, graph, say)
    status = wait_until_answers(shop_url + "/", stop, shop.alive)
    if status is None:
        return _stopped_early(stop, f"the shop at {shop_url}/ did not answer")
    say(f"  shop            {shop_url}/")
    inspector = shop_url + settings.inspector_path
    say(f"  inspector       {inspector}{_inspector_note(inspector, stop)}")
    say(f"  outbox          {outbox}  (deleted on exit)")
    say(f"ready in {time.perf_counter() - started:.1f} s.")
    say(f"Next: open {shop_url}/ in a browser; view a product, add it to the cart, check out,")
    say("  sign up for the newsletter; watch each event (pixel and server copy) in the inspector.")
    say("  Ctrl-C to stop.")
    while not stop.wait(1.0):  # wakes at once on a signal; the timeout only notices a dead shop
        if not shop.alive():
            raise DemoError("the shop's server stopped unexpectedly; see the messages above")
    say("capi-bridge demo: stopping (flushing the outbox to the fake Graph API)...")
    return 0


def _settings() -> Settings:
    """The settings the shop is about to read; a bad ``CAPI_BRIDGE_*`` of the user's fails
    here with its name and fix, before any server starts."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise DemoError(str(exc)) from None


def _mention_user_settings(env: Mapping[str, str], say: Callable[[str], None]) -> None:
    """Other ``CAPI_BRIDGE_*`` variables in the environment still apply (e.g. consent)."""
    kept = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k not in env)
    if kept:
        say(f"  also applied from your environment: {', '.join(kept)}")


def _stop_shop(shop: Running, graph: FakeGraph, say: Callable[[str], None]) -> None:
    flushed = shop.stop()
    received = len(graph.events)
    note = "" if flushed else " (some events were still waiting; they are dropped with the demo)"
    say(f"capi-bridge demo: stopped; the fake Graph API received {received} events{note}.")


def _inspector_note(url: str, stop: threading.Event) -> str:
    """Say so when this build answers the inspector URL with anything but the page."""
    status = wait_until_answers(url, stop)
    if status is None or status == 200:
        return ""
    return f"  (answers HTTP {status}: not available in this version)"


def _stopped_early(stop: threading.Event, problem: str) -> int:
    if stop.is_set():
        return 0  # Ctrl-C during start-up is a clean stop, not a failure
    raise DemoError(f"{problem} within {READY_TIMEOUT:g} s; see the messages above")
