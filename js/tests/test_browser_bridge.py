"""capi-bridge.js in real headless Chromium: every event reaches the pixel and the endpoint
with the same name and id, including when fbevents.js is blocked, on cached pages, on SPA
route changes; and, where consent is required, held in the outbox until the visitor grants it
(across pages), deleted when they refuse."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import pytest
from helpers.chromium import pixel_sent

pytestmark = pytest.mark.browser

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _has_n(n: int, events: list[Mapping[str, Any]]) -> bool:
    return len(events) == n


def _baked_id(page: Any) -> str:
    html: str = page.content()
    match = re.search(r'"pv":"([^"]+)"', html)
    assert match, "no PageView id in the page's config"
    return match.group(1)


def test_page_view_and_track_share_name_and_id(site: Any, new_page: Any) -> None:
    page = new_page()
    page.goto(site.url + "/")
    baked = _baked_id(page)
    site.sink.wait_for(lambda events: any(e["event_name"] == "PageView" for e in events))
    [pixel_pv] = pixel_sent(page, "PageView")
    [server_pv] = site.sink.named("PageView")
    assert pixel_pv["eventID"] == server_pv["event_id"] == baked
    # The server set _fbp on the very first response: both copies carry the same one.
    assert pixel_pv["fbp"] and pixel_pv["fbp"] == server_pv["user_data"]["fbp"]
    assert server_pv["user_data"]["client_user_agent"]
    assert server_pv["event_source_url"] == site.url + "/"

    event_id = page.evaluate(
        "capiBridge.track('Purchase', {value: 12.5, currency: 'EUR', content_ids: ['a1']})"
    )
    custom_id = page.evaluate("capiBridge.track('NewsletterOpen')")
    assert UUID.fullmatch(event_id) and UUID.fullmatch(custom_id)
    site.sink.wait_for(lambda events: len(events) == 3)
    [pixel_purchase] = pixel_sent(page, "Purchase")
    [server_purchase] = site.sink.named("Purchase")
    assert pixel_purchase["method"] == "track"
    assert pixel_purchase["eventID"] == server_purchase["event_id"] == event_id
    assert server_purchase["custom_data"] == {
        "value": 12.5,
        "currency": "EUR",
        "content_ids": ["a1"],
    }
    [pixel_custom] = pixel_sent(page, "NewsletterOpen")
    assert pixel_custom["method"] == "trackCustom" and pixel_custom["eventID"] == custom_id
    assert site.sink.named("NewsletterOpen")[0]["event_id"] == custom_id

    # One pixel call and one endpoint request per track().
    calls = page.evaluate("window.__fbqCalls.filter(c => c[0].startsWith('track'))")
    assert [c[1] for c in calls] == ["PageView", "Purchase", "NewsletterOpen"]
    posted = [e["event_id"] for post in site.sink.posts for e in post.get("events", [])]
    assert posted == [baked, event_id, custom_id]
    assert site.sink.refreshes == []  # a fresh page's token already vouches for its PageView


def test_endpoint_still_gets_events_when_fbevents_is_blocked(site: Any, new_page: Any) -> None:
    page = new_page(block_pixel=True)
    page.goto(site.url + "/")
    baked = _baked_id(page)
    event_id = page.evaluate("capiBridge.track('Lead')")
    site.sink.wait_for(lambda events: len(events) == 2)
    assert [(e["event_name"], e["event_id"]) for e in site.sink.events] == [
        ("PageView", baked),
        ("Lead", event_id),
    ]
    assert page.evaluate("window.__fbqCalls === undefined")  # the pixel never ran
    assert site.sink.events[1]["user_data"]["fbp"].startswith("fb.0.")  # server-set, IP host


@pytest.mark.parametrize("blocked", [False, True])
def test_posts_say_whether_fbevents_loaded(site: Any, new_page: Any, blocked: bool) -> None:
    page = new_page(block_pixel=blocked)
    page.goto(site.url + "/")  # returns after the load event: fbevents.js ran, or failed
    event_id = page.evaluate("capiBridge.track('Lead')")
    site.sink.wait_for(lambda events: any(e["event_id"] == event_id for e in events))
    [first, later] = site.sink.posts
    assert later["events"][0]["event_id"] == event_id
    assert later["px"] == (0 if blocked else 1)
    # the PageView goes out at once: before the load event it cannot tell a slow pixel
    # from a blocked one, and says nothing rather than something wrong
    assert first.get("px") in ((None, 0) if blocked else (None, 1))


def test_calls_made_before_the_script_loads_are_kept(site: Any, new_page: Any) -> None:
    page = new_page()
    page.goto(site.url + "/early")
    early = page.evaluate("window.earlyId")
    assert UUID.fullmatch(early)
    site.sink.wait_for(lambda events: len(events) == 2)
    [hit] = pixel_sent(page, "ViewContent")
    assert hit["eventID"] == early == site.sink.named("ViewContent")[0]["event_id"]


def test_cached_page_mints_a_fresh_id_per_view(site: Any, new_page: Any) -> None:
    ids = []
    for visitor in range(2):
        page = new_page()
        if visitor:  # the getRandomValues fallback of browsers without crypto.randomUUID
            page.add_init_script("delete Crypto.prototype.randomUUID")
        page.goto(site.url + "/cached")
        baked = _baked_id(page)
        site.sink.wait_for(functools.partial(_has_n, visitor + 1))
        [pixel_pv] = pixel_sent(page, "PageView")
        server_pv = site.sink.named("PageView")[visitor]
        assert pixel_pv["eventID"] == server_pv["event_id"] != baked
        assert UUID.fullmatch(server_pv["event_id"])
        ids.append(server_pv["event_id"])
        # the fresh id was bound to a fresh token by the endpoint before it was mirrored
        assert f"pv={server_pv['event_id']}" in site.sink.refreshes[visitor]
    assert ids[0] != ids[1]


def test_cached_page_with_expired_token_refreshes_it(site: Any, new_page: Any) -> None:
    page = new_page()
    page.goto(site.url + "/stale")
    event_id = page.evaluate("capiBridge.track('AddToCart', {content_ids: ['x']})")
    site.sink.wait_for(lambda events: len(events) == 2)
    assert site.sink.named("AddToCart")[0]["event_id"] == event_id
    [pixel_pv] = pixel_sent(page, "PageView")
    assert site.sink.named("PageView")[0]["event_id"] == pixel_pv["eventID"]


def test_spa_page_view_carries_an_id_on_both_sides(site: Any, new_page: Any) -> None:
    page = new_page()
    page.goto(site.url + "/")
    site.sink.wait_for(lambda events: len(events) == 1)
    page.evaluate("history.pushState({}, '', '/products/42')")
    route_id = page.evaluate("capiBridge.pageView()")
    site.sink.wait_for(lambda events: len(events) == 2)
    hits = pixel_sent(page, "PageView", 2)
    assert hits[1]["eventID"] == route_id
    server = site.sink.named("PageView")[1]
    assert server["event_id"] == route_id
    assert server["event_source_url"] == site.url + "/products/42"
    # The pixel's own history listener is off: no PageView without an id.
    assert all(hit["eventID"] for hit in page.evaluate("window.__fbqSent"))


def _held_site(site: Any) -> tuple[Any, Any]:
    assert site.bridge is not None and site.graph is not None
    return site.bridge, site.graph


def _ready(page: Any) -> None:
    page.wait_for_function("window.capiBridge && window.capiBridge.ready")


def _triples(events: list[Mapping[str, Any]]) -> set[tuple[str, str, int]]:
    return {(e["event_name"], e["event_id"], e["event_time"]) for e in events}


def test_without_consent_events_wait_in_the_outbox_until_granted(
    consent_site: Any, consent_page: Any
) -> None:
    bridge, graph = _held_site(consent_site)
    sink = consent_site.sink
    page = consent_page()
    response = page.goto(consent_site.url + "/")
    assert response is not None and "set-cookie" not in response.headers
    _ready(page)
    lead = page.evaluate("capiBridge.track('Lead')")
    sink.wait_for(functools.partial(_has_n, 2))  # posted at once, not kept in the page
    hold = page.evaluate("sessionStorage.getItem('capib_hold')")
    assert UUID.fullmatch(hold) and sink.holds == [hold, hold]
    page_view = sink.events[0]["event_id"]
    assert bridge.stats().held == 2
    assert bridge.flush(10) and graph.events == []  # nothing reaches Meta...
    assert page.evaluate("window.__fbqSent.length") == 0  # ...from either side
    assert page.context.cookies() == []

    page.evaluate("capiBridge.consent(true)")
    assert graph.wait_for_events(2, timeout=10)
    assert _triples(graph.events) == _triples(sink.events)  # original ids and times
    pixel = page.evaluate("window.__fbqSent.map(s => [s.event, s.eventID])")
    assert pixel == [["PageView", page_view], ["Lead", lead]]
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["capib_consent"]["value"] == "1" and cookies["capib_consent"]["httpOnly"]
    contact = page.evaluate("capiBridge.track('Contact')")  # consented now: sent, not held
    assert graph.wait_for_events(3, timeout=10)
    sink.wait_for(functools.partial(_has_n, 3))  # the sink records after the outbox commit
    assert sink.holds[-1] is None and graph.events[-1]["event_id"] == contact
    assert bridge.stats().held == 0


def test_the_hold_id_carries_held_events_across_pages(consent_site: Any, consent_page: Any) -> None:
    bridge, graph = _held_site(consent_site)
    sink = consent_site.sink
    page = consent_page()
    page.goto(consent_site.url + "/")
    _ready(page)
    viewed = page.evaluate("capiBridge.track('ViewContent', {content_ids: ['sku-1']})")
    sink.wait_for(functools.partial(_has_n, 2))
    page.goto(consent_site.url + "/checkout")  # the pixel's own queue dies here; ours does not
    _ready(page)
    sink.wait_for(functools.partial(_has_n, 3))
    assert len(set(sink.holds)) == 1 and sink.holds[0] is not None
    assert bridge.flush(10) and graph.events == []
    page.evaluate("capiBridge.consent(true)")
    assert graph.wait_for_events(3, timeout=10)
    names = sorted((e["event_name"], e["event_id"]) for e in graph.events)
    assert [n for n, _ in names] == ["PageView", "PageView", "ViewContent"]
    assert viewed in {i for _, i in names} and _triples(graph.events) == _triples(sink.events)


def test_refusing_consent_deletes_the_held_events(consent_site: Any, consent_page: Any) -> None:
    bridge, graph = _held_site(consent_site)
    sink = consent_site.sink
    page = consent_page()
    page.goto(consent_site.url + "/")
    _ready(page)
    page.evaluate("capiBridge.track('Lead')")
    sink.wait_for(functools.partial(_has_n, 2))
    assert bridge.stats().held == 2
    page.evaluate("capiBridge.consent(false)")
    sink.wait_answered(lambda body, status: body.get("consent") is False and status == 204)
    assert bridge.stats().held == 0
    assert bridge.flush(10) and graph.events == []


def test_a_banner_cookie_releases_the_tabs_held_events_on_the_next_page(
    consent_site: Any, consent_page: Any
) -> None:
    """A consent banner may only set the consent cookie, never calling capiBridge.consent():
    the next page, rendered with consent, releases what this tab held."""
    bridge, graph = _held_site(consent_site)
    sink = consent_site.sink
    page = consent_page()
    page.goto(consent_site.url + "/")
    _ready(page)
    sink.wait_for(functools.partial(_has_n, 1))
    page.evaluate("document.cookie = 'capib_consent=1; Path=/; SameSite=Lax'")
    page.goto(consent_site.url + "/thanks")
    _ready(page)
    assert graph.wait_for_events(2, timeout=10)
    sink.wait_for(functools.partial(_has_n, 2))
    assert sink.holds[0] is not None and sink.holds[1] is None  # this page was not held
    assert _triples(graph.events) == _triples(sink.events)
    assert page.evaluate("sessionStorage.getItem('capib_hold')") is None  # done with
    assert bridge.stats().held == 0
