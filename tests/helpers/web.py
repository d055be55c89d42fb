"""Small helpers the adapter tests share: read a page's bridge config, build endpoint bodies."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

SECRET = "adapter-tests-secret-key-0123456789"
BROWSER = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36",
    "Sec-Fetch-Dest": "document",
}
_CONFIG = re.compile(r"window\.capiBridgeConfig=(\{.*?\});")
_TWIN = re.compile(r"capiBridge\.fb\((\[\"track(?:Custom)?\",.*?\])\);")


def page_config(html: str) -> dict[str, Any]:
    """The ``window.capiBridgeConfig`` a page carries (token, PageView id...)."""
    match = _CONFIG.search(html)
    assert match, "the page holds no capi-bridge snippet"
    config: dict[str, Any] = json.loads(match.group(1))
    return config


def pixel_twins(html: str) -> list[list[Any]]:
    """The ``fbq('track', name, data, {eventID})`` calls a page fires for server events (through
    ``capiBridge.fb``, which hands them to the pixel without mirroring them again)."""
    start = html.find("data-capi-bridge-events>")
    if start < 0:
        return []
    script = html[start : html.index("</script>", start)]
    return [json.loads(args) for args in _TWIN.findall(script)]


def events_body(token: str, *events: tuple[str, str]) -> bytes:
    """An endpoint POST body for ``(event_name, event_id)`` pairs, as capi-bridge.js sends."""
    now = int(time.time())
    return json.dumps(
        {
            "token": token,
            "sent_at": int(time.time() * 1000),
            "events": [_event(name, event_id, now) for name, event_id in events],
        }
    ).encode()


def _event(name: str, event_id: str, now: int) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_name": name,
        "event_id": event_id,
        "event_time": now,
        "event_source_url": "http://localhost/",
    }
    if name != "PageView":
        event["custom_data"] = {"value": 5, "currency": "EUR"}
    return event


def new_id() -> str:
    return str(uuid.uuid4())


def set_cookies(headers: Any) -> dict[str, str]:
    """``name -> full Set-Cookie value`` of a response's headers (any framework's)."""
    values = headers.getlist("Set-Cookie") if hasattr(headers, "getlist") else None
    if values is None:
        values = headers.get_list("set-cookie")
    return {value.split("=", 1)[0]: value for value in values}
