"""A flood from one client against a real server (issue 13): a Flask shop on Werkzeug's threaded
server, on loopback, posting as fast as four connections allow. Bounded in count (a fixed number
of posts of 20 events, each waited for up to the client's timeout); what it asserts is what the
outbox holds afterwards, never how fast anything went: the outbox grows by at most the
per-client caps (held for consent, then queued for delivery), whatever the client sends, and
every refusal is a 429 with ``Retry-After``."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from flask import Flask
from helpers.web import BROWSER, SECRET, page_config
from werkzeug.serving import BaseWSGIServer, make_server

from capi_bridge.flask import CapiBridge
from capi_bridge.pages import PageBridge
from capi_bridge.testing import FakeGraph

POSTS = 80
EVENTS = 20
FBP = "fb.1.1700000000000.1234567890"


@pytest.fixture
def server(delivery_settings: Any) -> Iterator[tuple[str, PageBridge]]:
    settings = delivery_settings(
        secret_key=SECRET,
        allowed_hosts=("127.0.0.1",),
        consent="required",
        rate_limit=100_000,  # the caps, not the rate, bound this flood
        held_per_client=200,
        pending_per_client=300,
    )
    app = Flask(__name__)
    CapiBridge(app, settings=settings)
    app.add_url_rule("/", "home", lambda: "<html><head></head><body>shop</body></html>")
    core: PageBridge = app.extensions["capi_bridge"]
    httpd: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", core
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
        core.close(timeout=0)


def _rows(core: PageBridge) -> int:
    found: list[Any] = core.bridge.outbox.query("SELECT count(*) FROM outbox")
    return int(found[0][0])


def _flood(url: str, token: str, cookies: str) -> list[httpx.Response]:
    headers = {
        "User-Agent": BROWSER["User-Agent"],
        "Origin": url,
        "Content-Type": "text/plain",
        "Cookie": cookies,
    }
    hold = "tab-" + uuid.uuid4().hex

    def one(client: httpx.Client) -> httpx.Response:
        events = [
            {
                "event_name": "Lead",
                "event_id": str(uuid.uuid4()),
                "event_time": int(time.time()),
                "event_source_url": f"{url}/",
            }
            for _ in range(EVENTS)
        ]
        body = json.dumps({"token": token, "hold": hold, "events": events})
        return client.post(f"{url}/capi-bridge/events", content=body, headers=headers)

    with httpx.Client(timeout=30, trust_env=False) as client, ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda _: one(client), range(POSTS)))


def test_one_client_grows_the_outbox_by_at_most_its_caps(
    server: tuple[str, PageBridge], fake_graph: FakeGraph
) -> None:
    url, core = server
    with httpx.Client(trust_env=False) as client:
        page = client.get(url + "/", headers={"User-Agent": BROWSER["User-Agent"]})
    token = page_config(page.text)["token"]
    before = _rows(core)
    held = _flood(url, token, f"_fbp={FBP}")  # no consent yet: every event would be held
    assert {r.status_code for r in held} == {202, 429}
    assert sum(r.json().get("accepted", 0) for r in held if r.status_code == 202) == 200
    assert core.bridge.stats().held == 200
    consented = _flood(url, token, f"_fbp={FBP}; capib_consent=1")  # queued for delivery
    assert sum(r.json().get("accepted", 0) for r in consented if r.status_code == 202) == 300
    refused = [r for r in held + consented if r.status_code == 429]
    assert len(refused) == 2 * POSTS - 200 // EVENTS - 300 // EVENTS
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert {r.json()["error"]["code"] for r in refused} == {"client_limit"}
    # 2 x 1,600 events posted; the outbox grew by the two caps and not one row more
    assert _rows(core) - before == 200 + 300
