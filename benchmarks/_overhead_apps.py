"""The apps :mod:`overhead` measures: Flask, Starlette and Django, each bare and with
capi-bridge, answering the same three paths, and runners that send them one request in process.

Kept apart from the measuring so each module stays short; see ``overhead.py`` for what each
path is and why.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import Callable
from typing import Any

from flask import Flask, jsonify, render_template
from jinja2 import DictLoader
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from capi_bridge.flask import CapiBridge
from capi_bridge.settings import Settings
from capi_bridge.starlette import CapiBridgeMiddleware

PRODUCTS = [
    {"id": f"sku-{i:04d}", "name": f"Product number {i} with a longer name", "price": 9.5 + i}
    for i in range(100)
]
TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<link rel="stylesheet" href="/static/shop.css"></head>
<body><header><nav><a href="/">Shop</a> <a href="/cart">Cart</a></nav></header>
<main><h1>{{ title }}</h1><ul class="products">
{% for p in products %}<li class="product" data-id="{{ p.id }}"><a href="/product/{{ p.id }}">
{{ p.name }}</a> <span class="price">{{ "%.2f"|format(p.price) }} EUR</span>
<button class="add" data-id="{{ p.id }}">Add to cart</button></li>
{% endfor %}</ul></main><footer>Example shop</footer></body></html>
"""
#: The same page in Django's template language.
DJANGO_TEMPLATE = TEMPLATE.replace('"%.2f"|format(p.price)', "p.price|floatformat:2")
TRIVIAL = (
    "<!doctype html><html><head><title>t</title></head><body>" + "x" * 20_400 + "</body></html>"
)
UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/156.0 Safari/537.36"
)
HEADERS = [
    ("host", "shop.example"),
    ("user-agent", UA),
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("accept-language", "en-US,en;q=0.9"),
    ("sec-fetch-dest", "document"),
    ("sec-fetch-mode", "navigate"),
    ("cookie", "_fbp=fb.1.1700000000000.1234567890; session=abc123; theme=dark"),
]
SETTINGS = {
    "pixel_id": "1234567890",
    "access_token": "bench-token",
    "secret_key": "benchmark-secret-key-0123456789abcdef",
    "graph_url": "http://127.0.0.1:9",  # never contacted: these paths enqueue nothing
}


# --- Flask ----------------------------------------------------------------------------------


def flask_app(wrapped: bool, outbox: str) -> Callable[..., Any]:
    app = Flask(__name__)
    app.jinja_loader = DictLoader({"page.html": TEMPLATE})  # compiled once, cached by Jinja
    if wrapped:
        app.config.update({f"CAPI_BRIDGE_{k.upper()}": v for k, v in SETTINGS.items()})
        app.config["CAPI_BRIDGE_OUTBOX_PATH"] = outbox
        CapiBridge(app)

    @app.get("/page")
    def page() -> str:
        return render_template("page.html", title="All products", products=PRODUCTS)

    @app.get("/json")
    def data() -> Any:
        return jsonify(ok=True, items=3)

    @app.get("/trivial")
    def trivial() -> str:
        return TRIVIAL

    return app.wsgi_app


def wsgi_runner(app: Callable[..., Any], path: str) -> Callable[[], int]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "shop.example",
        "SERVER_PORT": "443",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "203.0.113.7",
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in HEADERS:
        environ["HTTP_" + name.upper().replace("-", "_")] = value

    def start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
        return None

    def run() -> int:
        result = app(dict(environ), start_response)
        size = sum(len(chunk) for chunk in result)
        close = getattr(result, "close", None)
        if close is not None:
            close()
        return size

    return run


# --- Starlette ------------------------------------------------------------------------------


def starlette_app(wrapped: bool, outbox: str) -> Any:
    templates = Jinja2Templates(directory=tempfile.mkdtemp())
    template = templates.env.from_string(TEMPLATE)

    async def page(request: Request) -> Response:
        return HTMLResponse(template.render(title="All products", products=PRODUCTS))

    async def data(request: Request) -> Response:
        return JSONResponse({"ok": True, "items": 3})

    async def trivial(request: Request) -> Response:
        return HTMLResponse(TRIVIAL)

    middleware = []
    if wrapped:
        settings = Settings(outbox_path=outbox, **SETTINGS)
        middleware = [Middleware(CapiBridgeMiddleware, settings=settings)]
    return Starlette(
        routes=[Route("/page", page), Route("/json", data), Route("/trivial", trivial)],
        middleware=middleware,
    )


def asgi_runner(app: Any, path: str, loop: asyncio.AbstractEventLoop) -> Callable[[], int]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in HEADERS],
        "client": ("203.0.113.7", 50000),
        "server": ("shop.example", 443),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def once() -> int:
        size = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal size
            if message["type"] == "http.response.body":
                size += len(message.get("body", b""))

        await app(dict(scope), receive, send)
        return size

    def run() -> int:
        return loop.run_until_complete(once())

    return run


# --- Django ---------------------------------------------------------------------------------


def django_apps(outbox: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Django's WSGI handler without and with the middleware (settings once per process)."""
    import django
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler
    from django.http import HttpResponse, JsonResponse
    from django.template import engines
    from django.test import override_settings
    from django.urls import path

    def page(request: Any) -> HttpResponse:
        html = engines["django"].from_string(DJANGO_TEMPLATE)
        return HttpResponse(html.render({"title": "All products", "products": PRODUCTS}))

    def data(request: Any) -> JsonResponse:
        return JsonResponse({"ok": True, "items": 3})

    def trivial(request: Any) -> HttpResponse:
        return HttpResponse(TRIVIAL)

    global urlpatterns
    urlpatterns = [path("page", page), path("json", data), path("trivial", trivial)]
    settings.configure(
        SECRET_KEY=SETTINGS["secret_key"],
        ALLOWED_HOSTS=["shop.example"],
        INSTALLED_APPS=["capi_bridge.django"],
        MIDDLEWARE=["capi_bridge.django.CapiBridgeMiddleware"],
        ROOT_URLCONF=__name__,
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}],
        DATABASES={},
        CAPI_BRIDGE={**{k.upper(): v for k, v in SETTINGS.items()}, "OUTBOX_PATH": outbox},
    )
    django.setup()
    wrapped = WSGIHandler()
    with override_settings(MIDDLEWARE=[]):
        bare = WSGIHandler()
    return bare, wrapped


urlpatterns: list[Any] = []


FRAMEWORKS = ("flask", "starlette", "django")
KINDS = ("page", "json", "trivial")


def all_runners(
    outbox: str, loop: asyncio.AbstractEventLoop
) -> dict[str, tuple[Callable[[], int], Callable[[], int]]]:
    """``"flask/page"`` -> (bare, wrapped) runners, for every framework and kind."""
    bare_flask, wrapped_flask = flask_app(False, outbox), flask_app(True, outbox)
    bare_star, wrapped_star = starlette_app(False, outbox), starlette_app(True, outbox)
    bare_django, wrapped_django = django_apps(outbox)
    runners = {}
    for kind in KINDS:
        path = f"/{kind}"
        runners[f"flask/{kind}"] = (
            wsgi_runner(bare_flask, path),
            wsgi_runner(wrapped_flask, path),
        )
        runners[f"starlette/{kind}"] = (
            asgi_runner(bare_star, path, loop),
            asgi_runner(wrapped_star, path, loop),
        )
        runners[f"django/{kind}"] = (
            wsgi_runner(bare_django, path),
            wsgi_runner(wrapped_django, path),
        )
    return runners
