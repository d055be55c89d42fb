"""Per-request overhead of the middleware: the same app with and without capi-bridge.

    python benchmarks/overhead.py [--requests 3000] [--rounds 7]

In-process, no sockets: each request calls the WSGI callable (Flask, Django's WSGI handler) or
the ASGI callable (Starlette, on one event loop) directly, with the headers of a returning
visitor's browser navigation (user agent, Accept, ``Sec-Fetch-Dest: document``, a cookie
header holding ``_fbp``), and drains the whole body. Three responses per framework:

* ``page``: a view rendering a template of about 20 KB (a product list of 100 items): Jinja2
  for Flask and Starlette (whose endpoint is ``async def``), Django's own template engine for
  Django, the same page. Target: with/without <= 1.10.
* ``json``: a small JSON response to the same navigation headers. Target <= 1.03.
* ``trivial``: a constant 20 KB HTML string, for reference (the worst case: nothing to hide
  our work behind).

Bare and wrapped apps run interleaved, round after round, in the same process; the figure is
the median over rounds of (wrapped time / bare time), and the added microseconds per request.
The outbox is never touched on these paths (a page view is mirrored only when the browser's
script confirms it), so no Graph server is needed. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import statistics
import tempfile
import time
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

TARGETS = {"page": 1.10, "json": 1.03}
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


# --- measuring ------------------------------------------------------------------------------


def timed(run: Callable[[], int], requests: int) -> float:
    """Seconds per request over ``requests`` calls."""
    gc.collect()
    start = time.perf_counter()
    for _ in range(requests):
        run()
    return (time.perf_counter() - start) / requests


def compare(
    bare: Callable[[], int], wrapped: Callable[[], int], requests: int, rounds: int
) -> dict[str, float]:
    wrapped_size, bare_size = wrapped(), bare()  # warm up both; sanity-check the rewrite
    assert wrapped_size >= bare_size
    for _ in range(3):
        timed(bare, requests // 10)
        timed(wrapped, requests // 10)
    ratios, added = [], []
    for _ in range(rounds):
        t_bare = timed(bare, requests)
        t_wrapped = timed(wrapped, requests)
        ratios.append(t_wrapped / t_bare)
        added.append((t_wrapped - t_bare) * 1e6)
    return {
        "ratio": round(statistics.median(ratios), 3),
        "added_us": round(statistics.median(added), 1),
        "bare_us": round(t_bare * 1e6, 1),
        "injected_bytes": wrapped_size - bare_size,
    }


def one(case: str, count: int) -> None:
    """``--one flask/page/wrapped --count N``: only N requests of one case, for instruction
    counts on a noisy machine: ``valgrind --tool=callgrind`` this at two counts; the difference
    over the extra requests is the cost per request, whatever the load of the machine."""
    framework, kind, variant = case.split("/")
    wrapped = variant == "wrapped"
    with tempfile.TemporaryDirectory() as tmp:
        outbox = f"{tmp}/outbox.sqlite3"
        loop = asyncio.new_event_loop()
        if framework == "flask":
            run = wsgi_runner(flask_app(wrapped, outbox), f"/{kind}")
        elif framework == "starlette":
            run = asgi_runner(starlette_app(wrapped, outbox), f"/{kind}", loop)
        else:
            bare, with_bridge = django_apps(outbox)
            run = wsgi_runner(with_bridge if wrapped else bare, f"/{kind}")
        for _ in range(20 + count):  # 20 to warm caches (templates, regexes) in both runs
            run()
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--one", help="framework/kind/bare|wrapped: only that case (callgrind)")
    parser.add_argument("--count", type=int, default=100, help="requests for --one")
    args = parser.parse_args()
    if args.one:
        one(args.one, args.count)
        return
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        outbox = f"{tmp}/outbox.sqlite3"
        bare_flask, wrapped_flask = flask_app(False, outbox), flask_app(True, outbox)
        loop = asyncio.new_event_loop()
        bare_star, wrapped_star = starlette_app(False, outbox), starlette_app(True, outbox)
        bare_django, wrapped_django = django_apps(outbox)
        for kind in ("page", "json", "trivial"):
            results[f"flask/{kind}"] = compare(
                wsgi_runner(bare_flask, f"/{kind}"),
                wsgi_runner(wrapped_flask, f"/{kind}"),
                args.requests,
                args.rounds,
            )
            results[f"starlette/{kind}"] = compare(
                asgi_runner(bare_star, f"/{kind}", loop),
                asgi_runner(wrapped_star, f"/{kind}", loop),
                args.requests,
                args.rounds,
            )
            results[f"django/{kind}"] = compare(
                wsgi_runner(bare_django, f"/{kind}"),
                wsgi_runner(wrapped_django, f"/{kind}"),
                args.requests,
                args.rounds,
            )
        loop.close()
    print(f"{'case':<20}{'bare µs':>10}{'added µs':>10}{'ratio':>8}{'target':>8}")
    for case, row in results.items():
        target = TARGETS.get(case.split("/")[1])
        mark = "" if target is None else ("ok" if row["ratio"] <= target else "MISS")
        shown = f"{target:.2f}" if target else "-"
        print(
            f"{case:<20}{row['bare_us']:>10}{row['added_us']:>10}{row['ratio']:>8}{shown:>8} {mark}"
        )
    print(json.dumps({"overhead": results}))


if __name__ == "__main__":
    main()
