"""The same shop on Starlette with capi-bridge: run ``uvicorn examples.starlette_app:app``.

Configuration comes only from ``CAPI_BRIDGE_*`` environment variables (README "Examples").
The pure-ASGI middleware injects the pixel snippet and serves the mirror endpoint; the lifespan
opens the outbox at start-up and flushes it at shutdown; ``track(request, ...)`` confirms the
Lead and the Purchase on the server, and the next page fires the pixel twin with the same id.
The same code runs unchanged under FastAPI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from capi_bridge.starlette import CapiBridgeMiddleware, capi_pixel, get_core, identify, track

HERE = Path(__file__).resolve().parent
PRODUCTS: dict[str, dict[str, Any]] = {
    p["id"]: p for p in json.loads((HERE / "products.json").read_text())
}
CART_COOKIE = "cart"

templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals["capi_pixel"] = capi_pixel  # for templates that place it themselves


def cart_ids(request: Request) -> list[str]:
    raw = request.cookies.get(CART_COOKIE, "")
    return [pid for pid in raw.split(".") if pid in PRODUCTS]


def page(request: Request, template: str, **context: Any) -> Response:
    settings = get_core(request).settings
    banner = settings.consent_required and request.cookies.get(settings.consent_cookie) != "1"
    context.update(cart_count=len(cart_ids(request)), consent_banner=banner)
    return templates.TemplateResponse(request, template, context)


async def index(request: Request) -> Response:
    return page(request, "index.html", products=list(PRODUCTS.values()))


async def product(request: Request) -> Response:
    pid = request.path_params["pid"]
    if pid not in PRODUCTS:
        return Response("no such product", status_code=404)
    return page(request, "product.html", product=PRODUCTS[pid])


async def cart(request: Request) -> Response:
    if request.method == "POST":  # the product page's fetch() after capiBridge.track
        try:
            pid = (await request.json()).get("id")
        except ValueError:
            pid = None
        if pid not in PRODUCTS:
            return JSONResponse({"error": "unknown product"}, status_code=400)
        ids = [*cart_ids(request), pid]  # the count goes back for the page's cart link
        response = JSONResponse({"ok": True, "count": len(ids)})
        response.set_cookie(CART_COOKIE, ".".join(ids), samesite="lax")
        return response
    items = [PRODUCTS[pid] for pid in cart_ids(request)]
    return page(request, "cart.html", items=items, total=sum(p["price"] for p in items))


async def checkout(request: Request) -> Response:
    items = [PRODUCTS[pid] for pid in cart_ids(request)]
    if not items:
        return RedirectResponse("/cart", status_code=303)
    form = await request.form()
    # The payment is confirmed here, on the server: the Purchase goes through CAPI now, and
    # /thank-you fires the pixel's Purchase with the same event id.
    identify(request, em=str(form.get("email") or "") or None)
    await track(
        request,
        "Purchase",
        custom_data={
            "value": round(sum(p["price"] for p in items), 2),
            "currency": "EUR",
            "content_type": "product",
            "content_ids": [p["id"] for p in items],
            "contents": [{"id": p["id"], "quantity": 1} for p in items],
        },
    )
    response = RedirectResponse("/thank-you", status_code=303)
    response.delete_cookie(CART_COOKIE)
    return response


async def thanks(request: Request) -> Response:
    return page(request, "thanks.html")


async def newsletter(request: Request) -> Response:
    if request.method == "POST":
        form = await request.form()
        identify(request, em=str(form.get("email") or "") or None)
        await track(request, "Lead", custom_data={"content_name": "newsletter"})
        return RedirectResponse("/newsletter?subscribed=1", status_code=303)
    subscribed = request.query_params.get("subscribed") == "1"
    return page(request, "newsletter.html", subscribed=subscribed)


def create_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/", index),
            Route("/product/{pid}", product),
            Route("/cart", cart, methods=["GET", "POST"]),
            Route("/checkout", checkout, methods=["POST"]),
            Route("/thank-you", thanks),
            Route("/newsletter", newsletter, methods=["GET", "POST"]),
        ],
        # Settings from CAPI_BRIDGE_* environment variables (or pass them as keywords here).
        middleware=[Middleware(CapiBridgeMiddleware)],
    )


app = create_app()
