"""The same oversize POST, streamed without a Content-Length (chunked), gets the same answer
from every adapter, and none of ours reads more than the endpoint's limit + 1 bytes of it.

In process, so what each adapter pulled from the request can be counted: ``wsgi.input`` for the
WSGI ones (a server that ends the stream itself sets ``wsgi.input_terminated``, as Werkzeug and
gunicorn do for chunked bodies), ``receive()`` calls for the ASGI ones. Django's ASGI handler
spools the whole body before any middleware runs (Django's own behaviour, outside our reach), so
there only the answer is compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from helpers import adapters, django_app
from helpers.adapters import Call
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


#: The 5 MB body, streamed in 64 KiB chunks (the adapters count what they pull of it).
BODY = Call(
    method="POST",
    path=PATH,
    headers=HEADERS,
    chunks=[b"x" * CHUNK] * (TOTAL // CHUNK),
    chunked=True,
)


def call_wsgi(app: Callable[..., Any]) -> tuple[int, bytes, int]:
    reply = adapters.call_wsgi(app, BODY)
    return reply.status, reply.body, reply.read


def call_asgi(app: Callable[..., Any]) -> tuple[int, bytes, int]:
    reply = adapters.call_asgi(app, BODY)
    return reply.status, reply.body, reply.read


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
