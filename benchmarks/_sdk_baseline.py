"""Meta's ``facebook-business`` SDK on the benchmark's events, through its default request path.

"Common use" is what Meta's docs and most integrations do: build an ``Event`` with ``UserData``
and ``CustomData`` in the request handler and call ``EventRequest(...).execute()`` right there,
one event per request. The "best case" hands the SDK 1000 events per ``EventRequest``. Both go
through ``FacebookAdsApi`` and its ``requests.Session`` (keep-alive), the SDK's own path; the
only change is the session's ``GRAPH`` base URL, pointed at the local ack server.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

PIXEL = "1234567890"


def init(url: str, token: str) -> None:
    """``FacebookAdsApi.init`` as documented, with the session's base URL moved to ``url``."""
    from facebook_business.api import FacebookAdsApi

    api = FacebookAdsApi.init(access_token=token, crash_log=False)
    api._session.GRAPH = url  # instance attribute: FacebookAdsApi.call reads session.GRAPH


def _sdk_event(raw: Mapping[str, Any]) -> Any:
    from facebook_business.adobjects.serverside.action_source import ActionSource
    from facebook_business.adobjects.serverside.content import Content
    from facebook_business.adobjects.serverside.custom_data import CustomData
    from facebook_business.adobjects.serverside.event import Event
    from facebook_business.adobjects.serverside.user_data import UserData

    u, c = raw["user_data"], raw["custom_data"]
    user = UserData(
        email=u["em"],
        phone=u["ph"],
        first_name=u["fn"],
        last_name=u["ln"],
        external_id=u["external_id"],
        client_ip_address=u["client_ip_address"],
        client_user_agent=u["client_user_agent"],
        fbp=u["fbp"],
        fbc=u["fbc"],
    )
    contents = [
        Content(product_id=item["id"], quantity=item["quantity"], item_price=item["item_price"])
        for item in c["contents"]
    ]
    custom = CustomData(value=c["value"], currency=c["currency"], contents=contents)
    return Event(
        event_name=raw["event_name"],
        event_time=raw["event_time"],
        event_id=raw["event_id"],
        event_source_url=raw["event_source_url"],
        action_source=ActionSource.WEBSITE,
        user_data=user,
        custom_data=custom,
    )


def run(events: Sequence[Mapping[str, Any]], per_request: int) -> float:
    """Send ``events`` through the SDK, ``per_request`` per ``EventRequest``; returns seconds."""
    from facebook_business.adobjects.serverside.event_request import EventRequest

    started = time.perf_counter()
    for start in range(0, len(events), per_request):
        chunk = [_sdk_event(raw) for raw in events[start : start + per_request]]
        response = EventRequest(events=chunk, pixel_id=PIXEL).execute()
        if response.events_received != len(chunk):
            raise RuntimeError(f"SDK request acknowledged {response.events_received} events")
    return time.perf_counter() - started
