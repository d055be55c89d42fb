"""Settings of the example shop: Django's minimum, plus capi-bridge's two lines.

capi-bridge reads ``CAPI_BRIDGE = {"PIXEL_ID": ..., ...}`` here; this example leaves the dict
out, so every setting comes from the ``CAPI_BRIDGE_*`` environment variables, like the Flask and
Starlette shops. The page-token secret defaults to ``SECRET_KEY``; the shop takes
``CAPI_BRIDGE_SECRET_KEY`` when set (``capi-bridge demo`` sets it).
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.management.utils import get_random_secret_key

#: The Jinja2 templates the Flask and Starlette shops render: one shop, three frameworks
#: (Django's Jinja2 backend puts ``csrf_input`` and ``csrf_token`` in their context).
TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"

# A fresh key per start unless given: the shop keeps no sessions worth keeping.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or get_random_secret_key()
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = ["capi_bridge.django"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.gzip.GZipMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "capi_bridge.django.CapiBridgeMiddleware",  # below GZip: it rewrites uncompressed pages
]
ROOT_URLCONF = "shop.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.jinja2.Jinja2",
        "DIRS": [TEMPLATES_DIR],
    }
]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
WSGI_APPLICATION = "shop.wsgi.application"
ASGI_APPLICATION = "shop.asgi.application"
