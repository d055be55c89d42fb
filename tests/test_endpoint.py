"""The mirror endpoint's decisions: accepted events (enriched, not stored: the endpoint is a
function of the request), ignored events and why, every 4xx reason, tokens, consent, rate limit,
the script route, and property-based fuzzing (no 5xx, no event accepted without a valid token).
What settle() does with a decision (the outbox, 400 with Meta's reasons, 503) is in
test_mirror.py."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from helpers.logs import ErrorRecords
from hypothesis import given, settings
from hypothesis import strategies as st

from capi_bridge.browser_payload import _EVENT_KEYS as EVENT_KEYS
from capi_bridge.browser_payload import HOLD_ID, MAX_BODY_BYTES
from capi_bridge.consent import ConsentPolicy
from capi_bridge.endpoint import BrowserEndpoint
from capi_bridge.identity import held_fbp
from capi_bridge.mirror import EndpointResult
from capi_bridge.ratelimit import RateLimiter
from capi_bridge.request import RequestView, Response
from capi_bridge.settings import Settings
from capi_bridge.signing import PageSigner
from capi_bridge.snippet import script_bytes, script_version

ROOT = Path(__file__).resolve().parents[1]
HOST = "shop.example.com"
NOW = 1_800_000_000.0
PV = "0f8fad5b-d9cb-469f-a165-70867728950e"
FBP = "fb.1.1596403881668.1116446470"
UA = "Mozilla/5.0 (X11; Linux x86_64)"
HEADLESS = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/156.0 Safari/537.36"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


SETTINGS = Settings(
    pixel_id="111",
    access_token="t",
    secret_key="endpoint-test-secret-key-0123456789",
    custom_events=("NewsletterOpen",),
    allowed_hosts=(".example.com",),
    trusted_proxies=1,
    rate_limit=600,
)
#: A site with a consent banner: events wait for consent.
REQUIRED = dataclasses.replace(SETTINGS, consent="required")


def base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while number:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
    return out


#: A hold id as capi-bridge.js makes it: its tab session's first page time (ms, base 36), a UUID.
STARTED_MS = int(NOW * 1000) - 60_000
HOLD = f"{base36(STARTED_MS)}-5b0d6c3e-7777-4222-8333-944444444444"


class Env:
    def __init__(self, settings: Settings = SETTINGS, **overrides: Any) -> None:
        self.clock = Clock()
        self.signer = PageSigner.from_settings(settings, clock=self.clock)
        overrides.setdefault("rate_limiter", RateLimiter(600, clock=self.clock))
        self.endpoint = BrowserEndpoint(settings, signer=self.signer, clock=self.clock, **overrides)

    def token(self, pv: str | None = PV, host: str = HOST) -> str:
        return self.signer.issue(host=host, page_view_id=pv)

    def call(
        self,
        body: bytes | Mapping[str, Any] = b"",
        *,
        method: str = "POST",
        headers: Mapping[str, str | None] | None = None,
        query: str = "",
        path: str = SETTINGS.endpoint_path,
        peer: str = "10.0.0.1",
        **decide: Any,
    ) -> EndpointResult:
        raw = json.dumps(body).encode() if isinstance(body, Mapping) else body
        base: dict[str, str | None] = {
            "Content-Type": "text/plain;charset=UTF-8",
            "Origin": f"https://{HOST}",
            "User-Agent": UA,
            "Cookie": f"_fbp={FBP}",
            "X-Forwarded-For": "2001:4860:4860::8888",
            "X-Forwarded-Proto": "https",
        }
        base.update(headers or {})
        request = RequestView.build(
            method,
            "http",
            HOST,
            path,
            query,
            {k: v for k, v in base.items() if v is not None},
            peer,
        )
        return self.endpoint.handle(request, raw, **decide)

    def events(self, *events: Mapping[str, Any], **extra: Any) -> EndpointResult:
        return self.call(
            {"token": self.token(), "sent_at": NOW * 1000, "events": list(events), **extra}
        )


def event(
    name: str = "Lead", event_id: str = "8c1a9b52-4f7e-4e1a-9a53-0d5c1a2b3c4d", **kw: Any
) -> dict[str, Any]:
    return {
        "event_name": name,
        "event_id": event_id,
        "event_time": int(NOW) - 5,
        "event_source_url": f"https://{HOST}/product/1?fbclid=AbC_1",
        "referrer_url": "https://www.facebook.com/",
        **kw,
    }


def error_of(result: EndpointResult | Response) -> dict[str, Any]:
    reply = result.response if isinstance(result, EndpointResult) else result
    data: dict[str, Any] = json.loads(reply.body)["error"]
    return data


def answer(result: EndpointResult) -> tuple[int, Any]:
    return result.response.status, json.loads(result.response.body or b"null")


def set_cookie_names(result: EndpointResult) -> list[str]:
    return [v.split("=")[0] for k, v in result.response.headers if k == "Set-Cookie"]


def set_cookies(result: EndpointResult) -> dict[str, str]:
    return {
        v.split("=")[0]: v.split("=", 1)[1].split(";")[0]
        for k, v in result.response.headers
        if k == "Set-Cookie"
    }


@pytest.fixture
def env() -> Env:
    return Env()


# --- accepted ---------------------------------------------------------------------------------


def test_events_are_enriched_and_returned_not_stored(env: Env) -> None:
    purchase = event(
        "Purchase", custom_data={"value": 12.5, "currency": "EUR", "content_ids": ["a"]}
    )
    result = env.events(event("PageView", PV), purchase, px=1)
    assert answer(result) == (202, {"accepted": 2})
    assert result.batch is not None and result.batch.hold is None
    assert result.batch.pixel_id is None and result.batch.test_event_code is None
    assert result.batch.origin.channel == "browser" and result.batch.origin.pixel_loaded is True
    assert result.choice is None and result.dropped == ()
    page_view, stored = result.events
    assert page_view["event_id"] == PV
    assert stored == {
        "event_name": "Purchase",
        "event_id": purchase["event_id"],
        "event_time": int(NOW) - 5,
        "action_source": "website",
        "event_source_url": f"https://{HOST}/product/1?fbclid=AbC_1",
        "referrer_url": "https://www.facebook.com/",
        "custom_data": {"value": 12.5, "currency": "EUR", "content_ids": ["a"]},
        "user_data": {
            "client_ip_address": "2001:4860:4860::8888",
            "client_user_agent": UA,
            "fbp": FBP,
            # no _fbc cookie: built from the page's fbclid, dated when the page was served
            "fbc": f"fb.1.{int(NOW * 1000)}.AbC_1",
        },
    }


def test_the_test_code_goes_with_the_events(env: Env) -> None:
    result = env.call({"token": env.token(), "events": [event()]}, test_code="TEST42")
    assert result.batch is not None and result.batch.test_event_code == "TEST42"


def test_a_click_id_of_the_pages_referrer_counts_as_the_pixel_reads_it(env: Env) -> None:
    """Landing page, then a page reached from it: the pixel finds fbclid in the referrer."""
    second = event(
        event_source_url=f"https://{HOST}/cart", referrer_url=f"https://{HOST}/p?fbclid=Zz9"
    )
    [stored] = env.events(second).events
    assert stored["user_data"]["fbc"] == f"fb.1.{int(NOW * 1000)}.Zz9"
    cookie = {"Cookie": f"_fbp={FBP}; _fbc=fb.1.1700000000000.Zz9"}  # the same click: kept
    [kept] = env.call({"token": env.token(), "events": [second]}, headers=cookie).events
    assert kept["user_data"]["fbc"] == "fb.1.1700000000000.Zz9"


def test_custom_events_from_settings_and_application_json(env: Env) -> None:
    result = env.call(
        {"token": env.token(), "events": [event("NewsletterOpen")]},
        headers={"Content-Type": "application/json"},
    )
    assert result.response.status == 202 and result.events[0]["event_name"] == "NewsletterOpen"


def test_event_time_is_corrected_for_the_browser_clock(env: Env) -> None:
    # The browser clock is 10 minutes fast; the event happened 30 s before it was sent.
    sent_at = (NOW + 600) * 1000
    assert env.events(event(event_time=int(NOW + 600 - 30)), sent_at=sent_at).events[0][
        "event_time"
    ] == int(NOW) - 30
    old = env.call({"token": env.token(), "events": [event(event_time=int(NOW) - 86400)]})
    assert old.events[0]["event_time"] == int(NOW)  # implausible: receive time
    future = env.call({"token": env.token(), "events": [event(event_time=int(NOW) + 3600)]})
    assert future.events[0]["event_time"] == int(NOW)
    bare_event = {"event_name": "Lead", "event_id": "abcdefgh"}
    bare = env.call({"token": env.token(), "events": [bare_event]})
    assert bare.events[0]["event_time"] == int(NOW)


def test_foreign_event_source_url_falls_back_to_the_referer(env: Env) -> None:
    result = env.call(
        {"token": env.token(), "events": [event(event_source_url="https://evil.example.net/")]},
        headers={"Referer": f"https://{HOST}/cart"},
    )
    assert result.events[0]["event_source_url"] == f"https://{HOST}/cart"


# --- ignored, and why -------------------------------------------------------------------------


def test_crawlers_and_headless_browsers_are_ignored_and_counted() -> None:
    env = Env()
    body = {"token": env.token(), "events": [event("PageView", PV), event()]}
    headless = env.call(body, headers={"User-Agent": HEADLESS})
    assert answer(headless) == (
        202,
        {
            "accepted": 0,
            "ignored": [
                {"field": "events[0]", "reason": "bot"},
                {"field": "events[1]", "reason": "bot"},
            ],
        },
    )
    assert headless.batch is None
    assert [(d.event_name, d.reason, d.detail) for d in headless.dropped] == [
        ("PageView", "bot", "headlesschrome"),
        ("Lead", "bot", "headlesschrome"),
    ]
    googlebot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    crawler = env.call(body, headers={"User-Agent": googlebot})
    assert {(d.reason, d.detail) for d in crawler.dropped} == {("crawler", "googlebot")}
    # a bad token is refused as for anyone: nothing is counted
    forged = env.call({**body, "token": "forged"}, headers={"User-Agent": HEADLESS})
    assert forged.response.status == 403 and forged.dropped == ()


def test_foreign_pixels_unknown_names_and_automatic_events_are_ignored(env: Env) -> None:
    result = env.events(
        event("Purchase", "11111111-2222-4333-8444-555555555555", pixel_id="999"),
        event("AddToCart", "21111111-2222-4333-8444-555555555555", pixel_id="111"),
        event("SomethingElse", "31111111-2222-4333-8444-555555555555"),
        event("SubscribedButtonClick", "41111111-2222-4333-8444-555555555555"),
    )
    assert answer(result) == (
        202,
        {
            "accepted": 1,
            "ignored": [
                {"field": "events[0]", "reason": "unknown_pixel"},
                {"field": "events[2]", "reason": "unknown_event"},
                {"field": "events[3]", "reason": "automatic"},
            ],
        },
    )
    [kept] = result.events
    assert kept["event_name"] == "AddToCart" and "pixel_id" not in kept
    assert result.batch is not None and result.batch.positions == (1,)
    # trackSingle to the site's only pixel: the same as every pixel
    assert result.batch.pixel_id is None
    assert [(d.event_name, d.reason, d.detail) for d in result.dropped] == [
        ("Purchase", "unknown_pixel", "999"),
        ("SomethingElse", "unknown_event", ""),
        ("SubscribedButtonClick", "automatic", ""),
    ]


def test_track_single_targets_one_of_several_pixels() -> None:
    env = Env(dataclasses.replace(SETTINGS, pixel_id="111,222"))
    result = env.events(event(pixel_id="222"))
    assert result.batch is not None and result.batch.pixel_id == "222"
    mixed = env.events(event(pixel_id="222"), event("Contact"))
    assert (mixed.response.status, error_of(mixed)["code"]) == (400, "mixed_pixels")


def test_a_page_whose_fbq_could_not_be_hooked_says_why(env: Env) -> None:
    result = env.events(event("PageView", PV), hook=1)
    assert answer(result)[0] == 202 and len(result.events) == 1
    [drop] = result.dropped
    assert (drop.event_name, drop.reason) == ("(fbq calls)", "not_mirrored")
    assert drop.detail.startswith("fbevents.js ran before capi-bridge's snippet")
    assert env.events(event("PageView", PV), hook=3).response.status == 400


def test_shape_refusals_count_the_posts_events(env: Env) -> None:
    result = env.events(event("Lead", custom_data={"value": "ten"}), event("PageView", PV))
    assert (result.response.status, error_of(result)["field"]) == (
        400,
        "events[0].custom_data.value",
    )
    assert [(d.event_name, d.reason) for d in result.dropped] == [
        ("Lead", "refused"),
        ("PageView", "refused"),
    ]
    assert result.dropped[0].detail == "events[0].custom_data.value: must be a number"


# --- tokens -----------------------------------------------------------------------------------


def test_forged_expired_replayed_and_missing_tokens_are_refused(env: Env) -> None:
    good = env.token()
    forged = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    other_site = env.token(host="other.example.org")
    cases = {
        "token_forged": forged,
        "token_wrong_site": other_site,
    }
    for code, token in cases.items():
        result = env.call({"token": token, "events": [event()]})
        assert (result.response.status, error_of(result)["code"], error_of(result)["field"]) == (
            403,
            code,
            "token",
        )
        assert result.events == ()
    assert error_of(env.call({"events": [event()]}))["code"] == "token_forged"
    env.clock.now = NOW + SETTINGS.token_max_age + 1
    result = env.call({"token": good, "events": [event()]})
    assert (result.response.status, error_of(result)["code"]) == (403, "token_expired")
    assert result.events == ()


def test_page_view_needs_the_id_its_token_binds(env: Env) -> None:
    result = env.events(event("PageView", "11111111-2222-4333-8444-555555555555"))
    assert (result.response.status, error_of(result)["code"]) == (403, "page_view_not_bound")
    assert error_of(result)["field"] == "events[0].event_id" and result.events == ()
    # a replayed token cannot carry more PageViews; the bound one posted twice is harmless
    assert env.events(event("PageView", PV)).response.status == 202
    assert env.events(event("PageView", PV)).response.status == 202


def test_refresh_binds_a_browser_minted_page_view(env: Env) -> None:
    old = env.token()
    env.clock.now = NOW + 5 * 3600  # a cached page, hours old (within token_refresh_window)
    fresh_pv = "5b0d6c3e-1111-4222-8333-944444444444"
    result = env.call(method="GET", query=f"token={old}&pv={fresh_pv}", headers={"Origin": None})
    reply = result.response
    assert reply.status == 200 and reply.header("cache-control") == "no-store"
    data = json.loads(reply.body)
    assert data["page_view_id"] == fresh_pv and data["ttl"] == 7200
    assert env.signer.verify(data["token"], host=HOST).page_view_id == fresh_pv
    posted = env.call({"token": data["token"], "events": [event("PageView", fresh_pv)]})
    assert posted.response.status == 202 and set_cookie_names(posted) == []
    # the existing _fbp is refreshed server-side (Safari's cap), nothing is minted
    refreshed = env.call(method="GET", query=f"token={data['token']}")
    assert json.loads(refreshed.response.body)["page_view_id"] == fresh_pv
    assert str(refreshed.response.header("Set-Cookie")).startswith(f"_fbp={FBP};")
    no_cookie = env.call(method="GET", query=f"token={data['token']}", headers={"Cookie": None})
    assert set_cookie_names(no_cookie) == []


def test_refresh_refusals(env: Env) -> None:
    token = env.token()
    bad_pv = env.call(method="GET", query=f"token={token}&pv=no%20id")
    assert (bad_pv.response.status, error_of(bad_pv)["field"]) == (400, "pv")
    assert env.call(method="GET").response.status == 403
    cross = env.call(method="GET", query=f"token={token}", headers={"Sec-Fetch-Site": "cross-site"})
    assert error_of(cross)["code"] == "origin_forbidden"
    env.clock.now = NOW + 31 * 86400
    assert error_of(env.call(method="GET", query=f"token={token}"))["code"] == "token_expired"


# --- consent ----------------------------------------------------------------------------------


def test_consent_messages_set_and_clear_the_cookie(env: Env) -> None:
    page_token = env.token()
    granted = env.call({"token": page_token, "consent": True})
    assert granted.response.status == 204 and granted.response.body == b""
    consent_cookie = next(v for k, v in granted.response.headers if "capib_consent" in v)
    assert consent_cookie.startswith(
        "capib_consent=1; Max-Age=15552000; Path=/; Domain=example.com"
    )
    assert consent_cookie.endswith("Secure; HttpOnly")
    assert granted.choice is None  # no hold id: nothing held to release
    env.clock.now = NOW + 3 * 3600  # page token expired; consent still accepted from the page
    revoked = env.call({"token": page_token, "consent": False})
    assert revoked.response.status == 204
    assert set_cookie_names(revoked)[:4] == ["capib_consent", "_fbp", "_fbc", "_capib_pv"]
    assert {"_capib_ev", "__Host-capib_ev", "_capib_test"} <= set(set_cookie_names(revoked))
    assert all("Max-Age=0" in v for k, v in revoked.response.headers if k == "Set-Cookie")
    assert env.call({"token": env.token(), "consent": "yes"}).response.status == 400
    assert env.call({"token": "forged", "consent": True}).response.status == 403


def test_without_consent_events_are_held_with_the_fbp_consent_will_set() -> None:
    env = Env(REQUIRED)
    no_cookie = {"Cookie": None}
    result = env.call(
        {"token": env.token(), "events": [event("PageView", PV), event()], "hold": HOLD},
        headers=no_cookie,
    )
    assert answer(result) == (202, {"accepted": 2})
    assert result.batch is not None and result.batch.hold == HOLD
    assert set_cookie_names(result) == []
    # no cookie may be set yet: the events carry the fbp the consent answer will set, and a
    # click dated from the tab session's first page
    fbp = held_fbp(SETTINGS.secret_key or "", HOLD, 1, STARTED_MS)
    assert {e["user_data"]["fbp"] for e in result.events} == {fbp}
    assert {e["user_data"]["fbc"] for e in result.events} == {f"fb.1.{STARTED_MS}.AbC_1"}
    refreshed = env.call(method="GET", query=f"token={env.token()}")  # _fbp is not re-set
    assert refreshed.response.status == 200 and set_cookie_names(refreshed) == []
    # the consent answer sets those very values, before the browser unlocks the pixel
    granted = env.call(
        {"token": env.token(), "consent": True, "hold": HOLD},
        headers={**no_cookie, "Referer": f"https://{HOST}/product/1?fbclid=AbC_1"},
    )
    assert set_cookies(granted) == {
        "capib_consent": "1",
        "_fbp": fbp,
        "_fbc": f"fb.1.{STARTED_MS}.AbC_1",
    }
    assert granted.choice is not None and (granted.choice.hold, granted.choice.action) == (
        HOLD,
        "release",
    )
    # on a later page, the click id is in the page's referrer, which the browser sends along
    later = env.call(
        {
            "token": env.token(),
            "consent": True,
            "hold": HOLD,
            "referrer_url": f"https://{HOST}/product/1?fbclid=AbC_1",
        },
        headers={**no_cookie, "Referer": f"https://{HOST}/cart"},
    )
    assert set_cookies(later)["_fbc"] == f"fb.1.{STARTED_MS}.AbC_1"


def test_a_hold_id_without_a_plausible_time_gets_no_derived_fbp() -> None:
    env = Env(REQUIRED)
    for hold in ("5b0d6c3e-7777-4222-8333-944444444444", "zzzzzzzzzzz-1234567890abcdef"):
        result = env.call(
            {"token": env.token(), "events": [event()], "hold": hold}, headers={"Cookie": None}
        )
        assert result.response.status == 202 and "fbp" not in result.events[0]["user_data"]


@pytest.mark.parametrize(
    ("hold", "code"),
    [
        (None, "hold_missing"),
        ("too-short", "hold_invalid"),
        ("x" * 65, "hold_invalid"),
        ("a tab session id with spaces", "hold_invalid"),
        (12345678901234567890, "hold_invalid"),
    ],
)
def test_held_events_need_a_well_formed_hold_id(hold: Any, code: str) -> None:
    env = Env(REQUIRED)
    extra = {} if hold is None else {"hold": hold}
    result = env.events(event(), **extra)
    assert (result.response.status, error_of(result)["code"], error_of(result)["field"]) == (
        400,
        code,
        "hold",
    )
    assert "16 to 64 characters" in error_of(result)["message"] and result.events == ()


def test_with_the_consent_cookie_events_are_not_held() -> None:
    env = Env(REQUIRED)
    consented = {"Cookie": f"_fbp={FBP}; capib_consent=1"}
    result = env.call(
        {"token": env.token(), "events": [event()], "hold": "ignored"}, headers=consented
    )
    assert result.batch is not None and result.batch.hold is None
    named = Env(dataclasses.replace(REQUIRED, consent_cookie="cmp_marketing"))
    holds = [
        named.events(event(), hold=HOLD),  # capib_consent is not the cookie this site uses...
        named.call({"token": named.token(), "events": [event()]}, headers=consented),
        named.call(
            {"token": named.token(), "events": [event()]}, headers={"Cookie": "cmp_marketing=1"}
        ),
    ]
    assert [r.batch.hold if r.batch else "refused" for r in holds] == [HOLD, "refused", None]
    # the caller's decision wins over the policy's (PageBridge passes the one its pages use)
    assert Env(REQUIRED).call(
        {"token": named.token(), "events": [event()]}, consent=True
    ).batch.hold is None  # type: ignore[union-attr]


def test_an_apps_consent_check_decides_alone() -> None:
    def cmp_allows_marketing(request: RequestView) -> bool:
        return "marketing" in request.cookies.get("cmp", "").split(",")

    policy = ConsentPolicy.from_settings(SETTINGS, cmp_allows_marketing)  # consent "granted"
    env = Env(SETTINGS, consent=policy)
    results = [
        env.events(event(), hold=HOLD),
        env.call(
            {"token": env.token(), "events": [event()], "hold": HOLD},
            headers={"Cookie": "capib_consent=1; cmp=analytics"},
        ),
        env.call(
            {"token": env.token(), "events": [event()]},
            headers={"Cookie": "cmp=analytics,marketing"},
        ),
    ]
    assert [r.batch.hold for r in results if r.batch] == [HOLD, HOLD, None]
    refreshed = env.call(method="GET", query=f"token={env.token()}")
    assert set_cookie_names(refreshed) == []
    # the visitor saying yes to capi-bridge does not override the app's CMP: nothing released
    said_yes = env.call({"token": env.token(), "consent": True, "hold": HOLD})
    assert said_yes.choice is None and set_cookie_names(said_yes) == ["capib_consent"]


def test_consent_messages_release_or_forget_the_tabs_held_events() -> None:
    env = Env(dataclasses.replace(REQUIRED, consent_cookie="cmp_marketing"))
    granted = env.call({"token": env.token(), "consent": True, "hold": HOLD})
    assert granted.response.status == 204 and granted.choice is not None
    assert (granted.choice.hold, granted.choice.action) == (HOLD, "release")
    assert set_cookie_names(granted) == ["cmp_marketing", "_fbp"]  # the existing one, re-set
    refused = env.call({"token": env.token(), "consent": False, "hold": HOLD})
    assert refused.choice is not None and refused.choice.action == "forget"
    assert set_cookie_names(refused)[:4] == ["cmp_marketing", "_fbp", "_fbc", "_capib_pv"]
    assert env.call({"token": env.token(), "consent": True}).choice is None  # nothing held
    bad = env.call({"token": env.token(), "consent": True, "hold": "../../etc"})
    assert (bad.response.status, error_of(bad)["code"]) == (400, "hold_invalid")
    forged = env.call({"token": "forged", "consent": True, "hold": HOLD})
    assert forged.response.status == 403 and forged.choice is None


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed"),
        (b"\xff\xfe", 400, "malformed"),
        (b"[1, 2]", 400, "malformed"),
        (b'{"token": "x", "events": [], "extra": 1}', 400, "unknown_field"),
        (b'{"value": NaN}', 400, "malformed"),
        (b"[" * 50_000 + b"]" * 10_000, 400, "malformed"),
        (b"9" * 5000, 400, "malformed"),
    ],
)
def test_malformed_bodies(env: Env, body: bytes, status: int, code: str) -> None:
    result = env.call(body)
    assert (result.response.status, error_of(result)["code"]) == (status, code)


@pytest.mark.parametrize(
    ("events", "status", "code", "field"),
    [
        ([], 400, "malformed", "events"),
        ("x", 400, "malformed", "events"),
        ([event()] * 21, 413, "too_many_events", "events"),
        ([1], 400, "malformed", "events[0]"),
        ([event(extra=1)], 400, "unknown_field", "events[0].extra"),
        ([event("x" * 51)], 400, "invalid_field", "events[0].event_name"),
        ([event(event_name=7)], 400, "invalid_field", "events[0].event_name"),
        ([event("Lead\n")], 400, "invalid_field", "events[0].event_name"),
        ([event(event_id="")], 400, "invalid_field", "events[0].event_id"),
        ([event(event_id="-leading")], 400, "invalid_field", "events[0].event_id"),
        ([event(event_id="x" * 65)], 400, "invalid_field", "events[0].event_id"),
        ([event(event_id="bad id!!")], 400, "invalid_field", "events[0].event_id"),
        ([event(pixel_id="12a")], 400, "invalid_field", "events[0].pixel_id"),
        ([event(pixel_id=111)], 400, "invalid_field", "events[0].pixel_id"),
        ([event(custom_data=[1])], 400, "invalid_field", "events[0].custom_data"),
        (
            [event(custom_data={"value": "ten"})],
            400,
            "invalid_field",
            "events[0].custom_data.value",
        ),
        ([event(custom_data={"value": True})], 400, "invalid_field", "events[0].custom_data.value"),
        (
            [event(custom_data={"num_items": -1})],
            400,
            "invalid_field",
            "events[0].custom_data.num_items",
        ),
        (
            [event(custom_data={"currency": 1})],
            400,
            "invalid_field",
            "events[0].custom_data.currency",
        ),
        (
            [event(custom_data={"contents": [{"quantity": 1}]})],
            400,
            "invalid_field",
            "events[0].custom_data.contents[0].id",
        ),
        (
            [event(custom_data={"nested": {"a": 1}})],
            400,
            "invalid_field",
            "events[0].custom_data.nested",
        ),
        ([event(custom_data={"s": "x" * 1001})], 400, "invalid_field", "events[0].custom_data.s"),
        ([event(custom_data={"bad key": 1})], 400, "invalid_field", "events[0].custom_data"),
        (
            [event(custom_data={f"k{i}": i for i in range(51)})],
            400,
            "invalid_field",
            "events[0].custom_data",
        ),
        ([event(event_source_url=5)], 400, "invalid_field", "events[0].event_source_url"),
    ],
)
def test_bad_events_are_refused_and_nothing_is_accepted(
    env: Env, events: Any, status: int, code: str, field: str
) -> None:
    result = env.call({"token": env.token(), "events": events})
    assert (result.response.status, error_of(result)["code"], error_of(result)["field"]) == (
        status,
        code,
        field,
    )
    assert result.events == ()


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        ({"Content-Type": None}, 415, "unsupported_media_type"),
        ({"Origin": "https://evil.example.net"}, 403, "origin_forbidden"),
        ({"Origin": "https://shop.example.com.evil.net"}, 403, "origin_forbidden"),
        ({"Origin": None}, 403, "origin_missing"),
        ({"Origin": "null"}, 403, "origin_missing"),
        ({"Origin": "javascript:alert(1)"}, 403, "origin_forbidden"),
        ({"Content-Length": str(MAX_BODY_BYTES + 1)}, 413, "body_too_large"),
    ],
)
def test_request_level_refusals(env: Env, headers: dict[str, Any], status: int, code: str) -> None:
    result = env.call({"token": env.token(), "events": [event()]}, headers=headers)
    assert (result.response.status, error_of(result)["code"]) == (status, code)
    assert result.events == () and result.dropped == ()


def test_origin_checks_accept_the_site(env: Env) -> None:
    accepted: list[dict[str, str | None]] = [
        {"Origin": "https://www.example.com"},  # allowed_hosts ".example.com"
        {"Origin": "https://example.com"},
        {"Origin": None, "Referer": f"https://{HOST}/page"},
        {"Origin": "null", "Referer": f"https://{HOST}/page"},
    ]
    for headers in accepted:
        result = env.call({"token": env.token(), "events": [event()]}, headers=headers)
        assert result.response.status == 202


def test_body_too_large(env: Env) -> None:
    result = env.call(b"x" * (MAX_BODY_BYTES + 1), headers={"Content-Length": None})
    assert (result.response.status, error_of(result)["code"]) == (413, "body_too_large")


def test_methods_and_paths(env: Env) -> None:
    result = env.call(method="PUT")
    assert (result.response.status, result.response.header("Allow")) == (405, "GET, POST")
    assert env.call(path="/elsewhere").response.status == 404
    assert env.endpoint.handles(SETTINGS.endpoint_path) and env.endpoint.handles(
        SETTINGS.script_path
    )
    assert not env.endpoint.handles("/")


def test_rate_limit_per_client() -> None:
    clock = Clock()
    env = Env(rate_limiter=RateLimiter(3, clock=clock))
    assert [env.call(method="GET").response.status for _ in range(3)] == [403, 403, 403]
    limited = env.call(method="GET")
    assert (
        limited.response.status,
        limited.response.header("Retry-After"),
        error_of(limited)["code"],
    ) == (429, "20", "rate_limited")
    other = env.call(method="GET", headers={"X-Forwarded-For": "8.8.4.4"})
    assert other.response.status == 403  # another client has its own bucket
    clock.now += 20
    assert env.call(method="GET").response.status == 403


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(1, max_clients=100, clock=lambda: 0.0)
    for i in range(1000):
        limiter.wait_time(f"client-{i}")
    assert len(limiter._buckets) == 100
    assert limiter.wait_time("client-999") > 0  # recent clients are remembered


# --- the script route -------------------------------------------------------------------------


def test_script_route(env: Env) -> None:
    def get(**kw: Any) -> Response:
        return env.call(method=kw.pop("method", "GET"), path=SETTINGS.script_path, **kw).response

    versioned = get(query=f"v={script_version()}")
    assert versioned.status == 200 and versioned.body == script_bytes()
    assert versioned.header("Content-Type") == "text/javascript; charset=utf-8"
    assert versioned.header("Cache-Control") == "public, max-age=31536000, immutable"
    assert versioned.header("X-Content-Type-Options") == "nosniff"
    plain = get()
    assert plain.header("Cache-Control") == "public, max-age=300"
    etag = str(plain.header("ETag"))
    cached = get(headers={"If-None-Match": etag})
    assert cached.status == 304 and cached.body == b""
    head = get(method="HEAD")
    assert head.body == b"" and head.header("Content-Length") == str(len(script_bytes()))
    assert get(method="POST").status == 405


@pytest.mark.parametrize("name", ["capi-bridge", "boot"])
def test_shipped_build_is_not_stale(name: str) -> None:
    recorded = json.loads((ROOT / "js" / "built.json").read_text())[name]
    source = (ROOT / "js" / f"{name}.js").read_bytes()
    build = (ROOT / "capi_bridge" / "static" / f"{name}.min.js").read_bytes()
    fix = "the shipped build is stale: run `npm ci && npm run build` in js/"
    assert hashlib.sha256(source).hexdigest() == recorded["source"], fix
    assert hashlib.sha256(build).hexdigest() == recorded["build"], fix


@pytest.mark.parametrize(("name", "budget"), [("capi-bridge", 1536), ("boot", 768)])
def test_shipped_script_size_budgets(name: str, budget: int) -> None:
    """capi-bridge.js (what a browser downloads) and the boot script (what every page inlines)
    gzipped: 1.5 KB and 768 B at most, measured on the files with the gzip tool's own header
    (which carries the file name), so the figure holds however one measures."""
    path = ROOT / "capi_bridge" / "static" / f"{name}.min.js"
    data = path.read_bytes()
    header = len(path.name) + 1  # gzip -9c stores the name, NUL-terminated
    assert len(gzip.compress(data, compresslevel=9)) + header <= budget
    if name == "capi-bridge":
        assert data == script_bytes()  # served as built
    else:
        from capi_bridge.snippet import _boot

        assert _boot() == data.decode().strip()  # inlined as built


# --- fuzzing ----------------------------------------------------------------------------------


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
event_keys = st.sampled_from([*sorted(EVENT_KEYS), "x"])
custom_values = st.one_of(
    json_values,
    st.sampled_from([1, 9.99, "19.90", "EUR", "usd", ["a", 1], [{"id": "a", "quantity": 2}], True]),
)
custom_data = st.dictionaries(
    st.sampled_from(["value", "currency", "contents", "content_ids", "num_items", "status", "k"])
    | st.text(max_size=8),
    custom_values,
    max_size=5,
)


def mostly(draw: st.DrawFn, valid: Any, fuzz: st.SearchStrategy[Any]) -> Any:
    """The valid value 9 times in 10, so fuzzing reaches the checks behind the first ones."""
    return valid if draw(st.integers(0, 9)) else draw(fuzz)


@st.composite
def fuzz_event(draw: st.DrawFn) -> dict[str, Any]:
    names = st.sampled_from(["Lead", "Purchase", "PageView", "ViewContent", "NewsletterOpen", "X"])
    ids = st.sampled_from([PV, "8c1a9b52-4f7e-4e1a-9a53-0d5c1a2b3c4d", "abcdefgh", "a b"])
    data: dict[str, Any] = {
        "event_name": draw(names),
        "event_id": draw(ids),
        "event_time": mostly(draw, int(NOW) - 5, json_values),
        "event_source_url": mostly(draw, f"https://{HOST}/p?fbclid=Ab_1", json_values),
    }
    if draw(st.booleans()):
        data["custom_data"] = mostly(draw, {"value": 5, "currency": "EUR"}, custom_data)
    if not draw(st.integers(0, 3)):
        data["pixel_id"] = mostly(draw, "111", st.sampled_from(["999", "x"]) | json_values)
    if not draw(st.integers(0, 3)):
        data.update(draw(st.dictionaries(event_keys, json_values, max_size=2)))
    return data


TOKENS = ["valid", "valid", "valid", "forged", "expired", "other_site", "missing", "junk"]
text_values = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40)


@st.composite
def fuzz_requests(draw: st.DrawFn) -> dict[str, Any]:
    body_kind = draw(st.sampled_from(["bytes", "json", "shaped", "shaped", "shaped", "shaped"]))
    if body_kind == "bytes":
        body: Any = draw(st.binary(max_size=300))
    elif body_kind == "json":
        body = json.dumps(draw(json_values)).encode()
    else:
        body = {"token": draw(st.sampled_from(TOKENS))}
        if draw(st.integers(0, 5)):
            body["events"] = mostly(
                draw, draw(st.lists(fuzz_event(), min_size=1, max_size=3)), json_values
            )
        if not draw(st.integers(0, 4)):
            body["consent"] = mostly(draw, draw(st.booleans()), json_values)
        for key, valid in (
            ("sent_at", NOW * 1000),
            ("hold", HOLD),
            ("px", 1),
            ("hook", 1),
            ("referrer_url", f"https://{HOST}/?fbclid=x"),
        ):
            if draw(st.booleans()):
                body[key] = mostly(draw, valid, json_values)
    content_types = st.sampled_from(
        ["application/json", "text/html", "multipart/form-data; boundary=x", None]
    )
    headers = {
        "Content-Type": mostly(draw, "text/plain;charset=UTF-8", content_types | text_values),
        "Origin": mostly(
            draw,
            f"https://{HOST}",
            st.sampled_from(["https://evil.net", "null", None]) | text_values,
        ),
        "Content-Length": mostly(
            draw, None, st.sampled_from(["0", "-1", "abc", "99999999"]) | text_values
        ),
        "X-Forwarded-For": mostly(draw, "8.8.8.8", st.sampled_from(["junk", None]) | text_values),
        "Cookie": mostly(
            draw, f"_fbp={FBP}", st.sampled_from(["_fbc=fb.1.1.x", None]) | text_values
        ),
        "Referer": mostly(draw, None, st.just(f"https://{HOST}/?fbclid=x") | text_values),
        "User-Agent": mostly(draw, UA, st.sampled_from([None, HEADLESS]) | text_values),
    }
    method = mostly(draw, "POST", st.sampled_from(["GET", "GET", "PUT", "HEAD", "OPTIONS"]))
    return {
        "required": draw(st.booleans()),  # a site that asks for consent
        "method": method,
        "body": body,
        "headers": headers,
        "query": mostly(
            draw, "token=valid", st.sampled_from(["", "pv=abc"]) | st.text(max_size=40)
        ),
    }


@settings(max_examples=400, deadline=None)
@given(fuzz_requests())
def test_fuzzed_requests_never_5xx_nor_accept_without_a_valid_token(req: dict[str, Any]) -> None:
    env = Env(REQUIRED if req["required"] else SETTINGS)
    tokens = {
        "valid": env.token(),
        "forged": env.token()[:-3] + "xyz",
        "expired": PageSigner.from_settings(SETTINGS, clock=lambda: NOW - 9000).issue(
            host=HOST, page_view_id=PV
        ),
        "other_site": env.token(host="evil.net"),
        "junk": "\x00<script>",
    }
    body = req["body"]
    token_kind = None
    granting = isinstance(body, dict) and body.get("consent") is True
    if isinstance(body, dict):
        token_kind = body.pop("token")
        if token_kind in tokens:
            body["token"] = tokens[token_kind]
        body = json.dumps(body).encode()
    query = req["query"].replace("token=valid", f"token={tokens['valid']}&pv={PV}")
    with ErrorRecords("capi_bridge") as errors:
        result = env.call(body, method=req["method"], headers=req["headers"], query=query)
    reply = result.response
    assert reply.status < 500
    assert errors.records == [], errors.messages
    if reply.status >= 400:
        assert set(json.loads(reply.body)["error"]) >= {"code", "message", "field"}
    if result.events or result.dropped:
        assert token_kind == "valid"
    if result.choice:  # a consent message is taken from a page whose token expired (a tab left
        assert token_kind in ("valid", "expired")  # open): endpoint.CHOICE_MAX_AGE
    if result.events:
        assert reply.status == 202
        assert json.loads(reply.body)["accepted"] == len(result.events)
    consented = "capib_consent=1" in str(req["headers"].get("Cookie"))
    if req["required"] and not consented:
        if result.batch is not None:
            assert result.batch.hold is not None and HOLD_ID.fullmatch(result.batch.hold)
        if not granting:  # no cookie is set (expiring one on withdrawal is fine)
            assert all("Max-Age=0" in v for k, v in reply.headers if k == "Set-Cookie")


def test_an_internal_error_is_a_400_and_logs_no_request_data(
    env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import capi_bridge.endpoint as module

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("jsmith@example.com")

    monkeypatch.setattr(module, "check_events", broken)
    with caplog.at_level(logging.DEBUG, logger="capi_bridge"):
        result = env.events(event())
    assert (result.response.status, error_of(result)["code"]) == (400, "unprocessable")
    assert "KeyError" in caplog.text and "jsmith" not in caplog.text
    assert result.events == ()
