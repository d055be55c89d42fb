"""Scripted visits to a :class:`PageBridge` without a browser: pages rendered, the posts
capi-bridge.js would send, server events and the pages that fire their pixel twins. The
inspector and diagnostics tests build their event mixes from these."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from helpers.web import BROWSER, page_config

from capi_bridge.pages import PENDING_COOKIE, PageBridge
from capi_bridge.request import RequestView, Response

HOST = "shop.test"
UA = BROWSER["User-Agent"]
VISITOR_IP = "81.2.69.142"


def view(
    path: str = "/",
    *,
    method: str = "GET",
    cookies: dict[str, str] | None = None,
    peer: str = VISITOR_IP,
    host: str = HOST,
    scheme: str = "http",
    **headers: str,
) -> RequestView:
    """A request from a desktop browser at ``peer`` (headers: underscores become dashes)."""
    path, _, query = path.partition("?")
    items = {"user-agent": UA, "sec-fetch-dest": "document"}
    items.update({k.replace("_", "-"): v for k, v in headers.items()})
    if cookies:
        items["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return RequestView.build(method, scheme, host, path, query, items, peer)


def new_id() -> str:
    return str(uuid.uuid4())


class Visitor:
    """One browser: its cookies, the pages it renders and the events its pages post."""

    def __init__(self, core: PageBridge, cookies: dict[str, str] | None = None) -> None:
        self.core = core
        self.cookies = dict(cookies or {})

    def _keep(self, headers: list[tuple[str, str]]) -> None:
        for _, value in headers:
            name, _, rest = value.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in rest or not value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value

    def page(self, path: str = "/") -> dict[str, Any]:
        """Render a page (firing any pixel twins); returns its capi-bridge config."""
        page = self.core.open_page(view(path, cookies=self.cookies))
        html = page.render()
        self._keep(page.response_headers())
        config = page_config(html)
        config["html"] = html
        return config

    def post(
        self,
        token: str,
        *events: tuple[str, str],
        px: int | None = 1,
        ua: str = UA,
        pixel_id: str | None = None,
        **custom: Any,
    ) -> Response:
        """What capi-bridge.js posts for ``(event_name, event_id)`` pairs (``pixel_id``: the
        one pixel of a ``trackSingle`` call; ``ua``: the browser's user agent)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "token": token,
            "sent_at": int(time.time() * 1000),
            "events": [
                {
                    "event_name": name,
                    "event_id": event_id,
                    "event_time": now,
                    "event_source_url": f"http://{HOST}/product",
                    **({"custom_data": custom} if custom else {}),
                    **({"pixel_id": pixel_id} if pixel_id else {}),
                }
                for name, event_id in events
            ],
        }
        if px is not None:
            body["px"] = px
        request = view(
            "/capi-bridge/events",
            method="POST",
            cookies=self.cookies,
            origin=f"http://{HOST}",
            content_type="text/plain",
            sec_fetch_dest="empty",
            user_agent=ua,
        )
        return self.core.handle(request, json.dumps(body).encode())

    def track(self, name: str, *, path: str = "/checkout", **kwargs: Any) -> str:
        """A server event in a form post (a navigation): its twin waits for the next page."""
        user_data = kwargs.pop("identify", {})
        page = self.core.open_page(view(path, method="POST", cookies=self.cookies))
        page.identify(**user_data)
        event_id = page.track(name, **kwargs)
        self._keep(page.response_headers())
        return event_id

    @property
    def twin_waiting(self) -> bool:
        return PENDING_COOKIE in self.cookies
