"""``capi-bridge demo``: the example shop, a fake Graph API and the pixel stand-in, one command.

A newcomer with no Meta account and no internet should see the redundant setup work within a
second: the fake Graph API (:class:`~capi_bridge.testing.FakeGraph`, in this process) plays
Meta's server and also serves ``fbevents-stub.js`` in place of Meta's pixel library; the shop is
``examples/flask_app.py``, ``examples/starlette_app.py`` or ``examples/django_shop/`` from the
source tree, loaded as is and
configured only through the ``CAPI_BRIDGE_*`` variables README documents, so what the demo runs
is exactly what a developer would copy. Everything binds to 127.0.0.1.

The examples are not part of the installed package (a wheel has no ``examples/``): they are
found next to the package, which an editable or source install provides; otherwise the command
says so and how to fix it. Duplicating the shop inside the package would let the two copies
drift apart.

The outbox lives in a temporary directory removed at exit: the fake Graph API forgets its events
when the demo stops, so a durable outbox would only resend them to the next demo.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, ModuleType
from typing import TextIO

import capi_bridge
from capi_bridge.errors import ConfigError
from capi_bridge.settings import ENV_PREFIX, Settings
from capi_bridge.testing import FakeGraph

logger = logging.getLogger("capi_bridge.demo")

HOST = "127.0.0.1"
DEMO_PIXEL = "1234567890"
DEMO_TOKEN = "demo-token"  # the only token the demo's fake Graph API accepts
FRAMEWORKS = ("flask", "starlette", "django")
#: How long a server may take to answer its first request before the demo gives up.
READY_TIMEOUT = 15.0
#: Bound on the flush at shutdown; the fake Graph API is local, so this is generous.
CLOSE_TIMEOUT = 5.0
#: What each framework needs beyond capi-bridge itself (module names, for the error message).
_NEEDS = {
    "flask": ("flask",),
    "starlette": ("starlette", "uvicorn", "jinja2"),
    "django": ("django", "jinja2"),
}
#: Each shop's file in ``examples/`` (Django's is a project: its manage.py).
_SHOPS = {
    "flask": "flask_app.py",
    "starlette": "starlette_app.py",
    "django": "django_shop/manage.py",
}


class DemoError(Exception):
    """A reason the demo cannot start, worded for the person who typed the command."""


def examples_dir() -> Path:
    """The repository's ``examples/``: beside the package in a source or editable install."""
    return Path(capi_bridge.__file__).resolve().parents[1] / "examples"


def _shop_file(framework: str) -> Path:
    path = examples_dir() / _SHOPS[framework]
    if not path.is_file():
        raise DemoError(
            f"the example shop {path} is missing: the demo runs the shop from the source tree, "
            "which an install from a wheel does not include. Fix: clone the repository and "
            "install it editable there (pip install -e '.[all]'), then run capi-bridge demo again."
        )
    return path


def _check_dependencies(framework: str) -> None:
    missing = [name for name in _NEEDS[framework] if importlib.util.find_spec(name) is None]
    if missing:
        raise DemoError(
            f"the {framework} shop needs {', '.join(missing)}, which is not installed. "
            "Fix: pip install -e '.[all]' (or capi-bridge[all])."
        )


def _listen(port: int) -> socket.socket:
    """Bind the shop's socket first, so a busy port fails before anything else starts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise DemoError(
            f"cannot listen on {HOST}:{port}: {exc.strerror or exc}. "
            "Fix: pass --port with a free port, or --port 0 for any free port."
        ) from None
    return sock


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


def _load_shop(path: Path) -> ModuleType:
    """Import an example by file path, under a private name: no ``examples`` package needed,
    and no clash with another installed package of that name. Registered in ``sys.modules``
    before it runs, because Flask finds its root path there."""
    name = f"capi_bridge_demo_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - only for a non-.py path
        raise DemoError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- the shop servers ---------------------------------------------------------------------------


@dataclass
class _Running:
    """A started shop: how to tell it is alive and how to stop it (flushing its bridge)."""

    alive: Callable[[], bool]
    stop: Callable[[], bool]


def _serve_flask(module: ModuleType, sock: socket.socket) -> _Running:
    from werkzeug.serving import make_server

    # Werkzeug logs every request at INFO; the inspector is where the demo shows traffic.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = module.app
    server = make_server(HOST, sock.getsockname()[1], app, threaded=True, fd=sock.fileno())
    sock.close()  # the server holds its own duplicate of the listening socket
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="demo-shop", daemon=True
    )  # a short poll interval: shutdown() waits for the next one
    thread.start()

    def stop() -> bool:
        server.shutdown()
        server.server_close()
        flushed: bool = app.extensions["capi_bridge"].close(CLOSE_TIMEOUT)
        return flushed

    return _Running(thread.is_alive, stop)


def _serve_django(manage: Path, sock: socket.socket) -> _Running:
    """The Django shop on Django's own threaded WSGI server (runserver's), on our socket."""
    sys.path.insert(0, str(manage.parent))
    os.environ["DJANGO_SETTINGS_MODULE"] = "shop.settings"
    from django.core.exceptions import ImproperlyConfigured
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application

    from capi_bridge.django import conf

    try:
        app = get_wsgi_application()  # loads the middleware, which checks the settings
    except ImproperlyConfigured as exc:
        raise DemoError(str(exc)) from None
    logging.getLogger("django.server").setLevel(logging.WARNING)  # one line per request
    server = ThreadedWSGIServer(sock.getsockname(), WSGIRequestHandler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock  # already bound and listening
    server.server_name, server.server_port = HOST, sock.getsockname()[1]
    server.setup_environ()
    server.set_app(app)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="demo-shop", daemon=True
    )
    thread.start()

    def stop() -> bool:
        server.shutdown()
        server.server_close()
        return conf.core().close(CLOSE_TIMEOUT)

    return _Running(thread.is_alive, stop)


def _serve_starlette(module: ModuleType, sock: socket.socket) -> _Running:
    import uvicorn

    config = uvicorn.Config(
        module.app,
        lifespan="on",  # the middleware opens the outbox at start-up and flushes it at shutdown
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    # Off the main thread uvicorn installs no signal handlers: the demo owns Ctrl-C/SIGTERM.
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="demo-shop", daemon=True
    )
    thread.start()

    def stop() -> bool:
        server.should_exit = True
        thread.join(CLOSE_TIMEOUT + 5)
        sock.close()
        return not thread.is_alive()

    return _Running(thread.is_alive, stop)


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
    shop_file = _shop_file(framework)
    _check_dependencies(framework)
    sock = _listen(port)
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
    say(f"  example         {shop_file}")
    _mention_user_settings(env, say)

    if wait_until_answers(graph.pixel_script_url, stop) is None:
        return _stopped_early(stop, "the fake Graph API did not answer")
    say(f"  fake Graph API  {graph.url}  (events it received: {graph.url}/_fake/events)")
    say(f"  pixel script    {graph.pixel_script_url}  (stand-in for Meta's fbevents.js)")

    try:
        shop = _start_shop(framework, shop_file, sock)
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


def _start_shop(framework: str, path: Path, sock: socket.socket) -> _Running:
    if framework == "django":
        return _serve_django(path, sock)
    module = _load_shop(path)
    serve = _serve_flask if framework == "flask" else _serve_starlette
    return serve(module, sock)


def _stop_shop(shop: _Running, graph: FakeGraph, say: Callable[[str], None]) -> None:
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
