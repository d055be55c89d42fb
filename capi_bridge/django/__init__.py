"""Django: ``INSTALLED_APPS += ["capi_bridge.django"]`` and
``MIDDLEWARE += ["capi_bridge.django.CapiBridgeMiddleware"]``.

Settings in ``CAPI_BRIDGE = {"PIXEL_ID": ..., "ACCESS_TOKEN": ...}`` (environment variables as
fallback, ``SECRET_KEY`` as the default secret), ``{% load capi_bridge %}{% capi_pixel %}`` to
place the snippet yourself, and in views ``track(request, "Purchase", custom_data=...)`` and
``identify(request, em=...)``. See :mod:`capi_bridge.django.middleware`.
"""

from __future__ import annotations

from capi_bridge.django.middleware import (
    CapiBridgeMiddleware,
    atrack,
    get_bridge,
    identify,
    track,
)

__all__ = ["CapiBridgeMiddleware", "atrack", "get_bridge", "identify", "track"]
