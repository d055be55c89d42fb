"""capi-bridge.js in real headless Chromium: every event reaches the pixel and the endpoint
with the same name and id, including when fbevents.js is blocked, on cached pages, on SPA
route changes; and, where consent is required, held in the outbox until the visitor grants it
(across pages), deleted when they refuse. The pixel calls the page makes itself are in
test_pixel_calls.py."""

from __future__ import annotations

import re
from typing import Any

import pytest
from helpers.chromium import pixel_sent

pytestmark = pytest.mark.browser

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _baked_id(page: Any) -> str:
    html: str = page.content()
    match = re.search(r'"pv":"([^"]+)"', html)
    assert match, "no PageView id in the page's config"
    return match.group(1)


def _ready(page: Any) -> None:
    page.wait_for_function("window.capiBridge && window.capiBridge.ready")


def _page_view(page: Any) -> str:
    """The id of the page's PageView: the baked one, or (a page served without its cookie,
    as every page is before consent) the one boot.js minted instead."""
    _ready(page)
    page_view: str = page.evaluate("capiBridgeConfig.pv")
    return page_view


def test_page_view_and_track_share_name_and_id(site: Any, new_page: Any) -> None:
    page = new_page()
    page.goto(site.url + "/")
    baked = _baked_id(page)
    [pixel_pv] = pixel_sent(page, "PageView")
    server_pv = site.server_copy(baked)
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
    [pixel_purchase] = pixel_sent(page, "Purchase")
    server_purchase = site.server_copy(event_id)
    assert pixel_purchase["method"] == "track"
    assert pixel_purchase["eventID"] == server_purchase["event_id"] == event_id
    assert server_purchase["custom_data"] == {
        "value": 12.5,
        "currency": "EUR",
        "content_ids": ["a1"],
    }
    [pixel_custom] = pixel_sent(page, "NewsletterOpen")
    assert pixel_custom["method"] == "trackCustom" and pixel_custom["eventID"] == custom_id
    assert site.server_copy(custom_id)["event_name"] == "NewsletterOpen"

    # One pixel call and one endpoint request per track().
    calls = page.evaluate("window.__fbqCalls.filter(c => c[0].startsWith('track'))")
    assert [c[1] for c in calls] == ["PageView", "Purchase", "NewsletterOpen"]
    assert site.log.posted_ids() == [baked, event_id, custom_id]
    assert site.log.refreshes == []  # a fresh page's token already vouches for its PageView


def test_endpoint_still_gets_events_when_fbevents_is_blocked(site: Any, new_page: Any) -> None:
    page = new_page(block_pixel=True)
    page.goto(site.url + "/")
    baked = _baked_id(page)
    event_id = page.evaluate("capiBridge.track('Lead')")
    assert site.server_copy(event_id)["event_name"] == "Lead"
    assert site.server_copy(baked)["event_name"] == "PageView"
    assert page.evaluate("window.__fbqCalls === undefined")  # the pixel never ran
    assert site.server_copy(event_id)["user_data"]["fbp"].startswith("fb.0.")  # server-set


@pytest.mark.parametrize("blocked", [False, True])
def test_posts_say_whether_fbevents_loaded(site: Any, new_page: Any, blocked: bool) -> None:
    page = new_page(block_pixel=blocked)
    page.goto(site.url + "/")  # returns after the load event: fbevents.js ran, or failed
    baked = _baked_id(page)
    event_id = page.evaluate("capiBridge.track('Lead')")
    later, _, _ = site.log.answer_for(event_id)
    assert later["px"] == (0 if blocked else 1)
    first, _, _ = site.log.answer_for(baked)
    # the PageView goes out at once: before the load event it cannot tell a slow pixel
    # from a blocked one, and says nothing rather than something wrong
    assert first.get("px") in ((None, 0) if blocked else (None, 1))


def test_calls_made_before_the_script_loads_are_kept(site: Any, new_page: Any) -> None:
    site.pages["/early"] = (
        "",
        "<script>window.earlyId = "
        "capiBridge.track('ViewContent', {content_ids: ['sku-1']});</script>",
    )
    page = new_page()
    page.goto(site.url + "/early")
    early = page.evaluate("window.earlyId")
    assert UUID.fullmatch(early)
    [hit] = pixel_sent(page, "ViewContent")
    assert hit["eventID"] == early == site.server_copy(early)["event_id"]


def test_a_cached_first_visit_carries_one_fbp_on_both_channels(
    site: Any, new_page: Any
) -> None:
    """A cached page sets no cookie: capi-bridge.js mints _fbp in the pixel's format on the
    registrable domain before its first post, and the pixel adopts it."""
    ids = []
    for visitor in range(2):
        page = new_page()
        if visitor:  # the getRandomValues fallback of browsers without crypto.randomUUID
            page.add_init_script("delete Crypto.prototype.randomUUID")
        page.goto(site.url + "/cached")
        baked = _baked_id(page)
        [pixel_pv] = pixel_sent(page, "PageView")
        assert pixel_pv["eventID"] != baked and UUID.fullmatch(pixel_pv["eventID"])
        server_pv = site.server_copy(pixel_pv["eventID"])
        assert pixel_pv["fbp"] and server_pv["user_data"]["fbp"] == pixel_pv["fbp"]
        # on 127.0.0.1 the shortest host suffix a cookie sticks to is the whole address
        assert pixel_pv["fbp"].startswith("fb.3.")
        ids.append(pixel_pv["eventID"])
        # the fresh id was bound to a fresh token by the endpoint before it was mirrored
        assert any(f"pv={pixel_pv['eventID']}" in q for q in site.log.refreshes)
    assert ids[0] != ids[1]


def test_cached_page_with_expired_token_refreshes_it(site: Any, new_page: Any) -> None:
    page = new_page()
    page.goto(site.url + "/stale")
    event_id = page.evaluate("capiBridge.track('AddToCart', {content_ids: ['x']})")
    assert site.server_copy(event_id)["event_name"] == "AddToCart"
    [pixel_pv] = pixel_sent(page, "PageView")
    assert site.server_copy(pixel_pv["eventID"])["event_name"] == "PageView"


def test_spa_page_view_carries_an_id_on_both_sides(site: Any, new_page: Any) -> None:
    page = new_page()
    page.goto(site.url + "/")
    _ready(page)
    page.evaluate("history.pushState({}, '', '/products/42')")
    route_id = page.evaluate("capiBridge.pageView()")
    hits = pixel_sent(page, "PageView", 2)
    assert hits[1]["eventID"] == route_id
    server = site.server_copy(route_id)
    assert server["event_source_url"] == site.url + "/products/42"
    # The pixel's own history listener is off: no PageView without an id.
    assert all(hit["eventID"] for hit in page.evaluate("window.__fbqSent"))


# --- consent ----------------------------------------------------------------------------------


def test_without_consent_events_wait_in_the_outbox_until_granted(
    consent_site: Any, consent_page: Any
) -> None:
    site = consent_site
    page = consent_page()
    response = page.goto(site.url + "/")
    assert response is not None and "set-cookie" not in response.headers
    page_view = _page_view(page)
    lead = page.evaluate("capiBridge.track('Lead')")
    site.log.answer_for(page_view)  # two posts in flight at once: either may be answered first
    site.log.answer_for(lead)
    hold = page.evaluate("sessionStorage.getItem('capib_hold')")
    assert re.fullmatch(r"[0-9a-z]{8,9}-" + UUID.pattern, hold)
    assert {post["hold"] for post in site.log.posts} == {hold}
    assert site.held() == 2
    assert site.delivered_ids() == set()  # nothing reaches Meta...
    assert page.evaluate("window.__fbqSent.length") == 0  # ...from either side
    assert page.context.cookies() == []

    page.evaluate("capiBridge.consent(true)")
    events = site.server_copies(lambda es: {page_view, lead} <= {e["event_id"] for e in es})
    pixel = page.evaluate("window.__fbqSent.map(s => [s.event, s.eventID])")
    assert pixel == [["PageView", page_view], ["Lead", lead]]
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["capib_consent"]["value"] == "1" and cookies["capib_consent"]["httpOnly"]
    # the held events carry the fbp the consent answer set, which the pixel adopted
    fbp = cookies["_fbp"]["value"]
    assert {e["user_data"]["fbp"] for e in events} == {fbp}
    assert {hit["fbp"] for hit in page.evaluate("window.__fbqSent")} == {fbp}
    contact = page.evaluate("capiBridge.track('Contact')")  # consented now: sent, not held
    assert site.server_copy(contact)["user_data"]["fbp"] == fbp
    assert site.log.answer_for(contact)[0].get("hold") is None
    assert site.held() == 0


def test_the_hold_id_carries_held_events_across_pages(consent_site: Any, consent_page: Any) -> None:
    site = consent_site
    page = consent_page()
    page.goto(site.url + "/")
    first = _page_view(page)
    viewed = page.evaluate("capiBridge.track('ViewContent', {content_ids: ['sku-1']})")
    site.log.answer_for(viewed)
    page.goto(site.url + "/checkout")  # the pixel's own queue dies here; ours does not
    second = _page_view(page)
    site.log.answer_for(second)
    assert len({post["hold"] for post in site.log.posts}) == 1
    assert site.delivered_ids() == set()
    page.evaluate("capiBridge.consent(true)")
    site.server_copies(lambda es: {first, viewed, second} <= {e["event_id"] for e in es})
    # the first page's pixel calls died with it: they are fired here, with their ids
    hits = pixel_sent(page, "PageView", 2)
    assert {h["eventID"] for h in hits} == {first, second}
    assert pixel_sent(page, "ViewContent")[0]["eventID"] == viewed
    assert page.evaluate("sessionStorage.getItem('capib_px')") == ""


def test_refusing_consent_deletes_the_held_events(consent_site: Any, consent_page: Any) -> None:
    site = consent_site
    page = consent_page()
    page.goto(site.url + "/")
    page_view = _page_view(page)
    lead = page.evaluate("capiBridge.track('Lead')")
    site.log.answer_for(page_view)  # two posts in flight at once: either may be answered first
    site.log.answer_for(lead)
    assert site.held() == 2
    page.evaluate("capiBridge.consent(false)")
    site.log.wait_answered(lambda body, status, _: body.get("consent") is False and status == 204)
    assert site.held() == 0
    assert site.delivered_ids() == set()
    assert page.evaluate("window.__fbqSent.length") == 0


def test_a_banner_cookie_releases_the_tabs_held_events_on_the_next_page(
    consent_site: Any, consent_page: Any
) -> None:
    """A consent banner may only set the consent cookie, never calling capiBridge.consent():
    the next page, rendered with consent, releases what this tab held."""
    site = consent_site
    page = consent_page()
    page.goto(site.url + "/")
    held = _page_view(page)
    site.log.answer_for(held)
    page.evaluate("document.cookie = 'capib_consent=1; Path=/; SameSite=Lax'")
    page.goto(site.url + "/thanks")
    fresh = _page_view(page)
    site.server_copies(lambda es: {held, fresh} <= {e["event_id"] for e in es})
    answered, _, _ = site.log.answer_for(fresh)
    assert answered.get("hold") is None  # this page was not held
    assert page.evaluate("sessionStorage.getItem('capib_hold')") == ""  # done with
    # the first page's PageView reaches the pixel too, with its id
    assert {h["eventID"] for h in pixel_sent(page, "PageView", 2)} == {held, fresh}
    assert site.held() == 0


def test_ids_match_across_the_held_and_the_released(consent_site: Any, consent_page: Any) -> None:
    site = consent_site
    page = consent_page()
    page.goto(site.url + "/")
    page_view = _page_view(page)
    lead = page.evaluate("capiBridge.track('Lead')")
    site.log.answer_for(page_view)  # held before the consent, not after (a later test's count)
    site.log.answer_for(lead)
    page.evaluate("capiBridge.consent(true)")
    assert site.server_copy(lead)["event_name"] == "Lead"


def test_readme_s_button(site: Any, new_page: Any) -> None:
    """README's HTML example, as written, in a page: one click, both copies, one id."""
    from helpers.readme import block_starting

    site.pages["/readme"] = ("", block_starting("<button onclick=", "html").code)
    page = new_page()
    page.goto(site.url + "/readme")
    _ready(page)
    page.click("text=Add to cart")
    [hit] = pixel_sent(page, "AddToCart")
    data = {"value": 19.9, "currency": "EUR", "content_ids": ["sku-1"], "content_type": "product"}
    assert hit["data"] == data
    server = site.server_copy(hit["eventID"])
    assert server["custom_data"] == data
