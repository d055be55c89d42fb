"""Every adapter around the same small shop, in process, driven by one request type.

The hostile-traffic tests (issue 13) send the same request to each adapter and compare: bare
WSGI, Flask, Django under WSGI, bare ASGI, Starlette, Django under ASGI. Each shop serves

* ``GET /shop?q=...&em=...``: an HTML page (``Cache-Control: public, max-age=600``) whose title
  is the search term ``q`` (HTML-escaped, as templates do), for a visitor identified by ``em``;
* ``POST /pay``: a server Purchase, then a 303 to ``/shop`` (its pixel twin waits for a page).

A :class:`Call` is sent as the server would hand it over (a WSGI environ with a body stream,
or ASGI messages, chunk by chunk); the :class:`Reply` says how many body bytes the adapter read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs

from helpers import django_app

django_app.setup()

from django.core.asgi import get_asgi_application  # noqa: E402 - after settings are configured
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.test import override_settings  # noqa: E402
from flask import Flask, redirect  # noqa: E402
from flask import Response as FlaskResponse  # noqa: E402
from flask import request as flask_request  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.requests import Request as StarletteRequest  # noqa: E402
from starlette.responses import HTMLResponse, RedirectResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from capi_bridge import asgi, starlette, wsgi  # noqa: E402
from capi_bridge.assembly import build_core  # noqa: E402
from capi_bridge.django import conf  # noqa: E402
from capi_bridge.flask import CapiBridge  # noqa: E402
from capi_bridge.pages import CORE_STATE_KEY, PAGE_ENVIRON_KEY, Page, PageBridge, page_in  # noqa: E402
from capi_bridge.request import RequestView  # noqa: E402
from capi_bridge.settings import Settings  # noqa: E402

ADAPTERS = ("wsgi", "flask", "django-wsgi", "asgi", "starlette", "django-asgi")
#: Adapters that hand us the raw body stream (Django's ASGI handler spools the whole body
#: before any middleware runs: Django's own behaviour).
STREAMING = ("wsgi", "flask", "django-wsgi", "asgi", "starlette")
HOST = "shop.test"
PURCHASE = {"value": 10, "currency": "EUR"}
_HTML = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "public, max-age=600")]


def shop_page(term: str) -> bytes:
    return django_app.shop_page(term).encode()


@dataclasses.dataclass
class Call:
    """One request: ``headers`` lower-case; the body in ``chunks``, announced by a
    Content-Length unless ``chunked``."""

    method: str = "GET"
    path: str = "/shop"
    query: str = ""
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    chunks: Sequence[bytes] = ()
    chunked: bool = False
    peer: str = "81.2.69.142"
    scheme: str = "http"


@dataclasses.dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    read: int  # request body bytes the app pulled

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


class _Stream:
    """``wsgi.input`` over the call's chunks (never joined: a memory test traces what the app
    allocates), counting what was read."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = list(chunks)
        self._index = 0  # the chunk being read, and the position in it
        self._at = 0
        self.read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        parts: list[bytes] = []
        want = -1 if size is None or size < 0 else size
        while want != 0 and self._index < len(self._chunks):
            chunk = self._chunks[self._index]
            take = len(chunk) - self._at if want < 0 else min(want, len(chunk) - self._at)
            parts.append(chunk[self._at : self._at + take])
            self._at += take
            if self._at == len(chunk):
                self._index, self._at = self._index + 1, 0
            if want > 0:
                want -= take
        out = b"".join(parts)
        self.read_bytes += len(out)
        return out

    def readline(self, size: int | None = -1) -> bytes:
        return self.read(size)


def _all_headers(call: Call) -> dict[str, str]:
    headers = {"host": HOST, **call.headers}
    if not call.chunked and call.chunks:
        headers.setdefault("content-length", str(sum(map(len, call.chunks))))
    if call.chunked:
        headers["transfer-encoding"] = "chunked"
    return headers


def call_wsgi(app: Callable[..., Any], call: Call) -> Reply:
    stream = _Stream(call.chunks)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": call.method,
        "PATH_INFO": call.path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": call.query,
        "SERVER_NAME": HOST,
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": call.peer,
        "wsgi.url_scheme": call.scheme,
        "wsgi.input": stream,
        "wsgi.input_terminated": call.chunked,
        "wsgi.errors": None,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in _all_headers(call).items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = value
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
        started.append((status, headers))
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started[-1]
    lowered = [(k.lower(), v) for k, v in headers]
    return Reply(int(status[:3]), lowered, body, stream.read_bytes)


def call_asgi(app: Callable[..., Any], call: Call) -> Reply:
    chunks = list(call.chunks) or [b""]
    received = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received >= len(chunks):  # the body is over: a server waits for the client to leave
            await asyncio.Event().wait()
        chunk = chunks[received]
        received += 1
        return {"type": "http.request", "body": chunk, "more_body": received < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": call.method,
        "scheme": call.scheme,
        "path": call.path,
        "raw_path": call.path.encode("latin-1", "replace"),
        "query_string": call.query.encode("latin-1", "replace"),
        "root_path": "",
        "headers": [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in _all_headers(call).items()
        ],
        "client": (call.peer, 50000),
        "server": (HOST, 80),
    }
    asyncio.run(app(scope, receive, send))
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = [
        (bytes(k).decode("latin-1").lower(), bytes(v).decode("latin-1"))
        for k, v in start["headers"]
    ]
    read = sum(len(c) for c in chunks[:received])
    return Reply(int(start["status"]), headers, body, read)


# --- the shop in each framework --------------------------------------------------------------


def _wsgi_shop(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    page = environ.get(PAGE_ENVIRON_KEY)
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if environ["PATH_INFO"] == "/pay":
        if isinstance(page, Page):
            page.track("Purchase", custom_data=PURCHASE)
        start_response("303 See Other", [("Location", "/shop")])
        return [b""]
    if environ["PATH_INFO"] != "/shop":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    if isinstance(page, Page) and query.get("em"):
        page.identify(em=query["em"][0])
    body = shop_page(query.get("q", [""])[0])
    start_response("200 OK", [*_HTML, ("Content-Length", str(len(body)))])
    return [body]


async def _asgi_shop(scope: dict[str, Any], receive: Any, send: Any) -> None:
    state = scope.setdefault("state", {})
    core = state.get(CORE_STATE_KEY)
    query = parse_qs(scope["query_string"].decode("latin-1"))

    def page() -> Page | None:
        if not isinstance(core, PageBridge):
            return None
        dest = dict(scope["headers"]).get(b"sec-fetch-dest", b"").decode("latin-1") or None
        return page_in(state, core, lambda: RequestView.from_asgi(scope), dest)

    if scope["path"] == "/pay":
        found = page()
        if found is not None:
            await asyncio.to_thread(found.track, "Purchase", custom_data=PURCHASE)
        status, headers, body = 303, [(b"location", b"/shop")], b""
    elif scope["path"] == "/shop":
        found = page()
        if found is not None and query.get("em"):
            found.identify(em=query["em"][0])
        body = shop_page(query.get("q", [""])[0])
        headers = [(k.lower().encode(), v.encode()) for k, v in _HTML]
        headers.append((b"content-length", str(len(body)).encode()))
        status = 200
    else:
        status, headers, body = 404, [(b"content-type", b"text/plain")], b"not found"
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _flask_shop(settings: Settings) -> Flask:
    app = Flask(__name__)
    capi = CapiBridge(app, settings=settings)

    @app.get("/shop")
    def shop() -> FlaskResponse:
        if flask_request.args.get("em"):
            capi.identify(em=flask_request.args["em"])
        page = shop_page(flask_request.args.get("q", ""))
        return FlaskResponse(page, headers=dict(_HTML))

    @app.post("/pay")
    def pay() -> Any:
        capi.track("Purchase", custom_data=PURCHASE)
        return redirect("/shop", 303)

    return app


def _starlette_shop(core: PageBridge) -> Starlette:
    async def shop(request: StarletteRequest) -> HTMLResponse:
        if request.query_params.get("em"):
            starlette.identify(request, em=request.query_params["em"])
        page = shop_page(request.query_params.get("q", ""))
        return HTMLResponse(page, headers={"Cache-Control": "public, max-age=600"})

    async def pay(request: StarletteRequest) -> RedirectResponse:
        await starlette.track(request, "Purchase", custom_data=PURCHASE)
        return RedirectResponse("/shop", 303)

    routes = [Route("/shop", shop), Route("/pay", pay, methods=["POST"])]
    middleware = [Middleware(starlette.CapiBridgeMiddleware, core=core)]
    return Starlette(routes=routes, middleware=middleware)


@dataclasses.dataclass
class Shop:
    """One adapter's app and core; :meth:`call` sends a :class:`Call`."""

    kind: str
    core: PageBridge
    app: Callable[..., Any]

    def call(self, call: Call) -> Reply:
        if self.kind in ("asgi", "starlette", "django-asgi"):
            return call_asgi(self.app, call)
        return call_wsgi(self.app, call)


def _django_value(settings: Settings) -> dict[str, Any]:
    """``settings`` as Django's ``CAPI_BRIDGE`` dict (every field that differs from the default)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        if field.init and getattr(settings, field.name) != field.default:
            value = getattr(settings, field.name)
            out[field.name.upper()] = list(value) if isinstance(value, tuple) else value
    return out


def open_shop(kind: str, settings: Settings) -> Iterator[Shop]:
    """A generator fixture body: the shop of ``kind`` with ``settings``, closed afterwards."""
    if kind.startswith("django"):
        with override_settings(CAPI_BRIDGE=_django_value(settings)):
            app = get_wsgi_application() if kind == "django-wsgi" else get_asgi_application()
            core = conf.core()
            try:
                yield Shop(kind, core, app)
            finally:
                core.close(timeout=0)
        return
    made: Callable[..., Any]
    if kind == "flask":
        flask_app = _flask_shop(settings)
        made, core = flask_app, flask_app.extensions["capi_bridge"]
    else:
        core = build_core(settings)
    if kind == "wsgi":
        made = wsgi.CapiBridgeMiddleware(_wsgi_shop, core=core)
    elif kind == "asgi":
        made = asgi.CapiBridgeMiddleware(_asgi_shop, core=core)
    elif kind == "starlette":
        made = _starlette_shop(core)
    try:
        yield Shop(kind, core, made)
    finally:
        core.close(timeout=0)


def page_of(reply: Reply) -> str:
    return html.unescape(reply.body.decode("utf-8", "replace"))
