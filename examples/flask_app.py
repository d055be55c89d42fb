"""A small shop on Flask with capi-bridge: run ``flask --app examples/flask_app run``.

Configuration comes only from ``CAPI_BRIDGE_*`` environment variables (README "Examples";
``capi-bridge demo`` sets them for you, against a local fake of Meta's Graph API). What the
shop shows: the pixel snippet is injected into every page by the extension, the product page's
"Add to cart" button uses ``capiBridge.track`` (pixel + server copy, one id), the newsletter form
and the checkout confirm a Lead and a Purchase on the server with ``capi.track``, and the page
the visitor lands on next fires the pixel twin with the same id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Flask, redirect, render_template, request
from werkzeug.wrappers import Response

from capi_bridge.flask import CapiBridge

HERE = Path(__file__).resolve().parent
PRODUCTS: dict[str, dict[str, Any]] = {
    p["id"]: p for p in json.loads((HERE / "products.json").read_text())
}
CART_COOKIE = "cart"

capi = CapiBridge()


def cart_ids() -> list[str]:
    raw = request.cookies.get(CART_COOKIE, "")
    return [pid for pid in raw.split(".") if pid in PRODUCTS]


def page(template: str, **context: Any) -> str:
    settings = capi.core.settings
    banner = settings.consent_required and request.cookies.get(settings.consent_cookie) != "1"
    return render_template(template, cart_count=len(cart_ids()), consent_banner=banner, **context)


def create_app() -> Flask:
    app = Flask(__name__, template_folder=str(HERE / "templates"))
    capi.init_app(app)  # settings from CAPI_BRIDGE_* (app.config, then the environment)

    @app.get("/")
    def index() -> str:
        return page("index.html", products=list(PRODUCTS.values()))

    @app.get("/product/<pid>")
    def product(pid: str) -> str | tuple[str, int]:
        if pid not in PRODUCTS:
            return "no such product", 404
        return page("product.html", product=PRODUCTS[pid])

    @app.route("/cart", methods=["GET", "POST"])
    def cart() -> Any:
        if request.method == "POST":  # the product page's fetch() after capiBridge.track
            pid = (request.get_json(silent=True) or {}).get("id")
            if pid not in PRODUCTS:
                return {"error": "unknown product"}, 400
            ids = [*cart_ids(), pid]  # the count goes back for the page's cart link
            reply = json.dumps({"ok": True, "count": len(ids)})
            response = app.response_class(reply, mimetype="application/json")
            response.set_cookie(CART_COOKIE, ".".join(ids), samesite="Lax")
            return response
        items = [PRODUCTS[pid] for pid in cart_ids()]
        return page("cart.html", items=items, total=sum(p["price"] for p in items))

    @app.post("/checkout")
    def checkout() -> Response:
        items = [PRODUCTS[pid] for pid in cart_ids()]
        if not items:
            return redirect("/cart", code=303)
        # The payment is confirmed here, on the server: the Purchase goes through CAPI now,
        # and /thank-you fires the pixel's Purchase with the same event id.
        capi.identify(em=request.form.get("email") or None)
        capi.track(
            "Purchase",
            custom_data={
                "value": round(sum(p["price"] for p in items), 2),
                "currency": "EUR",
                "content_type": "product",
                "content_ids": [p["id"] for p in items],
                "contents": [{"id": p["id"], "quantity": 1} for p in items],
            },
        )
        response = redirect("/thank-you", code=303)
        response.delete_cookie(CART_COOKIE)
        return response

    @app.get("/thank-you")
    def thanks() -> str:
        return page("thanks.html")

    @app.route("/newsletter", methods=["GET", "POST"])
    def newsletter() -> Any:
        if request.method == "POST":
            capi.identify(em=request.form.get("email") or None)
            capi.track("Lead", custom_data={"content_name": "newsletter"})
            return redirect("/newsletter?subscribed=1", code=303)
        return page("newsletter.html", subscribed=request.args.get("subscribed") == "1")

    return app


app = create_app()
