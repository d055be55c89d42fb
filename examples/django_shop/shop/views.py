"""The same shop as ``examples/flask_app.py`` and ``examples/starlette_app.py``, in Django.

The middleware injects the pixel snippet into every page and serves the mirror endpoint; the
product page's "Add to cart" button uses ``capiBridge.track`` (pixel + server copy, one id); the
newsletter form and the checkout confirm a Lead and a Purchase on the server with ``track()``,
and the page the visitor lands on next fires the pixel twin with the same id. The checkout is an
async view, as a view waiting on a payment provider would be.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods, require_POST

from capi_bridge.django import atrack, get_bridge, identify, track

PRODUCTS: dict[str, dict[str, Any]] = {
    p["id"]: p
    for p in json.loads((Path(__file__).resolve().parents[2] / "products.json").read_text())
}
CART_COOKIE = "cart"


def cart_ids(request: HttpRequest) -> list[str]:
    raw = request.COOKIES.get(CART_COOKIE, "")
    return [pid for pid in raw.split(".") if pid in PRODUCTS]


def page(request: HttpRequest, template: str, **context: Any) -> HttpResponse:
    bridge = get_bridge().settings
    banner = bridge.consent_required and request.COOKIES.get(bridge.consent_cookie) != "1"
    context.update(cart_count=len(cart_ids(request)), consent_banner=banner)
    return render(request, template, context)


def index(request: HttpRequest) -> HttpResponse:
    return page(request, "index.html", products=list(PRODUCTS.values()))


def product(request: HttpRequest, pid: str) -> HttpResponse:
    if pid not in PRODUCTS:
        return HttpResponse("no such product", status=404)
    return page(request, "product.html", product=PRODUCTS[pid])


@require_http_methods(["GET", "POST"])
def cart(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":  # the product page's fetch() after capiBridge.track
        try:
            pid = json.loads(request.body or b"{}").get("id")
        except ValueError:
            pid = None
        if pid not in PRODUCTS:
            return JsonResponse({"error": "unknown product"}, status=400)
        ids = [*cart_ids(request), pid]  # the count goes back for the page's cart link
        response = JsonResponse({"ok": True, "count": len(ids)})
        response.set_cookie(CART_COOKIE, ".".join(ids), samesite="Lax")
        return response
    items = [PRODUCTS[pid] for pid in cart_ids(request)]
    return page(request, "cart.html", items=items, total=sum(p["price"] for p in items))


@require_POST
async def checkout(request: HttpRequest) -> HttpResponse:
    items = [PRODUCTS[pid] for pid in cart_ids(request)]
    if not items:
        return HttpResponseRedirect("/cart", status=303)
    # The payment is confirmed here, on the server: the Purchase goes through CAPI now, and
    # /thank-you fires the pixel's Purchase with the same event id.
    identify(request, em=request.POST.get("email") or None)
    await atrack(
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
    response = HttpResponseRedirect("/thank-you", status=303)
    response.delete_cookie(CART_COOKIE)
    return response


def thanks(request: HttpRequest) -> HttpResponse:
    return page(request, "thanks.html")


@require_http_methods(["GET", "POST"])
def newsletter(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        identify(request, em=request.POST.get("email") or None)
        track(request, "Lead", custom_data={"content_name": "newsletter"})
        return HttpResponseRedirect("/newsletter?subscribed=1", status=303)
    return page(request, "newsletter.html", subscribed=request.GET.get("subscribed") == "1")
