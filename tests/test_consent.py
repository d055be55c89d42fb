"""The one consent rule the renderer, the endpoint and PageBridge share."""

from __future__ import annotations

import dataclasses

from capi_bridge.consent import ConsentPolicy
from capi_bridge.pages import PageBridge
from capi_bridge.request import RequestView
from capi_bridge.settings import Settings

SETTINGS = Settings(
    pixel_id="1", access_token="t", secret_key="consent-tests-secret-key-0123456789"
)


def request(cookie: str = "") -> RequestView:
    headers = {"Cookie": cookie} if cookie else {}
    return RequestView.build("GET", "https", "shop.example.com", "/", "", headers, "8.8.8.8")


def cmp(request: RequestView) -> bool:
    return request.cookies.get("cmp") == "all"


def test_the_rule() -> None:
    assert ConsentPolicy().allows(request()) and not ConsentPolicy().asks
    required = ConsentPolicy.from_settings(dataclasses.replace(SETTINGS, consent="required"))
    assert required.asks and not required.allows(request())
    assert required.allows(request("capib_consent=1"))
    assert not required.allows(request("capib_consent=0"))
    named = ConsentPolicy(required=True, cookie="cmp_marketing")
    assert not named.allows(request("capib_consent=1")) and named.allows(request("cmp_marketing=1"))
    app = ConsentPolicy.from_settings(SETTINGS, cmp)  # the app's check decides alone
    assert app.asks and not app.allows(request("capib_consent=1"))
    assert app.allows(request("cmp=all"))


def test_a_choice_counts_as_the_policy_says() -> None:
    assert ConsentPolicy(required=True).after_choice(request(), True)
    assert not ConsentPolicy(required=True).after_choice(request("capib_consent=1"), False)
    app = ConsentPolicy(check=cmp)
    assert not app.after_choice(request(), True)  # the visitor's yes does not override the CMP
    assert app.after_choice(request("cmp=all"), True)


def test_choice_cookies() -> None:
    policy = ConsentPolicy(required=True)
    [(_, granted)] = policy.choice_cookies(True, domain="example.com", secure=True)
    assert granted == (
        "capib_consent=1; Max-Age=15552000; Path=/; Domain=example.com; SameSite=Lax; Secure;"
        " HttpOnly"
    )
    withdrawn = [v for _, v in policy.choice_cookies(False, domain=None, secure=False)]
    names = ["capib_consent", "_fbp", "_fbc", "_capib_pv", "_capib_ev", "_capib_test"]
    assert [v.split("=")[0] for v in withdrawn] == names
    assert all("Max-Age=0" in v for v in withdrawn)


def test_withdrawal_clears_a_waiting_pixel_twin_and_the_test_code_everywhere() -> None:
    """Issue 13, item 9: withdrawing consent also deletes the pixel twin still waiting for a
    page (on https its __Host- cookie, and a plain copy on the parent domain) and the scoped
    test code, not only the identifiers."""
    policy = ConsentPolicy(required=True)
    withdrawn = [v for _, v in policy.choice_cookies(False, domain="example.com", secure=True)]
    deleted = {(v.split("=")[0], "Domain=example.com" in v) for v in withdrawn}
    assert {
        ("_capib_ev", False),
        ("_capib_ev", True),
        ("__Host-capib_ev", False),
        ("_capib_test", False),
    } <= deleted
    assert all("Max-Age=0" in v and v.endswith("Secure") for v in withdrawn)
    assert all("Domain" not in v for v in withdrawn if v.startswith("__Host-"))


def test_renderer_endpoint_and_pages_ask_one_policy(tmp_path: object) -> None:
    settings = dataclasses.replace(
        SETTINGS, consent="required", outbox_path=f"{tmp_path}/outbox.sqlite3"
    )
    core = PageBridge(settings, consent_check=cmp)
    try:
        assert core.renderer.policy is core.policy and core.endpoint.policy is core.policy
        assert core.consent(request("cmp=all")) and not core.consent(request("capib_consent=1"))
    finally:
        core.close(timeout=0)
