"""Realistic website events, and a worker process for the delivery tests.

Run as a script it is one app process sharing an outbox with others:

    python delivery_worker.py produce OUTBOX GRAPH_URL PREFIX COUNT [SHARED]
        enqueue COUNT events (ids PREFIX-0...) plus SHARED events every worker also enqueues,
        then exit *without* calling close(): the atexit hook must flush them.
    python delivery_worker.py crash OUTBOX GRAPH_URL PREFIX COUNT
        enqueue events one by one and print each accepted id (flushed) until killed.
    python delivery_worker.py host OUTBOX GRAPH_URL PREFIX COUNT
        one host of several sharing a database: enqueue COUNT events, then keep dispatching
        until the whole outbox is delivered (other hosts' events too), then exit.

OUTBOX is a SQLite file or a PostgreSQL URL; other settings come from ``CAPI_BRIDGE_*``
variables (``CAPI_BRIDGE_OUTBOX_SCHEMA``, ``CAPI_BRIDGE_LEASE_SECONDS``...).

Imported, it gives :func:`make_event` to the tests.
"""

from __future__ import annotations

import sys
import time
from typing import Any

TOKEN = "test-token"
PIXEL = "1234567890"
RAW_EMAIL_DOMAIN = "example-shop.test"
RAW_PHONE = "+1 (650) 555-0123"


def make_event(i: int, prefix: str = "ev", *, when: int | None = None) -> dict[str, Any]:
    """A website Purchase with the customer information a real shop sends (raw, unhashed)."""
    return {
        "event_name": "Purchase",
        "event_time": int(time.time()) if when is None else when,
        "event_id": f"{prefix}-{i}",
        "action_source": "website",
        "event_source_url": f"https://{RAW_EMAIL_DOMAIN}/checkout/thanks?order={i}",
        "user_data": {
            "em": f"Customer.{prefix}.{i}@{RAW_EMAIL_DOMAIN}",
            "ph": RAW_PHONE,
            "fn": "Ada",
            "ln": "Lovelace",
            "external_id": f"customer-{i}",
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
            "fbp": "fb.1.1700000000000.1234567890",
            "fbc": "fb.1.1700000000000.IwAR2xyzClickId",
        },
        "custom_data": {
            "value": 42.5,
            "currency": "EUR",
            "contents": [{"id": f"sku-{i % 97}", "quantity": 1, "item_price": 42.5}],
        },
    }


def _settings(outbox: str, graph_url: str) -> Any:
    import os

    from capi_bridge.settings import Settings

    where = {"outbox_url": outbox} if "://" in outbox else {"outbox_path": outbox}
    values: dict[str, Any] = {
        "linger": 0.02,
        "retry_base": 0.05,
        "max_backoff": 1.0,
        "request_timeout": 5.0,
        "close_timeout": 30.0,
    }
    environ = {k: v for k, v in os.environ.items() if k.startswith("CAPI_BRIDGE_")}
    values = {k: v for k, v in values.items() if f"CAPI_BRIDGE_{k.upper()}" not in environ}
    return Settings.from_env(
        environ, pixel_id=PIXEL, access_token=TOKEN, graph_url=graph_url, **where, **values
    )


def main(argv: list[str]) -> int:
    from capi_bridge.bridge import Bridge

    mode, outbox, graph_url, prefix, count = argv[:5]
    bridge = Bridge(_settings(outbox, graph_url))
    if mode == "produce":
        shared = int(argv[5]) if len(argv) > 5 else 0
        for i in range(int(count)):
            bridge.enqueue(make_event(i, prefix))
            if i < shared:
                bridge.enqueue(make_event(i, "shared"))
        return 0  # no close(): interpreter exit must flush
    if mode == "host":
        for i in range(int(count)):
            bridge.enqueue(make_event(i, prefix))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            bridge.flush(0.5)
            if bridge.stats().undelivered == 0:
                bridge.close(5)
                return 0
            time.sleep(0.05)  # other hosts' leases expire in their own time
        return 1
    if mode == "crash":
        for i in range(int(count)):
            event_id = bridge.enqueue(make_event(i, prefix))
            sys.stdout.write(event_id + "\n")
            sys.stdout.flush()
        time.sleep(3600)  # wait for the SIGKILL
        return 1
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
