"""The demo's shop: an example app from ``examples/``, found, loaded and served in this process.

:mod:`capi_bridge.demo` runs the command (the fake Graph API, the environment, the console and
signals); this module knows the three frameworks: where each example shop is, what it needs
installed, and how to serve it on a socket bound beforehand (so a busy port fails first) and
stop it with its bridge flushed. Each shop is loaded as is, configured only through the
``CAPI_BRIDGE_*`` variables README documents, so what the demo runs is exactly what a developer
would copy.

The examples are not part of the installed package (a wheel has no ``examples/``): they are
found next to the package, which an editable or source install provides; otherwise the command
says so and how to fix it. Duplicating the shop inside the package would let the two copies
drift apart.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import capi_bridge

#: Everything the demo serves binds to loopback only.
HOST = "127.0.0.1"

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


def shop_file(framework: str) -> Path:
    """The example shop's file for ``framework``; DemoError, with the fix, when it is absent."""
    path = examples_dir() / _SHOPS[framework]
    if not path.is_file():
        raise DemoError(
            f"the example shop {path} is missing: the demo runs the shop from the source tree, "
            "which an install from a wheel does not include. Fix: clone the repository and "
            "install it editable there (pip install -e '.[all]'), then run capi-bridge demo again."
        )
    return path


def check_dependencies(framework: str) -> None:
    """DemoError naming what to install when ``framework``'s shop cannot run here."""
    missing = [name for name in _NEEDS[framework] if importlib.util.find_spec(name) is None]
    if missing:
        raise DemoError(
            f"the {framework} shop needs {', '.join(missing)}, which is not installed. "
            "Fix: pip install -e '.[all]' (or capi-bridge[all])."
        )


def listen(port: int) -> socket.socket:
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


@dataclass
class Running:
    """A started shop: how to tell it is alive and how to stop it (flushing its bridge)."""

    alive: Callable[[], bool]
    stop: Callable[[], bool]


def _serve_flask(module: ModuleType, sock: socket.socket) -> Running:
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

    return Running(thread.is_alive, stop)


def _serve_django(manage: Path, sock: socket.socket) -> Running:
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

    return Running(thread.is_alive, stop)


def _serve_starlette(module: ModuleType, sock: socket.socket) -> Running:
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

    return Running(thread.is_alive, stop)


def start_shop(framework: str, path: Path, sock: socket.socket) -> Running:
    """Serve the shop at ``path`` on ``sock`` in a thread of this process; it reads its
    settings from the environment as it starts (a bad one raises ConfigError)."""
    if framework == "django":
        return _serve_django(path, sock)
    module = _load_shop(path)
    serve = _serve_flask if framework == "flask" else _serve_starlette
    return serve(module, sock)
