"""System checks (``manage.py check``, and before ``runserver`` and ``migrate``).

* ``capi_bridge.E001``: a setting is missing or malformed (named, with the fix). An error stops
  ``runserver``; under gunicorn or uvicorn, where checks do not run, the middleware raises the
  same error when Django loads it, so the server does not start either.
* ``capi_bridge.W001``: the app is installed but the middleware is not.
* ``capi_bridge.W002``: the middleware is listed before ``GZipMiddleware`` (or another
  compressor): it would see compressed pages, which it never rewrites.
* ``capi_bridge.W003``: the middleware is listed before a CSP middleware: the nonce is gone by
  the time the snippet is inserted, so a strict policy would block it.
* ``capi_bridge.W004``: the outbox is a SQLite file while the site looks like it runs on
  several hosts (its database is on another machine): each host would keep its own outbox, and
  the 48 h idempotency would hold per host only.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Warning

from capi_bridge.django import conf
from capi_bridge.errors import ConfigError

MIDDLEWARE = "capi_bridge.django.CapiBridgeMiddleware"
#: Middleware that encode the response: ours must sit below them (see their response first).
COMPRESSORS = ("django.middleware.gzip.GZipMiddleware", "compression_middleware.")
#: Middleware that write a CSP header with a nonce: ours must read the nonce before they do.
CSP = ("csp.middleware.CSPMiddleware", "django.middleware.csp.")
_LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1")


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        conf.read_settings()
    except ConfigError as exc:
        return [
            Error(
                f"capi-bridge: {exc.setting}: {exc.problem}",
                hint=exc.fix,
                id="capi_bridge.E001",
            )
        ]
    return []


def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    middleware = [str(m) for m in getattr(django_settings, "MIDDLEWARE", None) or ()]
    if MIDDLEWARE not in middleware:
        return [
            Warning(
                "capi-bridge is installed but its middleware is not: no page gets the pixel",
                hint=f'add "{MIDDLEWARE}" to MIDDLEWARE, below GZipMiddleware and CSP middleware',
                id="capi_bridge.W001",
            )
        ]
    ours = middleware.index(MIDDLEWARE)
    found: list[CheckMessage] = []
    for index, name in enumerate(middleware[ours + 1 :], ours + 1):
        if name.startswith(COMPRESSORS):
            found.append(
                Warning(
                    f"{MIDDLEWARE} is listed before {name}: it would see compressed pages, "
                    "which it never rewrites",
                    hint=f"move {MIDDLEWARE} below {name} in MIDDLEWARE (entry {index})",
                    id="capi_bridge.W002",
                )
            )
        elif name.startswith(CSP):
            found.append(
                Warning(
                    f"{MIDDLEWARE} is listed before {name}: the CSP nonce is gone when the "
                    "snippet is inserted, so the policy blocks it",
                    hint=f"move {MIDDLEWARE} below {name} in MIDDLEWARE (entry {index})",
                    id="capi_bridge.W003",
                )
            )
    return found


def check_outbox(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        settings, _ = conf.read_settings()
    except ConfigError:
        return []  # E001 says why
    url = str(getattr(settings, "outbox_url", "") or "")
    if url and not url.startswith("sqlite"):
        return []
    database = (getattr(django_settings, "DATABASES", None) or {}).get("default") or {}
    engine = str(database.get("ENGINE", ""))
    host = str(database.get("HOST", "") or "")
    if "sqlite" in engine or host in _LOCAL_HOSTS or host.startswith("/"):
        return []
    return [
        Warning(
            f"the capi-bridge outbox is a SQLite file ({settings.outbox_path}) while the "
            f"database is on another host ({host}): if the site runs on several hosts, each "
            "keeps its own outbox, and a redeploy on a throw-away disk loses what it held",
            hint="on several hosts, share a PostgreSQL outbox (CAPI_BRIDGE_OUTBOX_URL); on one "
            'host, silence this with SILENCED_SYSTEM_CHECKS = ["capi_bridge.W004"]',
            id="capi_bridge.W004",
        )
    ]
