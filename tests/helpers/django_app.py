"""An in-process Django project for the adapter tests (settings, URLconf and views in one).

Django's settings are configured once per process; :func:`setup` does it, and tests change
``CAPI_BRIDGE`` (and the middleware list) with ``override_settings``. The example shop runs in
its own process in the end-to-end tests, so the two never meet.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from typing import Any

from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.template import engines
from django.urls import path

from capi_bridge.django import atrack, identify, track

SECRET = "django-tests-secret-key-0123456789abcdef"
PAGE = "<html><head><title>t</title></head><body><h1>shop</h1></body></html>"
PLACED = "<html><head>{% load capi_bridge %}{% capi_pixel %}</head><body>placed</body></html>"
MIDDLEWARE = ["capi_bridge.django.CapiBridgeMiddleware"]


def setup() -> None:
    """Configure Django for this process (once)."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        SECRET_KEY=SECRET,
        ALLOWED_HOSTS=["testserver", "localhost", "shop.test"],
        INSTALLED_APPS=["capi_bridge.django"],
        MIDDLEWARE=MIDDLEWARE,
        ROOT_URLCONF=__name__,
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
            }
        ],
        DATABASES={},
        USE_TZ=True,
    )
    django.setup()


def home(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(PAGE)
    response["Content-Length"] = str(len(PAGE))
    return response


def placed(request: HttpRequest) -> HttpResponse:
    return HttpResponse(engines["django"].from_string(PLACED).render({}, request))


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        yield PAGE.encode()

    return StreamingHttpResponse(chunks(), content_type="text/html")


def encoded(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(gzip.compress(PAGE.encode()))
    response["Content-Encoding"] = "gzip"
    return response


def shop(request: HttpRequest) -> HttpResponse:
    """The page the hostile-traffic tests share (see helpers/adapters.py): the signed-in
    visitor's e-mail from ``?em=``, a search term from ``?q=`` in its title, cacheable."""
    if request.GET.get("em"):
        identify(request, em=request.GET["em"])
    response = HttpResponse(shop_page(request.GET.get("q", "")))
    response["Cache-Control"] = "public, max-age=600"
    return response


def shop_page(term: str) -> str:
    from html import escape

    return f"<html><head><title>{escape(term)}</title></head><body>shop</body></html>"


def api(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


def pay(request: HttpRequest) -> HttpResponse:
    identify(request, em=request.POST.get("email") or None)
    track(request, "Purchase", custom_data={"value": 10, "currency": "EUR"})
    return HttpResponseRedirect("/", status=303)


async def async_pay(request: HttpRequest) -> JsonResponse:
    """An async view calling ``track`` (one local commit) and ``atrack`` (in a thread)."""
    identify(request, external_id="user-7")
    first = track(request, "Purchase", custom_data={"value": 10, "currency": "EUR"})
    second = await atrack(request, "Lead")
    return JsonResponse({"ids": [first, second]})


urlpatterns: list[Any] = [
    path("", home),
    path("placed", placed),
    path("stream", stream),
    path("encoded", encoded),
    path("api", api),
    path("shop", shop),
    path("pay", pay),
    path("async-pay", async_pay),
]
