"""The inspector: who may see it (loopback without a proxy, or a signed link), that it is absent
when disabled, and its rows: copies paired per event id, disagreements flagged with the cause,
Meta's reply per event. Real SQLite and the real fake Graph API; adapters as apps mount them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask
from helpers.visits import HOST, Visitor, new_id, view
from helpers.waiting import until
from helpers.web import SECRET

from capi_bridge.asgi import CapiBridgeMiddleware as AsgiMiddleware
from capi_bridge.assembly import build_core
from capi_bridge.flask import CapiBridge
from capi_bridge.inspector import make_inspector_link
from capi_bridge.observations import twin_copies
from capi_bridge.pages import PageBridge
from capi_bridge.request import Response
from capi_bridge.testing import FakeGraph
from capi_bridge.wsgi import CapiBridgeMiddleware

PAGE = "/capi-bridge/inspector"
DATA = PAGE + "/data"


@pytest.fixture
def make_core(delivery_settings: Any, store_target: dict[str, Any]) -> Iterator[Any]:
    """Inspectors reading each store in turn (a SQLite file, a PostgreSQL schema)."""
    cores: list[PageBridge] = []

    def make(**overrides: Any) -> PageBridge:
        values = {
            "secret_key": SECRET,
            "inspector": True,
            "allowed_hosts": (HOST,),  # a loopback client names the site (or localhost)
            **store_target,
            **overrides,
        }
        core = build_core(delivery_settings(**values))
        cores.append(core)
        return core

    yield make
    for core in cores:
        core.close(timeout=0)


def get(core: PageBridge, path: str = PAGE, peer: str = "127.0.0.1", **headers: str) -> Response:
    return core.handle(view(path, peer=peer, **headers))


def error(reply: Response) -> str:
    code: str = json.loads(reply.body)["error"]["code"]
    return code


def link(path: str = PAGE, **kwargs: Any) -> str:
    url = make_inspector_link(SECRET, f"http://{HOST}/", **kwargs)
    return url.split(HOST, 1)[1].replace(PAGE, path)


# --- who may look ---------------------------------------------------------------------------


def test_loopback_clients_get_the_page_with_its_own_csp(make_core: Any) -> None:
    core = make_core()
    for peer in ("127.0.0.1", "::1"):
        reply = get(core, peer=peer)
        assert reply.status == 200, reply.body
        html = reply.body.decode()
        csp = reply.header("Content-Security-Policy") or ""
        nonce = csp.split("'nonce-")[1].split("'")[0]
        assert html.count(f'nonce="{nonce}"') == 2  # the one <style> and the one <script>
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert " on" + "click=" not in html and "style=" not in html  # no inline handler/style
        assert "http" + "s://" not in html  # no external asset
        assert reply.header("Cache-Control") == "no-store"
    assert get(core, DATA).status == 200
    assert get(core, PAGE + "/diagnostics").status == 200


@pytest.mark.parametrize("peer", ["81.2.69.142", "10.0.0.7", "192.168.1.20", None])
def test_other_clients_are_refused_with_the_way_in(make_core: Any, peer: str | None) -> None:
    core = make_core()
    for path in (PAGE, DATA, PAGE + "/diagnostics"):
        reply = core.handle(view(path, peer=peer or ""))
        assert reply.status == 403 and error(reply) == "not_loopback"
        assert b"capi-bridge inspector-link" in reply.body


@pytest.mark.parametrize(
    "header",
    ["X-Forwarded-For", "Forwarded", "X-Real-IP", "Via", "X-Forwarded-Host", "CF-Connecting-IP"],
)
def test_a_proxy_on_the_same_host_does_not_make_visitors_loopback(
    make_core: Any, header: str
) -> None:
    core = make_core(trusted_proxies=1)  # even when the app trusts its proxy for the IP
    reply = core.handle(view(PAGE, peer="127.0.0.1", **{header: "127.0.0.1"}))
    assert reply.status == 403 and error(reply) == "proxied"
    assert header.lower() in json.loads(reply.body)["error"]["message"]
    # ...while a signed link works through the proxy, from anywhere
    signed = core.handle(view(link(), peer="127.0.0.1", **{header: "81.2.69.142"}))
    assert signed.status == 200


def test_a_signed_link_opens_every_route_from_anywhere(make_core: Any) -> None:
    core = make_core()
    for path in (PAGE, DATA, PAGE + "/diagnostics"):
        reply = core.handle(view(link(path), peer="81.2.69.142", x_forwarded_for="81.2.69.142"))
        assert reply.status == 200, reply.body


def test_tampered_expired_and_foreign_links_are_refused(make_core: Any) -> None:
    core = make_core()
    good = link()
    token = good.split("key=")[1]
    claims, rest = token.split(".", 1)
    other_host = make_inspector_link(SECRET, "http://elsewhere.test/").split("key=")[1]
    other_key = make_inspector_link("another-secret-key-0123456789", f"http://{HOST}/")
    cases = {
        "tampered": f"{PAGE}?key={claims[:-2]}xx.{rest}",
        "other secret": f"{PAGE}?key={other_key.split('key=')[1]}",
        "other host": f"{PAGE}?key={other_host}",
        "garbage": f"{PAGE}?key=hello",
    }
    for name, path in cases.items():
        reply = core.handle(view(path, peer="81.2.69.142"))
        assert reply.status == 403 and error(reply) == "link_invalid", name
    expired = link(now=time.time() - 7200, seconds=3600)
    reply = core.handle(view(expired, peer="81.2.69.142"))
    assert reply.status == 403 and error(reply) == "link_expired"
    # a bad link is refused even from loopback: its holder should learn it is bad
    assert get(core, expired).status == 403


def test_only_get(make_core: Any) -> None:
    reply = make_core().handle(view(PAGE, method="POST", peer="127.0.0.1"))
    assert reply.status == 405


# --- absent when disabled, through every adapter ------------------------------------------


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"the app's own 404"]


@pytest.mark.parametrize("enabled", [False, True])
def test_wsgi(delivery_settings: Any, enabled: bool) -> None:
    settings = delivery_settings(secret_key=SECRET, inspector=enabled, allowed_hosts=(HOST,))
    app = CapiBridgeMiddleware(_wsgi_app, settings=settings)
    try:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": PAGE,
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": HOST,
            "wsgi.url_scheme": "http",
        }
        seen: list[str] = []
        body = b"".join(app(environ, lambda status, headers, exc=None: seen.append(status)))
        assert seen[0].startswith("200" if enabled else "404")
        assert (b"capi-bridge inspector" in body) is enabled
    finally:
        app.core.close(timeout=0)


@pytest.mark.parametrize("enabled", [False, True])
def test_flask(delivery_settings: Any, enabled: bool) -> None:
    app = Flask(__name__)
    settings = delivery_settings(secret_key=SECRET, inspector=enabled, allowed_hosts=(HOST,))
    CapiBridge(app, settings=settings)
    try:
        client = app.test_client()
        reply = client.get(PAGE, environ_base={"REMOTE_ADDR": "127.0.0.1"})
        assert reply.status_code == (200 if enabled else 404)
        if enabled:  # a page of ours: no pixel snippet goes into it
            assert "capiBridgeConfig" not in reply.get_data(as_text=True)
            assert "nonce-" in reply.headers["Content-Security-Policy"]
            data = client.get(DATA, environ_base={"REMOTE_ADDR": "127.0.0.1"})
            assert data.status_code == 200 and data.json is not None and "rows" in data.json
            far = client.get(PAGE, environ_base={"REMOTE_ADDR": "81.2.69.142"})
            assert far.status_code == 403
    finally:
        app.extensions["capi_bridge"].close(timeout=0)


async def _asgi(settings: Any, client: tuple[str, int]) -> httpx.Response:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"the app's own 404"})

    middleware = AsgiMiddleware(app, settings=settings)
    transport = httpx.ASGITransport(app=middleware, client=client)
    try:
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}") as http:
            return await http.get(PAGE)
    finally:
        middleware.core.close(timeout=0)


@pytest.mark.parametrize("enabled", [False, True])
def test_asgi(delivery_settings: Any, enabled: bool) -> None:
    import asyncio

    settings = delivery_settings(secret_key=SECRET, inspector=enabled, allowed_hosts=(HOST,))
    reply = asyncio.run(_asgi(settings, ("127.0.0.1", 50123)))
    assert reply.status_code == (200 if enabled else 404)
    if enabled:
        settings = delivery_settings(secret_key=SECRET, inspector=True, allowed_hosts=(HOST,))
        assert asyncio.run(_asgi(settings, ("81.2.69.142", 50123))).status_code == 403


# --- rows -----------------------------------------------------------------------------------


def rows(core: PageBridge) -> dict[str, dict[str, Any]]:
    reply = get(core, DATA)
    assert reply.status == 200
    return {row["event_id"]: row for row in json.loads(reply.body)["rows"]}


def test_mirrored_events_pair_and_show_meta_s_reply(make_core: Any, fake_graph: FakeGraph) -> None:
    core = make_core(linger=5.0)  # the post's two events go in one batch (flush() sends it)
    visitor = Visitor(core)
    page = visitor.page("/product")
    cart = new_id()
    assert visitor.post(page["token"], ("PageView", page["pv"]), ("AddToCart", cart)).status == 202
    pending = rows(core)[cart]
    assert pending["state"] in ("pending", "in flight", "delivered")
    assert core.bridge.flush(10)
    found = rows(core)
    assert [found[i]["event_name"] for i in found] == ["AddToCart", "PageView"]  # newest first
    row = found[cart]
    assert row["browser"]["via"] == "capi-bridge.js" and row["browser"]["pixel_loaded"] is True
    assert row["server"]["via"] == "mirror"
    assert row["dedup"] is True and row["flags"] == [] and row["notes"] == []
    assert row["browser"]["keys"] == ["fbp", "ip", "ua"]
    assert row["server"]["keys"] == ["fbp", "ip", "ua"]
    assert row["server"]["preview"]["ip"] == "81.2.x.x"
    fbp = visitor.cookies["_fbp"]
    assert row["server"]["preview"]["fbp"] == f"{fbp[:10]}…{fbp[-4:]}"
    assert row["state"] == "delivered"
    assert row["reply"]["events_received"] == row["reply"]["batch_size"] == 2
    assert row["reply"]["fbtrace_id"]
    # nothing raw: the whole answer holds masked values only
    body = get(core, DATA).body.decode()
    assert fbp not in body and "81.2.69.142" not in body


def test_a_server_event_and_its_twin_with_another_fbp_are_flagged(make_core: Any) -> None:
    core = make_core()
    visitor = Visitor(core)
    visitor.page("/cart")
    purchase = visitor.track(
        "Purchase", identify={"em": "jane@example.com"}, custom_data={"value": 9, "currency": "EUR"}
    )
    waiting = rows(core)[purchase]
    assert waiting["browser"] is None and waiting["flags"] == []
    assert waiting["notes"][0].startswith("waiting for the pixel twin")
    # the browser lost its _fbp before the thank-you page (another pixel minted one): the
    # twin is bound to the browser that tracked it, so this page does not fire it
    other = "fb.1.1700000000000.987654321"
    visitor.cookies["_fbp"] = other
    assert "Purchase" not in visitor.page("/thank-you")["html"]
    assert rows(core)[purchase]["browser"] is None
    # a pixel copy noted with another fbp (a page of an older release fired it) is flagged
    user = {"fbp": other, "client_ip_address": "81.2.69.142", "client_user_agent": "UA"}
    noted = twin_copies(core.settings.pixel_ids, [("Purchase", purchase)], user, time.time())
    core.bridge.observe_later(noted)
    deadline = time.monotonic() + 10  # the dispatcher may be writing them right now
    while (row := rows(core)[purchase])["browser"] is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert row["browser"]["via"] == "pixel twin" and row["server"]["via"] == "server"
    assert row["dedup"] is True  # same name and id: Meta keeps one...
    assert row["server"]["keys"] == ["em", "fbp", "ip", "ua"]
    assert row["server"]["preview"]["em"].startswith("sha256:")
    assert "jane" not in json.dumps(row)
    [flag] = row["flags"]  # ...but it sees two browsers
    assert flag.startswith("fbp differs between the pixel copy and the server copy")


def test_one_copy_only_and_two_names_are_flagged(make_core: Any, fake_graph: FakeGraph) -> None:
    core = make_core()
    visitor = Visitor(core)
    page = visitor.page("/product")
    # a server-only Lead (pixel=False): nobody will fire its pixel copy
    lead = visitor.track("Lead", pixel=False)
    # the id of a server Purchase reused by the page under another name
    shared = visitor.track("Purchase", custom_data={"value": 9, "currency": "EUR"}, pixel=False)
    assert visitor.post(page["token"], ("AddToCart", shared)).status == 202
    # a mirrored Purchase the endpoint refuses: only the pixel fired it; counted, not a row
    refused = new_id()
    assert visitor.post(page["token"], ("Purchase", refused), value=5).status == 400
    found = rows(core)
    assert refused not in found
    [drop] = json.loads(get(core, DATA).body)["dropped"]
    assert (drop["event_name"], drop["reason"], drop["count"]) == ("Purchase", "refused", 1)
    assert "currency" in drop["detail"] and drop["meaning"].startswith("refused: Meta would")
    assert found[lead]["flags"][0].startswith("server copy only")
    assert found[lead]["browser"] is None and found[lead]["dedup"] is False
    two = found[shared]
    assert two["names"] == ["Purchase", "AddToCart"] and two["event_name"] == "Purchase"
    assert two["flags"][0].startswith("one id under several names (Purchase, AddToCart)")
    assert two["dedup"] is True  # the AddToCart pair itself (pixel + mirror) deduplicates


def test_a_blocked_pixel_is_noted_not_flagged(make_core: Any) -> None:
    core = make_core()
    visitor = Visitor(core)
    page = visitor.page("/")
    assert visitor.post(page["token"], ("PageView", page["pv"]), px=0).status == 202
    [row] = rows(core).values()
    assert row["browser"]["pixel_loaded"] is False and row["flags"] == []
    assert row["notes"][0].startswith("fbevents.js did not load")


def test_dead_and_retrying_events_show_meta_s_words(make_core: Any, fake_graph: FakeGraph) -> None:
    core = make_core(retry_base=60.0, max_backoff=120.0)
    visitor = Visitor(core)
    page = visitor.page("/")
    fake_graph.add_fault(mode="code", code=100, subcode=2804050, message="Not enough info")
    assert visitor.post(page["token"], ("PageView", page["pv"])).status == 202
    assert core.bridge.flush(10)
    row = rows(core)[page["pv"]]
    assert row["state"] == "dead"
    assert row["reply"]["code"] == 100 and row["reply"]["subcode"] == 2804050
    assert "Not enough info" in row["reply"]["message"] and row["reply"]["fbtrace_id"]
    fake_graph.add_fault(mode="status", status=503)
    second = visitor.page("/next")
    assert visitor.post(second["token"], ("PageView", second["pv"])).status == 202
    def retrying() -> dict[str, Any] | None:  # then it backs off for a minute
        row = rows(core)[second["pv"]]
        return row if row["state"] == "retrying" else None

    row = until(
        retrying,
        timeout=10,
        what="the PageView was never retried",
        step=lambda: core.bridge.flush(0.05),  # a bounded wait for the dispatcher's try
    )
    assert "retry your request later" in row["reply"]["message"] and row["reply"]["code"] == 2


def test_the_post_says_whether_the_pixel_library_loaded(make_core: Any) -> None:
    core = make_core()
    visitor = Visitor(core)
    page = visitor.page("/")
    bad = visitor.post(page["token"], ("PageView", page["pv"]), px=2)  # type: ignore[arg-type]
    assert bad.status == 400 and json.loads(bad.body)["error"]["field"] == "px"
    assert visitor.post(page["token"], ("PageView", page["pv"]), px=None).status == 202
    [row] = rows(core).values()
    assert row["browser"]["pixel_loaded"] is None and row["notes"] == []  # an older script


def test_the_data_says_how_far_the_clock_is_from_meta_s(
    make_core: Any, fake_graph: FakeGraph
) -> None:
    core = make_core()
    assert json.loads(get(core, DATA).body)["clock"] is None  # no answer from Meta yet
    fake_graph.clock_skew = -3 * 86400  # this server's clock runs three days ahead
    visitor = Visitor(core)
    page = visitor.page("/")
    assert visitor.post(page["token"], ("PageView", page["pv"])).status == 202
    assert core.bridge.flush(10)
    clock = json.loads(get(core, DATA).body)["clock"]
    assert clock["off"] is True and clock["text"] == "3 days ahead of Meta's"
    assert "NTP" in clock["fix"] and clock["host"]
