"""The per-request core the adapters share: scoped test events, crawlers, server events
without consent, CSP nonces, and the cookie that carries server events to the next page."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.web import BROWSER, SECRET, events_body, page_config, pixel_twins

from capi_bridge import drops
from capi_bridge.pages import (
    PENDING_COOKIE,
    PENDING_LIMIT,
    TEST_COOKIE,
    PageBridge,
    is_bot,
    make_test_link,
)
from capi_bridge.request import RequestView
from capi_bridge.testing import FakeGraph

UA = BROWSER["User-Agent"]


@pytest.fixture
def make_core(delivery_settings: Any) -> Iterator[Any]:
    cores: list[PageBridge] = []

    def make(**overrides: Any) -> PageBridge:
        core = PageBridge(delivery_settings(secret_key=SECRET, **overrides))
        cores.append(core)
        return core

    yield make
    for core in cores:
        core.close(timeout=0)


def view(
    path: str = "/", *, method: str = "GET", cookies: dict[str, str] | None = None, **headers: str
) -> RequestView:
    path, _, query = path.partition("?")
    items = {"user-agent": UA, "origin": "http://shop.test", **headers}
    if cookies:
        items["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return RequestView.build(method, "http", "shop.test", path, query, items, "81.2.69.142")


def cookie_values(headers: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for _, value in headers:
        name, _, rest = value.partition("=")
        out[name] = rest.split(";", 1)[0]
    return out


@pytest.mark.parametrize(
    ("agent", "bot"),
    [
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", True),
        ("facebookexternalhit/1.1", True),
        ("Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/156.0 Safari/537.36", True),
        ("curl/8.5.0", True),
        ("python-httpx/0.28", True),
        (UA, False),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) Safari/604.1", False),
    ],
)
def test_bot_detection(agent: str, bot: bool) -> None:
    assert is_bot(agent) is bot


def test_crawler_posts_are_acknowledged_dropped_and_counted(
    make_core: Any, fake_graph: FakeGraph
) -> None:
    core = make_core()
    page = core.open_page(view())
    config = page_config(page.render())
    body = events_body(config["token"], ("PageView", config["pv"]))
    headers = {"user-agent": "Googlebot/2.1", "content-type": "text/plain"}
    bot = view(core.settings.endpoint_path, method="POST", **headers)
    reply = core.handle(bot, body)
    assert reply.status == 202
    assert json.loads(reply.body)["ignored"] == [{"field": "events[0]", "reason": "crawler"}]
    assert core.bridge.stats().pending == 0
    core.drops.flush()
    [count] = drops.read(core.bridge.outbox, 0, time.time())
    assert (count.event_name, count.reason, count.detail, count.count) == (
        "PageView",
        "crawler",
        "googlebot",
        1,
    )


def test_scoped_test_code_needs_the_setting_and_a_valid_signature(make_core: Any) -> None:
    link = make_test_link(SECRET, "http://shop.test/", "TEST123")
    query = link.split("?", 1)[1]
    off = make_core()
    assert off.test_code(view("/?" + query)) is None
    core = make_core(scoped_test_events=True)
    assert core.test_code(view("/?" + query)) == "TEST123"
    assert core.test_code(view("/?" + query[:-2] + "xx")) is None  # tampered
    assert make_test_link("another-secret-key-0123456789", "http://shop.test/", "X") != link
    page = core.open_page(view("/?" + query))
    page.render()
    cookie = cookie_values(page.response_headers())[TEST_COOKIE]
    assert core.test_code(view(cookies={TEST_COOKIE: cookie})) == "TEST123"


def test_scoped_test_code_reaches_meta_for_that_browser_only(
    make_core: Any, fake_graph: FakeGraph
) -> None:
    core = make_core(scoped_test_events=True)
    cookie = make_test_link(SECRET, "http://x/", "TEST9").split("=", 1)[1]
    tester = core.open_page(view(cookies={TEST_COOKIE: cookie}))
    tester.identify(external_id="u1")
    tester.track("Lead")
    visitor = core.open_page(view())
    visitor.identify(external_id="u2")
    visitor.track("Lead")
    assert core.bridge.flush(10)
    codes = sorted(str(e.get("test_event_code")) for e in fake_graph.events)
    assert codes == ["None", "TEST9"]


def test_server_event_without_consent_is_held_not_sent(
    make_core: Any, fake_graph: FakeGraph
) -> None:
    core = make_core(consent="required")
    page = core.open_page(view(method="POST"))
    page.identify(em="jane@example.com")
    page.track("Purchase", custom_data={"value": 1, "currency": "EUR"})
    assert page.response_headers() == []  # no cookie at all without consent
    assert core.bridge.flush(5)
    assert fake_graph.events == []
    assert core.bridge.stats().held == 1


def test_nonce_lands_on_every_script_tag(make_core: Any) -> None:
    core = make_core()
    first = core.open_page(view(method="POST"))
    first.track("Lead", user_data={"external_id": "u1"})
    browser = cookie_values(first.response_headers())  # the twin and the _fbp it is bound to
    assert PENDING_COOKIE in browser
    page = core.open_page(view(cookies=browser))
    page.nonce = "r4nd0m"
    html = page.render()
    assert html.count("<script") == html.count('nonce="r4nd0m"') == 3
    assert len(pixel_twins(html)) == 1


def test_pending_cookie_keeps_the_latest_events_only(make_core: Any) -> None:
    core = make_core()
    page = core.open_page(view(method="POST"))
    ids = [page.track("Lead", user_data={"external_id": "u1"}) for _ in range(PENDING_LIMIT + 2)]
    browser = cookie_values(page.response_headers())
    assert len(browser[PENDING_COOKIE]) < 3000
    shown = core.open_page(view(cookies=browser)).render()
    assert [twin[3]["eventID"] for twin in pixel_twins(shown)] == ids[-PENDING_LIMIT:]


def test_big_custom_data_is_trimmed_for_the_pixel_copy_only(
    make_core: Any, fake_graph: FakeGraph
) -> None:
    core = make_core()
    page = core.open_page(view(method="POST"))
    contents = [{"id": f"sku-{i}", "quantity": 1} for i in range(60)]
    custom = {"value": 9, "currency": "EUR", "contents": contents}
    page.track("Purchase", custom_data=custom, user_data={"external_id": "u1"})
    browser = cookie_values(page.response_headers())
    [twin] = pixel_twins(core.open_page(view(cookies=browser)).render())
    assert twin[2] == {"value": 9, "currency": "EUR"}
    assert core.bridge.flush(10)
    assert len(fake_graph.events[0]["custom_data"]["contents"]) == 60


def test_identify_rejects_programming_errors(make_core: Any) -> None:
    """Unknown keys and wrong types are the app's bugs, not the visitor's: they raise (bad
    values are dropped instead: test_user_data_drops.py)."""
    page = make_core().open_page(view())
    with pytest.raises(ValueError, match="'email' is not a Meta customer-information key"):
        page.identify(email="a@b.c")
    with pytest.raises(TypeError, match="'em' must be text"):
        page.identify(em={"address": "a@b.c"})
    with pytest.raises(TypeError, match="one value"):
        page.identify(em=["a@b.c"])


def test_cli_test_link_prints_a_link_the_site_accepts(
    make_core: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from capi_bridge.cli import main

    monkeypatch.delenv("CAPI_BRIDGE_SECRET_KEY", raising=False)
    assert main(["test-link", "http://shop.test/", "--code", "TEST42"]) == 1
    assert "CAPI_BRIDGE_SECRET_KEY is not set" in capsys.readouterr().out
    monkeypatch.setenv("CAPI_BRIDGE_SECRET_KEY", SECRET)
    assert main(["test-link", "http://shop.test/", "--code", "TEST42"]) == 0
    link = capsys.readouterr().out.splitlines()[0]
    core = make_core(scoped_test_events=True)
    assert core.test_code(view("/?" + link.split("?", 1)[1])) == "TEST42"
