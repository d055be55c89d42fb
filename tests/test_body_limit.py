"""The same oversize POST, streamed without a Content-Length (chunked), gets the same answer
from every adapter, and none of ours reads more than the endpoint's limit + 1 bytes of it.

In process, so what each adapter pulled from the request can be counted: ``wsgi.input`` for the
WSGI ones (a server that ends the stream itself sets ``wsgi.input_terminated``, as Werkzeug and
gunicorn do for chunked bodies), ``receive()`` calls for the ASGI ones. Django's ASGI handler
spools the whole body before any middleware runs (Django's own behaviour, outside our reach), so
there only the answer is compared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from helpers import django_app
from helpers.web import BROWSER
from starlette.applications import Starlette
from starlette.middleware import Middleware

from capi_bridge import asgi, starlette, wsgi
from capi_bridge.endpoint import MAX_BODY_BYTES
from capi_bridge.flask import CapiBridge
from capi_bridge.settings import Settings

django_app.setup()

from django.core.asgi import get_asgi_application  # noqa: E402 - after settings are configured
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.test import override_settings  # noqa: E402

TOTAL = 5 * 1024 * 1024
CHUNK = 64 * 1024
PATH = "/capi-bridge/events"
HEADERS = {
    "content-type": "text/plain",
    "origin": "http://localhost",
    "host": "localhost",
    "user-agent": BROWSER["User-Agent"],
}


class Stream:
    """A 5 MB request body that counts what was read of it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        left = TOTAL - self.read_bytes
        size = left if size is None or size < 0 else min(size, left)
        self.read_bytes += size
        return b"x" * size

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


def environ(stream: Stream) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": PATH,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "81.2.69.142",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.url_scheme": "http",
        "wsgi.input": stream,
        "wsgi.input_terminated": True,
        "wsgi.errors": None,
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in HEADERS.items():
        key = "CONTENT_TYPE" if name == "content-type" else "HTTP_" + name.upper().replace("-", "_")
        env[key] = value
    return env


def call_wsgi(app: Callable[..., Any]) -> tuple[int, bytes, int]:
    stream = Stream()
    status: list[str] = []
    body = b"".join(app(environ(stream), lambda s, h, e=None: status.append(s)))
    return int(status[0][:3]), body, stream.read_bytes


def call_asgi(app: Callable[..., Any]) -> tuple[int, bytes, int]:
    received = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received >= TOTAL:  # the body is over: a server waits for the client to leave
            await asyncio.Event().wait()
        more = received + CHUNK < TOTAL
        received += CHUNK
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": more}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in HEADERS.items()]
        + [(b"transfer-encoding", b"chunked")],
        "client": ("81.2.69.142", 50000),
        "server": ("localhost", 80),
    }
    asyncio.run(app(scope, receive, send))
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(start["status"]), body, received


@pytest.fixture
def settings(delivery_settings: Any) -> Settings:
    made: Settings = delivery_settings(secret_key=django_app.SECRET)
    return made


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the middleware answers its own route")


def _wsgi_no_app(environ: Any, start_response: Any) -> Any:
    raise AssertionError("the middleware answers its own route")


@pytest.fixture
def django_settings(settings: Settings) -> Iterator[None]:
    value = {
        "PIXEL_ID": settings.pixel_id,
        "ACCESS_TOKEN": settings.access_token,
        "GRAPH_URL": settings.graph_url,
        "OUTBOX_PATH": settings.outbox_path,
    }
    with override_settings(CAPI_BRIDGE=value, ALLOWED_HOSTS=["localhost"]):
        yield


def answers(settings: Settings) -> dict[str, tuple[int, bytes, int]]:
    flask = Flask(__name__)
    CapiBridge(flask, settings=settings)
    star = Starlette(middleware=[Middleware(starlette.CapiBridgeMiddleware, settings=settings)])
    found = {
        "wsgi": call_wsgi(wsgi.CapiBridgeMiddleware(_wsgi_no_app, settings=settings)),
        "flask": call_wsgi(flask),
        "django (WSGI)": call_wsgi(get_wsgi_application()),
        "asgi": call_asgi(asgi.CapiBridgeMiddleware(_no_app, settings=settings)),
        "starlette": call_asgi(star),
        "django (ASGI)": call_asgi(get_asgi_application()),
    }
    flask.extensions["capi_bridge"].close(timeout=0)
    return found


def test_a_chunked_oversize_post_gets_413_everywhere_and_is_never_read_past_the_limit(
    settings: Settings, django_settings: None
) -> None:
    found = answers(settings)
    assert {name: status for name, (status, _, _) in found.items()} == dict.fromkeys(found, 413)
    bodies = {body for _, body, _ in found.values()}
    assert len(bodies) == 1, bodies  # the same reason, word for word
    assert b"body_too_large" in bodies.pop()
    for name in ("wsgi", "flask", "django (WSGI)"):
        assert found[name][2] == MAX_BODY_BYTES + 1, name  # one byte past the limit, no more
    for name in ("asgi", "starlette"):
        assert found[name][2] <= MAX_BODY_BYTES + CHUNK, name  # stopped at the first chunk past
