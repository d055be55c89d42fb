"""The Django app: ``INSTALLED_APPS += ["capi_bridge.django"]``.

``ready()`` only registers the system checks and the settings-reset receiver: it can run more
than once, and servers fork after it (gunicorn ``--preload``), so nothing is opened or started
here; the core is built per process by the middleware, and delivery starts with the first event.
"""

from __future__ import annotations

from django.apps import AppConfig
from django.core.checks import register
from django.core.signals import setting_changed


class CapiBridgeConfig(AppConfig):
    name = "capi_bridge.django"
    label = "capi_bridge"
    verbose_name = "capi-bridge (Meta Pixel + Conversions API)"

    def ready(self) -> None:
        from capi_bridge.django import checks, conf

        register(checks.check_settings)
        register(checks.check_middleware)
        register(checks.check_outbox)
        setting_changed.connect(conf.reset, dispatch_uid="capi_bridge.django.reset")
