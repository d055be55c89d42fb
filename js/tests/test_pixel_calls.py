"""The pixel calls a page makes itself (template code, a tag manager), mirrored in real headless
Chromium against the fbevents.js stand-in, which keeps the real library's contract (callMethod
and queue replay, _fbp/_fbc adoption and minting, eid from the 4th argument only, consent lock,
bot blocking).

Each call the page makes, before or after fbevents.js loads (or when it never does), reaches
the pixel once and the endpoint once, with one event id; calls for pixels the site does not
configure are not mirrored; the ad click's _fbc and the browser's _fbp are the same on both
channels, through a cached first visit and a consent landing; and a headless browser's events
show in the inspector with the reason they were ignored."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import chromium
from helpers.chromium import pixel_sent
from helpers.waiting import until
from sites import FOREIGN_PIXEL, PIXEL_ID, Site, serve_site

pytestmark = pytest.mark.browser

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
FBCLID = "IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHy"


def _ready(page: Any) -> None:
    page.wait_for_function("window.capiBridge && window.capiBridge.ready")


def _hits(page: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = page.evaluate("window.__fbqSent || []")
    return sent


class Gate:
    """Holds back a script the page loads until :meth:`open`: what "before it loads" means."""

    def __init__(self, page: Any, pattern: str, body: Callable[[], bytes]) -> None:
        self.routes: list[Any] = []
        self._body = body
        page.route(pattern, lambda route: self.routes.append(route))

    def open(self, page: Any) -> None:
        until(
            lambda: self.routes,
            timeout=10,
            what="the page never asked for the script",
            step=lambda: page.evaluate("0"),  # each call lets Playwright hand over the request
        )
        for route in self.routes:
            route.fulfill(status=200, content_type="text/javascript", body=self._body())
        self.routes.clear()


def _script(site: Site) -> bytes:
    from capi_bridge.snippet import script_bytes

    return script_bytes()


# --- calls made by the page's own code --------------------------------------------------------


def test_calls_after_load_with_and_without_an_id_are_mirrored_once(
    site: Site, new_page: Any
) -> None:
    page = new_page()
    page.goto(site.url + "/")
    _ready(page)
    page.wait_for_function("!!window.fbq.callMethod")  # fbevents.js has loaded
    page.evaluate(
        "fbq('track', 'ViewContent', {content_ids: ['sku-9'], content_type: 'product'},"
        " {eventID: 'vc-template-0001'})"
    )
    page.evaluate("fbq('trackCustom', 'NewsletterOpen', {list: 'weekly'})")
    page.evaluate("fbq('track', 'Lead')")
    [viewed] = pixel_sent(page, "ViewContent")
    [opened] = pixel_sent(page, "NewsletterOpen")
    [lead] = pixel_sent(page, "Lead")
    # a call with an id keeps it; one without gets one, passed on to the pixel
    assert viewed["eventID"] == "vc-template-0001"
    assert UUID.fullmatch(opened["eventID"]) and UUID.fullmatch(lead["eventID"])
    assert opened["method"] == "trackCustom"
    ids = (viewed["eventID"], opened["eventID"], lead["eventID"])
    server = {event_id: site.server_copy(event_id) for event_id in ids}
    assert server["vc-template-0001"]["custom_data"] == {
        "content_ids": ["sku-9"],
        "content_type": "product",
    }
    assert server[opened["eventID"]]["event_name"] == "NewsletterOpen"
    assert server[opened["eventID"]]["custom_data"] == {"list": "weekly"}
    for hit in (viewed, opened, lead):  # the same browser on both channels
        assert server[hit["eventID"]]["user_data"]["fbp"] == hit["fbp"]
    # an order number as the id (the site's own dedup key) is kept as it is
    page.evaluate("fbq('track', 'Purchase', {value: 5, currency: 'EUR'}, {eventID: '10423'})")
    assert pixel_sent(page, "Purchase")[0]["eventID"] == "10423"
    assert site.server_copy("10423")["custom_data"] == {"value": 5, "currency": "EUR"}
    page.evaluate("fbq('track', 'Contact', {}, {eventID: 10424})")  # a number, as the pixel takes
    assert site.server_copy("10424")["event_name"] == "Contact"
    # exactly once each: one pixel hit, one post
    posted = site.log.posted_ids()
    for hit in (viewed, opened, lead):
        assert posted.count(hit["eventID"]) == 1
    assert [h["event"] for h in _hits(page)].count("Lead") == 1


def test_calls_before_fbevents_and_capi_bridge_load_are_queued_and_mirrored_once(
    site: Site, new_page: Any
) -> None:
    site.pages["/template"] = (
        "",
        "<script>"
        "fbq('track', 'AddToCart', {value: 4, currency: 'EUR'}, {eventID: 'cart-template-01'});"
        "fbq('trackCustom', 'NewsletterOpen');"
        "window.queuedLength = fbq.queue.length;"
        "</script>",
    )
    page = new_page()
    pixel = Gate(page, "**/fbevents.js", lambda: chromium.STUB)
    bridge = Gate(page, "**/capi-bridge.js*", lambda: _script(site))
    page.goto(site.url + "/template", wait_until="domcontentloaded")
    # both calls are in the base code's queue, each seen by the hook as it was made
    assert page.evaluate("window.queuedLength") >= 2
    assert page.evaluate("window.__fbqSent === undefined")
    queued = page.evaluate(
        "fbq.queue.filter(a => a[0].startsWith('track')).map(a => [a[1], a[3].eventID])"
    )
    assert ["AddToCart", "cart-template-01"] in queued
    [newsletter_id] = [i for n, i in queued if n == "NewsletterOpen"]
    assert UUID.fullmatch(newsletter_id)
    bridge.open(page)  # capi-bridge.js first: it mirrors what boot.js queued
    assert site.server_copy("cart-template-01")["custom_data"] == {"value": 4, "currency": "EUR"}
    assert site.server_copy(newsletter_id)["event_name"] == "NewsletterOpen"
    pixel.open(page)  # then the pixel replays its queue, with the ids the hook gave
    assert pixel_sent(page, "AddToCart")[0]["eventID"] == "cart-template-01"
    assert pixel_sent(page, "NewsletterOpen")[0]["eventID"] == newsletter_id
    assert site.log.posted_ids().count("cart-template-01") == 1
    assert site.log.posted_ids().count(newsletter_id) == 1


def test_a_site_base_code_ahead_of_the_snippet_and_a_kept_reference_are_seen(
    site: Site, new_page: Any
) -> None:
    """The site's own copy of Meta's base code runs first (it made fbq; ours then does nothing
    but hook it), and a tag manager kept a reference to the old function (window._fbq)."""
    site.pages["/own-base-code"] = (
        "<script>!function(f,b,e,v,n,t,s){if(f.fbq)return;n=f.fbq=function(){n.callMethod?"
        "n.callMethod.apply(n,arguments):n.queue.push(arguments)};if(!f._fbq)f._fbq=n;n.push=n;"
        "n.loaded=!0;n.version='2.0';n.queue=[];t=b.createElement(e);t.async=!0;t.src=v;"
        "s=b.getElementsByTagName(e)[0];s.parentNode.insertBefore(t,s)}(window,document,"
        "'script','https://connect.facebook.net/en_US/fbevents.js');"
        "fbq('init', '" + PIXEL_ID + "');"
        "fbq('track', 'Search', {search_string: 'mugs'}, {eventID: 'search-before-01'});"
        "</script>",
        "<script>window._fbq('track', 'Contact', {}, {eventID: 'contact-by-ref-01'});</script>",
    )
    page = new_page()
    page.goto(site.url + "/own-base-code")
    assert pixel_sent(page, "Search")[0]["eventID"] == "search-before-01"
    assert pixel_sent(page, "Contact")[0]["eventID"] == "contact-by-ref-01"
    assert site.server_copy("search-before-01")["custom_data"] == {"search_string": "mugs"}
    assert site.server_copy("contact-by-ref-01")["event_name"] == "Contact"
    # the page's PageView is fired once, by capi-bridge, with its id
    [page_view] = pixel_sent(page, "PageView")
    assert site.server_copy(page_view["eventID"])["event_name"] == "PageView"


def test_a_hand_written_page_view_is_the_pages_own_and_a_route_change_is_new(
    site: Site, new_page: Any
) -> None:
    page = new_page()
    page.goto(site.url + "/")
    _ready(page)
    baked = page.evaluate("capiBridgeConfig.pv")
    page.evaluate("fbq('track', 'PageView')")  # a template's own base code, say
    hits = pixel_sent(page, "PageView", 2)
    assert [h["eventID"] for h in hits] == [baked, baked]  # Meta counts one
    page.evaluate("history.pushState({}, '', '/products/7'); fbq('track', 'PageView')")
    route = pixel_sent(page, "PageView", 3)[2]["eventID"]
    assert route != baked and UUID.fullmatch(route)
    server = site.server_copy(route)
    assert server["event_source_url"] == site.url + "/products/7"
    assert site.log.posted_ids().count(baked) == 1


def test_track_single_to_a_foreign_pixel_is_not_mirrored(site: Site, new_page: Any) -> None:
    site.pages["/agency"] = (
        "",
        f"<script>fbq('init', '{FOREIGN_PIXEL}');</script>",
    )
    page = new_page()
    page.goto(site.url + "/agency")
    _ready(page)
    page.evaluate(
        f"fbq('trackSingle', '{FOREIGN_PIXEL}', 'Purchase', {{value: 8, currency: 'EUR'}},"
        " {eventID: 'agency-purchase-1'})"
    )
    page.evaluate(
        f"fbq('trackSingle', '{PIXEL_ID}', 'AddToCart', {{content_ids: ['a']}},"
        " {eventID: 'single-cart-0001'})"
    )
    [foreign] = pixel_sent(page, "Purchase")
    assert foreign["pixel"] == FOREIGN_PIXEL and foreign["eventID"] == "agency-purchase-1"
    [ours] = pixel_sent(page, "AddToCart")
    assert ours["pixel"] == PIXEL_ID  # trackSingle: one pixel only
    body, status, reply = site.log.answer_for("agency-purchase-1")
    assert status == 202 and reply == {
        "accepted": 0,
        "ignored": [{"field": "events[0]", "reason": "unknown_pixel"}],
    }
    assert body["events"][0]["pixel_id"] == FOREIGN_PIXEL
    assert site.server_copy("single-cart-0001")["pixel_id"] == PIXEL_ID
    delivered = site.delivered_ids()
    assert "agency-purchase-1" not in delivered and "single-cart-0001" in delivered


def test_when_fbevents_is_blocked_the_server_copy_still_arrives(
    site: Site, new_page: Any
) -> None:
    site.pages["/blocked"] = (
        "",
        "<script>fbq('track', 'ViewContent', {content_ids: ['b1']}, {eventID: 'vc-blocked-01'})"
        "</script>",
    )
    page = new_page(block_pixel=True)
    page.goto(site.url + "/blocked")
    _ready(page)
    page.evaluate("fbq('trackCustom', 'NewsletterOpen', {}, {eventID: 'nl-blocked-0001'})")
    assert site.server_copy("vc-blocked-01")["custom_data"] == {"content_ids": ["b1"]}
    assert site.server_copy("nl-blocked-0001")["event_name"] == "NewsletterOpen"
    assert site.log.answer_for("nl-blocked-0001")[0]["px"] == 0  # the page says why
    assert page.evaluate("window.__fbqCalls === undefined")


def test_when_the_hook_cannot_attach_the_page_works_and_the_inspector_says_why(
    site: Site, new_page: Any, browser: Any
) -> None:
    """fbevents.js ran before capi-bridge's snippet (the site loads it itself, synchronously):
    its fbq is not hooked, the page works as before, and the inspector says why."""
    site.pages["/pixel-first"] = (
        "<script>!function(f){if(f.fbq)return;var n=f.fbq=function(){n.callMethod?"
        "n.callMethod.apply(n,arguments):n.queue.push(arguments)};n.push=n;n.loaded=!0;"
        "n.version='2.0';n.queue=[]}(window);</script>"
        "<script src='https://connect.facebook.net/en_US/fbevents.js'></script>",
        "<script>fbq('track', 'Lead', {}, {eventID: 'lead-unhooked-01'})</script>",
    )
    page = new_page()
    page.goto(site.url + "/pixel-first")
    _ready(page)
    assert page.evaluate("capiBridgeConfig.nohook") == 1
    assert pixel_sent(page, "Lead")[0]["eventID"] == "lead-unhooked-01"  # the pixel as before
    tracked = page.evaluate("capiBridge.track('Contact')")  # capi-bridge's own API still works
    assert pixel_sent(page, "Contact")[0]["eventID"] == tracked
    assert site.server_copy(tracked)["event_name"] == "Contact"
    assert "lead-unhooked-01" not in site.delivered_ids()
    inspector = browser.new_page()
    try:
        inspector.goto(site.url + "/capi-bridge/inspector")
        row = inspector.wait_for_selector("#dropped tr[data-reason='not_mirrored']")
        assert "fbevents.js ran before capi-bridge's snippet" in row.inner_text()
    finally:
        inspector.close()


def test_mirroring_pixel_calls_can_be_turned_off(
    browser: Any, tmp_path: Any
) -> None:
    with serve_site(tmp_path, mirror_pixel_calls=False) as site:
        call = "fbq('track', 'Lead', {}, {eventID: 'lead-off-0001'})"
        site.pages["/off"] = ("", f"<script>{call}</script>")
        for make in chromium.contexts(browser, user_agent=chromium.DESKTOP_UA):
            page = make()
            page.goto(site.url + "/off")
            _ready(page)
            assert page.evaluate("capiBridgeConfig.nohook") is None  # off, not failed
            assert pixel_sent(page, "Lead")[0]["eventID"] == "lead-off-0001"
            tracked = page.evaluate("capiBridge.track('Contact')")
            assert site.server_copy(tracked)["event_name"] == "Contact"
            assert "lead-off-0001" not in site.delivered_ids()


# --- fbp and fbc parity -----------------------------------------------------------------------


def test_a_cached_first_visit_from_an_ad_has_one_fbp_and_one_fbc(
    site: Site, new_page: Any
) -> None:
    page = new_page()
    page.goto(site.url + f"/cached?fbclid={FBCLID}")
    [pixel_pv] = pixel_sent(page, "PageView")
    server = site.server_copy(pixel_pv["eventID"])
    assert pixel_pv["fbp"] and server["user_data"]["fbp"] == pixel_pv["fbp"]
    assert pixel_pv["fbc"] and server["user_data"]["fbc"] == pixel_pv["fbc"]
    assert pixel_pv["fbc"].endswith("." + FBCLID)
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["_fbp"]["value"] == pixel_pv["fbp"]
    assert cookies["_fbp"]["expires"] > cookies["_fbp"].get("expires", 0) - 1  # a real expiry


def test_consent_landing_from_an_ad_then_grant(consent_site: Site, consent_page: Any) -> None:
    """Nothing is sent before consent; at grant the server sets _fbp and _fbc (the click dated
    from the landing) before the pixel unlocks, and both channels carry the same strings."""
    site = consent_site
    page = consent_page()
    page.goto(site.url + f"/?fbclid={FBCLID}")
    _ready(page)
    landing = page.evaluate("capiBridgeConfig.pv")
    page.evaluate("fbq('track', 'ViewContent', {content_ids: ['m1']}, {eventID: 'vc-landing-01'})")
    site.log.answer_for("vc-landing-01")
    assert site.delivered_ids() == set()
    assert _hits(page) == [] and page.context.cookies() == []
    page.evaluate("capiBridge.consent(true)")
    events = site.server_copies(
        lambda es: {landing, "vc-landing-01"} <= {e["event_id"] for e in es}
    )
    hits = pixel_sent(page, "PageView") + pixel_sent(page, "ViewContent")
    assert {h["eventID"] for h in hits} == {landing, "vc-landing-01"}
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    fbp, fbc = cookies["_fbp"], cookies["_fbc"]
    assert fbc.endswith("." + FBCLID)
    assert {h["fbp"] for h in hits} == {e["user_data"]["fbp"] for e in events} == {fbp}
    assert {h["fbc"] for h in hits} == {e["user_data"]["fbc"] for e in events} == {fbc}
    # the click is dated from the landing, not from the grant
    hold = page.evaluate("sessionStorage.getItem('capib_hold')")
    assert int(fbc.split(".")[2]) == int(hold.split("-")[0], 36)


def test_consent_landing_then_a_second_page_then_grant(
    consent_site: Site, consent_page: Any
) -> None:
    """The visitor moves on before answering the banner: the landing PageView's pixel copy
    died with its page; at grant it is fired with its original id, and the click, which the
    pixel now finds in the referrer, carries the landing's time on every copy."""
    site = consent_site
    site.pages["/landing"] = ("", "<a id='next' href='/next'>next</a>")
    page = consent_page()
    page.goto(site.url + f"/landing?fbclid={FBCLID}")
    _ready(page)
    landing = page.evaluate("capiBridgeConfig.pv")
    site.log.answer_for(landing)
    page.click("#next")
    page.wait_for_url("**/next")
    _ready(page)
    second = page.evaluate("capiBridgeConfig.pv")
    site.log.answer_for(second)
    assert site.delivered_ids() == set() and _hits(page) == []
    page.evaluate("capiBridge.consent(true)")
    events = site.server_copies(lambda es: {landing, second} <= {e["event_id"] for e in es})
    hits = pixel_sent(page, "PageView", 2)
    assert {h["eventID"] for h in hits} == {landing, second}
    fbc = {c["name"]: c["value"] for c in page.context.cookies()}["_fbc"]
    assert {h["fbc"] for h in hits} == {e["user_data"]["fbc"] for e in events} == {fbc}
    assert len({h["fbp"] for h in hits} | {e["user_data"]["fbp"] for e in events}) == 1


def test_a_call_held_before_consent_is_mirrored_once_though_the_pixel_replays_it(
    consent_site: Site, consent_page: Any
) -> None:
    site = consent_site
    page = consent_page()
    page.goto(site.url + "/")
    _ready(page)
    page.evaluate("fbq('track', 'Lead', {}, {eventID: 'lead-held-00001'})")
    site.log.answer_for("lead-held-00001")
    page.evaluate("capiBridge.consent(true)")
    assert pixel_sent(page, "Lead")[0]["eventID"] == "lead-held-00001"  # replayed at grant
    site.server_copy("lead-held-00001")
    assert site.log.posted_ids().count("lead-held-00001") == 1


# --- drops are visible ------------------------------------------------------------------------


@pytest.fixture
def headless_page(browser: Any, site: Site) -> Iterator[Callable[..., Any]]:
    """Chromium's own user agent (HeadlessChrome), as Playwright has it by default."""
    assert site.core.bridge.flush(10)
    site.graph.clear()
    site.log.reset()
    yield from chromium.contexts(browser)


def test_a_headless_browser_is_ignored_and_the_inspector_says_why(
    site: Site, headless_page: Any, browser: Any
) -> None:
    page = headless_page()
    page.goto(site.url + "/")
    _ready(page)
    pv = page.evaluate("capiBridgeConfig.pv")
    _, status, reply = site.log.answer_for(pv)
    assert status == 202 and reply["ignored"] == [{"field": "events[0]", "reason": "bot"}]
    assert page.evaluate("window.__fbqBlocked.length") == 1  # the pixel drops it too
    assert pv not in site.delivered_ids()
    inspector = browser.new_page()
    try:
        inspector.goto(site.url + "/capi-bridge/inspector")
        row = inspector.wait_for_selector(
            "#dropped tr[data-reason='bot'][data-event-name='PageView']"
        )
        text = row.inner_text()
        assert "headless browser" in text and "desktop user agent" in text
        assert "headlesschrome" in text
        diagnostics = json.loads(inspector.evaluate(
            "fetch('/capi-bridge/inspector/diagnostics').then(r => r.text())"
        ))
        [page_view] = [e for e in diagnostics["events"] if e["event_name"] == "PageView"]
        assert page_view["dedup"]["not_mirrored"] >= 1 and page_view["dedup"]["coverage"] < 1
    finally:
        inspector.close()


def test_a_page_cached_with_an_older_boot_script_still_tracks(site: Site, new_page: Any) -> None:
    """During a release, a full-page cache still serves HTML whose inline boot script predates
    the fbq hook (boot-before-hook.min.js: the one capi-bridge shipped before); the new
    capi-bridge.js reaches the pixel through fbq itself then, and mirrors each event once."""
    from capi_bridge.snippet import _boot

    old = (Path(__file__).parent / "boot-before-hook.min.js").read_text().strip()
    page = new_page()

    def serve_old(route: Any) -> None:
        reply = route.fetch()
        route.fulfill(response=reply, body=reply.text().replace(_boot(), old))

    page.route(site.url + "/", serve_old)
    page.goto(site.url + "/")
    _ready(page)
    assert old in page.content() and _boot() not in page.content()
    tracked = page.evaluate("capiBridge.track('Contact')")
    assert pixel_sent(page, "Contact")[0]["eventID"] == tracked
    assert site.server_copy(tracked)["event_name"] == "Contact"
    assert site.log.posted_ids().count(tracked) == 1
