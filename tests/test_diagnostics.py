"""Diagnostics on a scripted mix of events (on both stores: a SQLite file and a PostgreSQL
schema; the real fake Graph API): every figure is compared with a count made by hand from the
script below."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.visits import Visitor, new_id
from helpers.web import SECRET

from capi_bridge.assembly import build_core
from capi_bridge.diagnostics import EMQ_WEIGHTS, Diagnostics, format_text
from capi_bridge.pages import PageBridge
from capi_bridge.testing import FakeGraph


def fbc() -> str:
    """An ad click two hours before now (made when the script runs, not at import: the age
    is compared with two hours)."""
    return f"fb.1.{int((time.time() - 7200) * 1000)}.IwAR2xYz_AbC-123"


@pytest.fixture
def core(delivery_settings: Any, store_target: dict[str, Any]) -> Iterator[PageBridge]:
    core = build_core(delivery_settings(secret_key=SECRET, inspector=True, **store_target))
    yield core
    core.close(timeout=0)


def script(core: PageBridge, fake: FakeGraph) -> dict[str, str]:
    """The mix; returns the ids worth naming."""
    ids: dict[str, str] = {}
    # A: a visitor from an ad (fbp and fbc), the pixel library loaded: PageView, AddToCart.
    a = Visitor(core, {"_fbc": fbc()})
    page = a.page("/product")
    ids["pv_a"] = page["pv"]
    assert a.post(page["token"], ("PageView", page["pv"])).status == 202
    ids["cart_a"] = new_id()
    cart = a.post(page["token"], ("AddToCart", ids["cart_a"]), value=5, currency="EUR")
    assert cart.status == 202
    # A pays: the server Purchase (em, fbp, fbc, ip, ua) and its pixel twin on the next page.
    ids["purchase_a"] = a.track(
        "Purchase", identify={"em": "jane@example.com"}, custom_data={"value": 9, "currency": "EUR"}
    )
    assert a.twin_waiting
    a.page("/thank-you")  # fires the twin (its own PageView is never posted: a closed tab)
    assert not a.twin_waiting
    # B: no cookie reaches the endpoint (no fbp), the pixel blocked: a PageView, then a
    # Purchase the mirror refuses (no currency) while the pixel fired it: counted, not kept.
    b = Visitor(core)
    page = b.page("/")
    b.cookies.clear()
    ids["pv_b"] = page["pv"]
    assert b.post(page["token"], ("PageView", page["pv"]), px=0).status == 202
    ids["purchase_b"] = new_id()
    refused = b.post(page["token"], ("Purchase", ids["purchase_b"]), px=0, value=3)
    assert refused.status == 400
    # C: a server-only Lead (pixel=False) with e-mail and phone.
    c = Visitor(core)
    c.page("/newsletter")
    ids["lead_c"] = c.track(
        "Lead", identify={"em": "reader@example.com", "ph": "+33 6 12 34 56 78"}, pixel=False
    )
    # D: a server-only Purchase enqueued directly, which Meta rejects (alone in its request).
    assert core.bridge.flush(10)
    fake.add_fault(mode="code", code=100, subcode=2804050, message="Insufficient customer info")
    ids["purchase_d"] = core.bridge.enqueue(
        {
            "event_name": "Purchase",
            "event_time": int(time.time()),
            "action_source": "website",
            "event_source_url": "http://shop.test/api",
            "user_data": {
                "em": "d@example.com",
                "client_ip_address": "81.2.69.160",
                "client_user_agent": "Mozilla/5.0",
            },
            "custom_data": {"value": 1, "currency": "EUR"},
        }
    )
    assert core.bridge.flush(10)
    core.drops.flush()  # this process's counts of events not mirrored (written every 10 s)
    return ids


def test_figures_match_a_count_by_hand(core: PageBridge, fake_graph: FakeGraph) -> None:
    ids = script(core, fake_graph)
    result: Diagnostics = core.bridge.diagnostics(3600)
    got = {e.event_name: e for e in result.events}
    assert sorted(got) == ["AddToCart", "Lead", "PageView", "Purchase"]

    # PageView: pv_a (fbp fbc ip ua, loaded) and pv_b (ip ua, not loaded); both mirrored.
    pv = got["PageView"].as_dict()
    assert pv["count"] == 2 and pv["server_copies"] == 2
    assert pv["dedup"] == {
        "browser_events": 2,
        "with_server_copy": 2,
        "coverage": 1.0,
        "server_only": 0,
        "not_mirrored": 0,
    }
    shares = {"em": 0, "ph": 0, "external_id": 0, "fbp": 0.5, "fbc": 0.5, "ip": 1, "ua": 1}
    assert pv["key_share"] == {**shares, "other": 0}
    assert pv["pixel_loaded"] == {"reported": 2, "loaded": 1, "share": 0.5}
    assert pv["fbc_age"]["events"] == 1 and 7190 <= pv["fbc_age"]["median"] < 86400  # seconds
    assert pv["fbc_age"]["buckets"]["1-24 h"] == 1
    assert pv["refused"] == []
    # README's weights (em 3, fbc 3, ph 2, external_id 2, fbp 2, ip 2, ua 1, other 1; 16 in
    # all), by hand: 10 x (2 x 0.5 fbp + 3 x 0.5 fbc + 2 ip + 1 ua) / 16 = 3.4375
    assert pv["emq_estimate"] == 3.4

    # AddToCart: one mirrored event with fbp, fbc, ip and ua.
    cart = got["AddToCart"].as_dict()
    assert (cart["count"], cart["dedup"]["coverage"], cart["dedup"]["server_only"]) == (1, 1.0, 0)
    assert cart["key_share"]["fbp"] == cart["key_share"]["fbc"] == 1.0

    # Purchase: purchase_a (server + twin), purchase_b (pixel only: refused, so counted, not
    # observed), purchase_d (server only, dead). Browser copies: a, b; with a server copy: a.
    # Server copies: a, d.
    purchase = got["Purchase"].as_dict()
    assert purchase["count"] == 2 and purchase["server_copies"] == 2
    assert purchase["dedup"] == {
        "browser_events": 2,
        "with_server_copy": 1,
        "coverage": 0.5,
        "server_only": 1,
        "not_mirrored": 1,
    }
    shares = {"em": 1, "ph": 0, "external_id": 0, "fbp": 0.5, "fbc": 0.5, "ip": 1, "ua": 1}
    assert purchase["key_share"] == {**shares, "other": 0}
    assert purchase["emq_estimate"] == 5.3  # 10 x (3 em + 1 fbp + 1.5 fbc + 2 ip + 1 ua) / 16
    assert purchase["pixel_loaded"] == {"reported": 0, "loaded": 0, "share": None}
    reasons = {
        (r["reason"], r.get("code"), r.get("subcode"), r["count"]) for r in purchase["refused"]
    }
    assert reasons == {
        ("refused by the mirror endpoint", None, None, 1),
        ("rejected by Meta", 100, 2804050, 1),
    }
    mirror = next(r for r in purchase["refused"] if r["reason"].startswith("refused"))
    assert "currency" in mirror["message"]

    # Lead: server only, em + ph; no browser copy, so no coverage.
    lead = got["Lead"].as_dict()
    assert lead["count"] == 1 and lead["dedup"]["browser_events"] == 0
    assert lead["dedup"]["coverage"] is None and lead["dedup"]["server_only"] == 1
    assert lead["key_share"]["em"] == lead["key_share"]["ph"] == 1.0
    assert lead["key_share"]["fbp"] == 1.0  # the form post's page had set _fbp

    # Every figure is a count or a share: no user data in the whole report.
    text = repr(result.as_dict()) + format_text(result)
    for raw in ("jane@example.com", "reader@example.com", "IwAR2xYz", "81.2.69.142", "+33"):
        assert raw not in text
    assert ids["purchase_a"] not in text  # not even event ids
    assert "estimate" in text and "'About Event Match Quality'" in text
    assert ".md" not in text  # cites public pages, not a file outside the repository


def test_the_window_leaves_older_events_out(core: PageBridge, fake_graph: FakeGraph) -> None:
    visitor = Visitor(core)
    page = visitor.page("/")
    assert visitor.post(page["token"], ("PageView", page["pv"])).status == 202
    assert core.bridge.flush(10)
    assert core.bridge.diagnostics(3600).by_name()["PageView"].count == 1
    with core.bridge.outbox.write() as c:  # as if it had been seen an hour ago
        c.execute("UPDATE observations SET at = at - 3600")
    assert core.bridge.diagnostics(1800).events == ()
    assert core.bridge.diagnostics(7200).by_name()["PageView"].count == 1


def test_text_report_names_the_estimate_and_its_weights(
    core: PageBridge, fake_graph: FakeGraph
) -> None:
    script(core, fake_graph)
    text = format_text(core.bridge.diagnostics())
    assert "Purchase: 2 events, 2 server copies" in text
    assert (
        "dedup coverage   50% (1 of 2 with a browser copy have a server copy; 1 not mirrored)"
        in text
    )
    assert "(estimate)" in text and "em 3, fbc 3" in text
    assert "rejected by Meta (code 100/2804050)" in text


def test_ignored_browser_events_lower_the_coverage_they_belong_to(core: PageBridge) -> None:
    """A crawler's PageView had a pixel copy (Meta's pixel blocks only some bots) and no
    server copy; a trackSingle to an agency's pixel is not the site's event at all."""
    human = Visitor(core)
    page = human.page("/")
    assert human.post(page["token"], ("PageView", page["pv"])).status == 202
    crawler = Visitor(core)
    crawled = crawler.page("/")
    crawler_ua = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"
    assert crawler.post(crawled["token"], ("PageView", crawled["pv"]), ua=crawler_ua).status == 202
    assert crawler.post(crawled["token"], ("Lead", new_id()), pixel_id="999").status == 202
    assert core.bridge.flush(10)
    core.drops.flush()
    report = core.bridge.diagnostics(3600)
    page_view = report.by_name()["PageView"].as_dict()
    assert page_view["dedup"]["browser_events"] == 2 and page_view["dedup"]["coverage"] == 0.5
    assert page_view["ignored"] == [
        {
            "reason": "crawler",
            "meaning": "ignored: the user agent is a crawler or link preview",
            "detail": "bingbot",
            "count": 1,
            "last_at": page_view["ignored"][0]["last_at"],
        }
    ]
    lead = report.by_name()["Lead"].as_dict()
    assert lead["dedup"]["coverage"] is None and lead["ignored"][0]["reason"] == "unknown_pixel"
    text = format_text(report)
    line = "not mirrored     1 x ignored: the user agent is a crawler or link preview (bingbot)"
    assert line in text


def test_the_weights_are_the_ones_readme_documents() -> None:
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    stated = re.search(r"/ Σ weights`, with (.+?)\. Meta publishes", readme, re.S)
    assert stated is not None
    pairs = [part.split() for part in stated.group(1).replace("\n", " ").split(", ")]
    assert {key: int(weight) for key, weight in pairs} == EMQ_WEIGHTS
