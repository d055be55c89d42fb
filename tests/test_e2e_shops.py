"""The example shops end to end: real headless Chromium, real servers, the fake Graph API.

Each shop (``examples/flask_app.py`` on a threaded WSGI server, ``examples/starlette_app.py`` on
uvicorn, ``examples/django_shop`` with ``manage.py runserver`` in its own process) runs on
loopback, configured only through ``CAPI_BRIDGE_*`` environment variables, like README says.
Meta's fbevents.js is routed to the local stub, which records what the pixel would send
(``window.__fbqSent``); the fake Graph API records what CAPI received. Tests wait on conditions
(``wait_for_events``, ``wait_for_function``, ``flush``), never on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import chromium
from helpers.chromium import DESKTOP_UA, pixel_sent
from helpers.waiting import until

from capi_bridge.bridge import Bridge
from capi_bridge.demo import environment
from capi_bridge.settings import Settings
from capi_bridge.testing import FakeGraph

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
PIXEL = "1234567890"
ENDPOINT = "/capi-bridge/events"
VISITOR_IP = "81.2.69.142"


@dataclass
class Shop:
    url: str
    graph: FakeGraph
    settings: Settings

    def flush(self) -> None:
        """Deliver everything the app accepted. A second Bridge on the shared outbox file helps
        the app's dispatcher; its own ``flush()`` waits only for its process's rows (the app
        may be another process: Django's runserver), so wait until none is left undelivered."""
        with Bridge(self.settings) as bridge:
            until(
                lambda: bridge.stats().undelivered == 0,
                timeout=15,
                what="the app's events were not all delivered",
                step=lambda: bridge.flush(0.1),
            )

    def held(self, expected: int, timeout: float = 10.0) -> int:
        """Rows held for consent, once ``expected`` (or at the deadline): a busy outbox keeps
        a request's rows in the app's memory for a moment, out of another process's sight."""
        deadline = time.monotonic() + timeout
        with Bridge(self.settings) as bridge:
            while (held := bridge.stats().held) != expected and time.monotonic() < deadline:
                time.sleep(0.05)  # the interval between two reads, not a guess
            return held

    def capi(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.graph.events if e["event_name"] == name]


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def _load_example(module: str) -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if module in sys.modules:
        return importlib.reload(sys.modules[module])
    return importlib.import_module(module)


@contextlib.contextmanager
def _serve_flask(sock: socket.socket) -> Iterator[None]:
    from werkzeug.serving import make_server

    app = _load_example("examples.flask_app").create_app()
    host, port = sock.getsockname()
    sock.close()  # werkzeug binds its own; the port was free a moment ago and stays ours
    server = make_server(host, port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        app.extensions["capi_bridge"].close(timeout=2)


@contextlib.contextmanager
def _serve_starlette(sock: socket.socket) -> Iterator[None]:
    import uvicorn

    app = _load_example("examples.starlette_app").create_app()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()  # connections wait in the socket's backlog until uvicorn has started
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def _serve_django(sock: socket.socket) -> Iterator[None]:
    """``python examples/django_shop/manage.py runserver``, as README says, in its own process
    (Django's settings are per process). The port was free a moment ago; runserver binds it."""
    host, port = sock.getsockname()
    sock.close()
    manage = ROOT / "examples" / "django_shop" / "manage.py"
    process = subprocess.Popen(
        [sys.executable, str(manage), "runserver", f"{host}:{port}", "--noreload"],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with httpx.Client(trust_env=False, timeout=2) as client:

            def answers() -> bool:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                try:
                    client.get(f"http://{host}:{port}/capi-bridge/capi-bridge.js")
                except httpx.TransportError:
                    return False
                return True

            until(answers, timeout=30, what="runserver did not answer")
        yield
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


SERVERS = {"flask": _serve_flask, "starlette": _serve_starlette, "django": _serve_django}


@pytest.fixture(params=list(SERVERS))
def make_shop(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Shop]]:
    stack = contextlib.ExitStack()

    def make(**extra: str) -> Shop:
        graph = stack.enter_context(FakeGraph())
        env = {
            "CAPI_BRIDGE_PIXEL_ID": PIXEL,
            "CAPI_BRIDGE_ACCESS_TOKEN": "test-token",
            "CAPI_BRIDGE_SECRET_KEY": "e2e-tests-secret-key-0123456789abcdef",
            "CAPI_BRIDGE_GRAPH_URL": graph.url,
            "CAPI_BRIDGE_OUTBOX_PATH": str(tmp_path / "outbox.sqlite3"),
            "CAPI_BRIDGE_LINGER": "0.02",
            "CAPI_BRIDGE_RATE_LIMIT": "10000",
            "CAPI_BRIDGE_TRUSTED_PROXIES": "1",
            **{f"CAPI_BRIDGE_{k.upper()}": v for k, v in extra.items()},
        }
        sock = _free_socket()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        serve = SERVERS[request.param]
        # kept for the shop's lifetime: Starlette builds its middleware (reading the settings)
        # when the server starts, not when the app object is made
        stack.enter_context(environment(env))
        settings = Settings.from_env()
        stack.enter_context(serve(sock))
        return Shop(url, graph, settings)

    with stack:
        yield make


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from chromium.launch()


@pytest.fixture
def visitor(browser: Any) -> Iterator[Callable[..., Any]]:
    """``visitor(block_pixel=False, user_agent=DESKTOP_UA)``: a new browser profile's page.

    As behind a reverse proxy (the shops trust one hop), with a public client address, which
    Meta needs for matching when consent keeps cookies away."""
    yield from chromium.contexts(
        browser, user_agent=DESKTOP_UA, extra_http_headers={"X-Forwarded-For": VISITOR_IP}
    )


def cookie(page: Any, name: str) -> str | None:
    for item in page.context.cookies():
        if item["name"] == name:
            return str(item["value"])
    return None


def buy(page: Any, shop: Shop, email: str = "Jane.Doe@Example.com") -> dict[str, Any]:
    """Add the first product to the cart, check out, land on the thank-you page; returns what
    the pixel sent for AddToCart (read before the page is left)."""
    page.goto(shop.url + "/product/mug-01")
    page.click("#add-to-cart")
    page.wait_for_selector("#added", state="visible")
    [added] = pixel_sent(page, "AddToCart")
    page.goto(shop.url + "/cart")
    page.fill("#email", email)
    page.click("#pay")
    page.wait_for_selector("#thanks")
    return added


# --- the redundant setup --------------------------------------------------------------------


def test_page_view_pairs_with_the_same_id_and_fbp(make_shop: Any, visitor: Any) -> None:
    shop = make_shop()
    page = visitor()
    page.goto(shop.url + "/")
    [pixel] = pixel_sent(page, "PageView")
    assert shop.graph.wait_for_events(1, timeout=10)
    [server] = shop.capi("PageView")
    assert pixel["eventID"] == server["event_id"]
    # The server set _fbp on the very first response: browser and CAPI carry the same one.
    assert cookie(page, "_fbp") == pixel["fbp"] == server["user_data"]["fbp"]
    assert server["event_source_url"] == shop.url + "/"
    assert server["user_data"]["client_ip_address"] == VISITOR_IP


def test_fbclid_landing_gives_the_same_fbc_on_both_channels(make_shop: Any, visitor: Any) -> None:
    shop = make_shop()
    page = visitor()
    page.goto(shop.url + "/?fbclid=IwAR2xYz_AbC-123")
    [pixel] = pixel_sent(page, "PageView")
    assert shop.graph.wait_for_events(1, timeout=10)
    [server] = shop.capi("PageView")
    fbc = cookie(page, "_fbc")
    assert fbc and fbc.endswith(".IwAR2xYz_AbC-123")
    assert pixel["fbc"] == fbc == server["user_data"]["fbc"]


def test_add_to_cart_and_server_purchase_pair(make_shop: Any, visitor: Any) -> None:
    shop = make_shop()
    page = visitor()
    pixel_cart = buy(page, shop)
    [pixel_purchase] = pixel_sent(page, "Purchase")
    shop.flush()
    [server_cart] = shop.capi("AddToCart")
    assert pixel_cart["eventID"] == server_cart["event_id"]
    assert server_cart["custom_data"]["content_ids"] == ["mug-01"]
    [server_purchase] = shop.capi("Purchase")
    assert pixel_purchase["eventID"] == server_purchase["event_id"]
    assert pixel_purchase["data"]["value"] == server_purchase["custom_data"]["value"] == 14.0
    assert server_purchase["user_data"]["em"]  # hashed from the checkout form
    # A reload of the thank-you page fires no second Purchase.
    page.reload()
    page.wait_for_selector("#thanks")
    pixel_sent(page, "PageView")
    assert page.evaluate("window.__fbqSent.filter(s => s.event === 'Purchase').length") == 0
    shop.flush()
    assert len(shop.capi("Purchase")) == 1


def test_an_invalid_email_at_checkout_still_buys_and_sends_the_purchase(
    make_shop: Any, visitor: Any
) -> None:
    """``<input type=email>`` accepts ``jane@intranet``; Meta does not. The checkout still
    redirects to the thank-you page, and the Purchase goes out without ``em``."""
    shop = make_shop()
    page = visitor()
    buy(page, shop, email="jane@intranet")
    [pixel_purchase] = pixel_sent(page, "Purchase")
    shop.flush()
    [server_purchase] = shop.capi("Purchase")
    assert server_purchase["event_id"] == pixel_purchase["eventID"]
    assert "em" not in server_purchase["user_data"]
    assert server_purchase["user_data"]["fbp"]  # the rest of the match keys went out


def test_the_cart_counter_follows_add_to_cart_and_no_page_asks_for_a_favicon(
    make_shop: Any, visitor: Any
) -> None:
    shop = make_shop()
    page = visitor()
    missing: list[str] = []
    page.on("response", lambda r: missing.append(r.url) if r.status >= 400 else None)
    page.goto(shop.url + "/product/mug-01")
    assert page.text_content("#cart-count") == "0"
    page.click("#add-to-cart")
    page.wait_for_selector("#added", state="visible")
    assert page.text_content("#cart-count") == "1"  # set from the answer, before "Added"
    page.click("#add-to-cart")
    page.wait_for_function("document.getElementById('cart-count').textContent === '2'")
    page.goto(shop.url + "/cart")
    assert page.text_content("#cart-count") == "2"
    requested = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert not [url for url in requested if "favicon" in url]
    assert missing == []


def test_newsletter_lead_pairs(make_shop: Any, visitor: Any) -> None:
    shop = make_shop()
    page = visitor()
    page.goto(shop.url + "/newsletter")
    page.fill("#lead-email", "reader@example.com")
    page.click("#subscribe")
    page.wait_for_selector("#subscribed")
    [pixel] = pixel_sent(page, "Lead")
    shop.flush()
    [server] = shop.capi("Lead")
    assert pixel["eventID"] == server["event_id"]


def test_with_the_pixel_blocked_capi_still_gets_every_event(make_shop: Any, visitor: Any) -> None:
    shop = make_shop()
    page = visitor(block_pixel=True)
    page.goto(shop.url + "/product/mug-01")
    page.click("#add-to-cart")
    page.wait_for_selector("#added", state="visible")
    page.goto(shop.url + "/cart")
    page.fill("#email", "jane@example.com")
    page.click("#pay")
    page.wait_for_selector("#thanks")
    assert shop.graph.wait_for_events(5, timeout=10), shop.graph.events
    names = sorted(e["event_name"] for e in shop.graph.events)
    # product, cart and thank-you PageViews; the AddToCart mirror; the server Purchase
    assert names == ["AddToCart", "PageView", "PageView", "PageView", "Purchase"]


def test_consent_required_holds_everything_until_granted(make_shop: Any, visitor: Any) -> None:
    shop = make_shop(consent="required")
    page = visitor()
    with page.expect_request_finished(lambda r: r.method == "POST" and ENDPOINT in r.url):
        page.goto(shop.url + "/product/mug-01")  # the PageView, posted marked "hold"
    with page.expect_request_finished(lambda r: r.method == "POST" and ENDPOINT in r.url):
        page.click("#add-to-cart")
    page.wait_for_selector("#added", state="visible")
    assert page.evaluate("window.__fbqSent.length") == 0  # the pixel is revoked
    # no _fbp, no _fbc: only the shop's own cookies (Django's CSRF cookie)
    assert {c["name"] for c in page.context.cookies()} <= {"cart", "csrftoken"}
    shop.flush()
    assert shop.graph.events == []
    assert shop.held(2) == 2  # the PageView and the AddToCart, held in the outbox
    page.click("#consent-accept")
    [pixel_cart] = pixel_sent(page, "AddToCart")
    assert shop.graph.wait_for_events(2, timeout=10)
    ids = {e["event_name"]: e["event_id"] for e in shop.graph.events}
    assert ids["AddToCart"] == pixel_cart["eventID"]
    assert ids["PageView"] == pixel_sent(page, "PageView")[0]["eventID"]
    assert shop.held(0) == 0


def test_a_crawler_produces_no_server_page_view(make_shop: Any, visitor: Any) -> None:
    shop = make_shop()
    # A crawler without JavaScript fetches the page...
    reply = httpx.get(shop.url + "/", headers={"User-Agent": "Googlebot/2.1"})
    assert reply.status_code == 200 and "capiBridgeConfig" in reply.text
    # ...and one that renders it runs the script, whose mirror is dropped.
    page = visitor(
        user_agent="Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    )
    with page.expect_request_finished(lambda r: ENDPOINT in r.url):
        page.goto(shop.url + "/")
    # a real visitor afterwards is mirrored: the dispatcher is alive, the bot was dropped
    human = visitor()
    human.goto(shop.url + "/")
    [pixel] = pixel_sent(human, "PageView")
    assert shop.graph.wait_for_events(1, timeout=10)
    shop.flush()
    assert [e["event_id"] for e in shop.capi("PageView")] == [pixel["eventID"]]
