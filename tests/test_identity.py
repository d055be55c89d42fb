"""Identity from requests: client IP behind proxies, fbp/fbc cookies, cookie domain."""

from __future__ import annotations

import dataclasses
import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capi_bridge.cookies import cookie_domain
from capi_bridge.identity import (
    TrustedProxies,
    held_fbp,
    parse_fbc,
    parse_ip,
    resolve_identity,
    valid_fbp,
)
from capi_bridge.request import RequestView

NOW_MS = 1_800_000_000_000
CLICK = "IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk"


@dataclasses.dataclass(frozen=True)
class Conf:
    trusted_proxies: int | tuple[str, ...] = 0
    cookie_domain: str | None = None


def req(
    *,
    peer: str | None = "8.8.8.8",
    headers: dict[str, str] | None = None,
    host: str = "www.example.com",
    scheme: str = "https",
    query: str = "",
) -> RequestView:
    return RequestView.build("GET", scheme, host, "/landing", query, headers or {}, peer)


def ip(
    trusted: int | tuple[str, ...], *, header: str = "x-forwarded-for", **kw: object
) -> str | None:
    found = TrustedProxies(trusted, header=header).client_ip(req(**kw))  # type: ignore[arg-type]
    return None if found is None else str(found)


# --- client IP --------------------------------------------------------------------------------


def test_without_trusted_proxies_forwarding_headers_are_ignored() -> None:
    spoof = {"X-Forwarded-For": "1.2.3.4", "Forwarded": "for=1.2.3.4"}
    assert ip(0, peer="8.8.4.4", headers=spoof) == "8.8.4.4"


def test_one_trusted_hop_cannot_be_spoofed_by_the_client() -> None:
    # The client sent "X-Forwarded-For: 6.6.6.6"; nginx appended the address it saw.
    headers = {"X-Forwarded-For": "6.6.6.6, 8.8.8.8"}
    assert ip(1, peer="10.0.0.1", headers=headers) == "8.8.8.8"
    assert ip(1, peer="10.0.0.1", headers={"X-Forwarded-For": "8.8.8.8"}) == "8.8.8.8"
    assert ip(1, peer="8.8.8.8") == "8.8.8.8"  # no header: the peer itself


def test_two_hops() -> None:
    headers = {"X-Forwarded-For": "6.6.6.6, 1.1.1.1, 172.16.0.9"}  # client, CDN edge saw, LB saw
    assert ip(2, peer="10.0.0.1", headers=headers) == "1.1.1.1"


@given(st.lists(st.ip_addresses().map(str), max_size=5), st.ip_addresses())
def test_client_supplied_entries_never_win_with_a_hop_count(
    spoofed: list[str], real: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    header = ", ".join([*spoofed, str(real)])
    found = TrustedProxies(1).client_ip(req(peer="10.0.0.1", headers={"X-Forwarded-For": header}))
    mapped = real.ipv4_mapped if isinstance(real, ipaddress.IPv6Address) else None
    expected = mapped or real
    assert found == expected


def test_cidrs_require_a_trusted_peer() -> None:
    headers = {"X-Forwarded-For": "6.6.6.6"}
    # A client talking to the app directly cannot make itself look like someone else.
    assert ip(("10.0.0.0/8",), peer="8.8.8.8", headers=headers) == "8.8.8.8"


def test_cidrs_walk_right_to_left_past_trusted_networks() -> None:
    headers = {"X-Forwarded-For": "6.6.6.6, 9.9.9.9, 10.0.0.7"}
    assert ip(("10.0.0.0/8",), peer="10.0.0.1", headers=headers) == "9.9.9.9"
    assert ip(("10.0.0.0/8",), peer="10.0.0.1", headers={"X-Forwarded-For": "10.1.1.1"}) == (
        "10.1.1.1"  # every hop trusted: the leftmost is the best we know
    )
    assert (
        ip(("10.0.0.0/8",), peer="10.0.0.1", headers={"X-Forwarded-For": "junk, 10.0.0.2"}) is None
    )


def test_cloudflare_ranges() -> None:
    cloudflare = ("173.245.48.0/20", "103.21.244.0/22", "2400:cb00::/32")
    headers = {"X-Forwarded-For": "6.6.6.6, 2001:4860:4860::8888"}
    assert ip(cloudflare, peer="2400:cb00:2048::1", headers=headers) == "2001:4860:4860::8888"
    assert ip(cloudflare, peer="173.245.48.5", headers={"X-Forwarded-For": "8.8.8.8"}) == "8.8.8.8"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("8.8.8.8:5555", "8.8.8.8"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("2001:4860:4860::8888", "2001:4860:4860::8888"),
        ("::ffff:8.8.8.8", "8.8.8.8"),
        ("[::ffff:8.8.8.8]:80", "8.8.8.8"),
        ("fe80::1%eth0", "fe80::1"),
        ('"[2001:db8::2]"', "2001:db8::2"),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
    ],
)
def test_parse_ip(entry: str, expected: str | None) -> None:
    found = parse_ip(entry)
    assert (None if found is None else str(found)) == expected


def test_forwarded_header() -> None:
    value = 'for=6.6.6.6, for="[2001:4860:4860::8888]:4711";proto=https;by=10.0.0.1'
    headers = {"Forwarded": value}
    assert ip(1, header="forwarded", peer="10.0.0.1", headers=headers) == "2001:4860:4860::8888"
    # Reading X-Forwarded-For (the default), a client-sent Forwarded header is ignored.
    assert ip(1, peer="10.0.0.1", headers={"Forwarded": "for=6.6.6.6"}) == "10.0.0.1"
    proxies = TrustedProxies(1, header="forwarded")
    assert proxies.scheme(req(scheme="http", peer="10.0.0.1", headers=headers)) == "https"
    with pytest.raises(ValueError):
        TrustedProxies(1, header="x-real-ip")


def test_scheme_only_from_trusted_proxies() -> None:
    headers = {"X-Forwarded-Proto": "https"}
    assert TrustedProxies(1).scheme(req(scheme="http", headers=headers)) == "https"
    assert TrustedProxies(0).scheme(req(scheme="http", headers=headers)) == "http"


def test_identity_fields() -> None:
    request = req(
        peer="10.0.0.1",
        scheme="http",
        headers={
            "X-Forwarded-For": "2001:4860:4860::8888",
            "X-Forwarded-Proto": "https",
            "User-Agent": "Mozilla/5.0",
            "Referer": "https://www.google.com/",
        },
        query="a=1",
    )
    found = resolve_identity(request, Conf(trusted_proxies=1), now_ms=NOW_MS)
    assert found.client_ip_address == "2001:4860:4860::8888"
    assert found.client_user_agent == "Mozilla/5.0"
    assert found.event_source_url == "https://www.example.com/landing?a=1"
    assert found.referrer_url == "https://www.google.com/"
    assert found.fbp is None and found.fbc is None and found.cookies == ()
    assert found.user_data() == {
        "client_ip_address": "2001:4860:4860::8888",
        "client_user_agent": "Mozilla/5.0",
    }


def test_private_addresses_are_not_sent_to_meta() -> None:
    assert resolve_identity(req(peer="192.168.1.10"), Conf()).client_ip_address is None
    assert resolve_identity(req(peer="127.0.0.1"), Conf()).client_ip_address is None


# --- cookie domain ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", ("example.com", 1)),
        ("www.example.com:8443", ("example.com", 1)),
        ("a.b.example.com", ("example.com", 1)),
        ("example.co.uk", ("example.co.uk", 2)),
        ("shop.example.co.uk", ("example.co.uk", 2)),
        ("me.github.io", ("me.github.io", 2)),
        ("localhost:8000", (None, 0)),
        ("127.0.0.1:5000", (None, 0)),
        ("[::1]:8080", (None, 0)),
        ("co.uk", (None, 0)),
    ],
)
def test_cookie_domain(host: str, expected: tuple[str | None, int]) -> None:
    assert cookie_domain(host) == expected


def test_cookie_domain_setting_wins_when_it_covers_the_host() -> None:
    assert cookie_domain("a.shop.example.com", ".shop.example.com") == ("shop.example.com", 2)
    assert cookie_domain("other.org", "example.com") == ("other.org", 1)


# --- fbp ---------------------------------------------------------------------------------------


FBP = re.compile(r"fb\.1\.1800000000000\.\d{1,18}")


def test_fbp_minted_and_set_on_a_page_without_one() -> None:
    found = resolve_identity(req(), Conf(), now_ms=NOW_MS, write_cookies=True)
    assert found.fbp and FBP.fullmatch(found.fbp) and valid_fbp(found.fbp)
    [cookie] = found.cookies
    assert cookie == (
        f"_fbp={found.fbp}; Max-Age=7776000; Path=/; Domain=example.com; SameSite=Lax; Secure"
    )
    plain = resolve_identity(
        req(scheme="http", host="localhost:8000"), Conf(), now_ms=NOW_MS, write_cookies=True
    )
    assert plain.fbp and plain.fbp.startswith("fb.0.") and "Secure" not in plain.cookies[0]
    assert "Domain" not in plain.cookies[0]


def test_fbp_not_minted_without_a_cookie_to_keep_it_or_without_consent() -> None:
    assert resolve_identity(req(), Conf()).fbp is None
    denied = resolve_identity(req(), Conf(), write_cookies=True, consent=False)
    assert denied.fbp is None and denied.cookies == ()
    refresh_only = resolve_identity(req(), Conf(), write_cookies=True, mint=False)
    assert refresh_only.fbp is None and refresh_only.cookies == ()


@pytest.mark.parametrize(
    "existing",
    [
        "fb.1.1596403881668.1116446470",
        "fb.1.1749651650057.639940942831715561",
        "fb.1.1596403881668.1116446470.AQIAAQMC",
        "fb.2.1596403881668.42.Ag",
    ],
)
def test_existing_fbp_is_kept_and_refreshed(existing: str) -> None:
    found = resolve_identity(
        req(headers={"Cookie": f"_fbp={existing}"}), Conf(), now_ms=NOW_MS, write_cookies=True
    )
    assert found.fbp == existing
    assert found.cookies[0].startswith(f"_fbp={existing}; Max-Age=7776000")


@pytest.mark.parametrize("bad", ["fb.1.x.1", "garbage.x.y.z", "fb.1.1596403881668.", "fb.1.12.5"])
def test_malformed_fbp_is_replaced(bad: str) -> None:
    found = resolve_identity(
        req(headers={"Cookie": f"_fbp={bad}"}), Conf(), now_ms=NOW_MS, write_cookies=True
    )
    assert found.fbp and FBP.fullmatch(found.fbp)
    assert resolve_identity(req(headers={"Cookie": f"_fbp={bad}"}), Conf()).fbp is None


# --- fbc ---------------------------------------------------------------------------------------


def test_fbc_from_fbclid_keeps_its_case() -> None:
    found = resolve_identity(
        req(query=f"fbclid={CLICK}"), Conf(), now_ms=NOW_MS, write_cookies=True
    )
    assert found.fbc == f"fb.1.{NOW_MS}.{CLICK}"
    assert found.cookies[1].startswith(f"_fbc=fb.1.{NOW_MS}.{CLICK}; Max-Age=7776000")


def test_fbc_from_cookie() -> None:
    cookie = f"fb.1.1554763741205.{CLICK}"
    found = resolve_identity(req(headers={"Cookie": f"_fbc={cookie}"}), Conf())
    assert found.fbc == cookie and found.cookies == ()


def test_same_fbclid_keeps_the_original_click_time() -> None:
    cookie = f"fb.1.1554763741205.{CLICK}"
    later = resolve_identity(
        req(query=f"fbclid={CLICK}", headers={"Cookie": f"_fbc={cookie}"}),
        Conf(),
        now_ms=NOW_MS,
        write_cookies=True,
    )
    assert later.fbc == cookie  # never re-stamped
    assert any(c.startswith(f"_fbc={cookie};") for c in later.cookies)  # refreshed as is
    with_appendix = f"{cookie}.AQIAAQMC"
    again = resolve_identity(
        req(query=f"fbclid={CLICK}", headers={"Cookie": f"_fbc={with_appendix}"}), Conf()
    )
    assert again.fbc == with_appendix and parse_fbc(with_appendix) == CLICK


def test_a_different_fbclid_replaces_the_cookie() -> None:
    found = resolve_identity(
        req(query="fbclid=NewClick_2", headers={"Cookie": f"_fbc=fb.1.1554763741205.{CLICK}"}),
        Conf(),
        now_ms=NOW_MS,
        write_cookies=True,
    )
    assert found.fbc == f"fb.1.{NOW_MS}.NewClick_2"


def test_fbclid_from_the_referer() -> None:
    found = resolve_identity(
        req(headers={"Referer": f"https://www.example.com/?fbclid={CLICK}"}), Conf(), now_ms=NOW_MS
    )
    assert found.fbc == f"fb.1.{NOW_MS}.{CLICK}"


@pytest.mark.parametrize("bad", ["", "a" * 501, "has space", "dot.ted", "<script>"])
def test_unusable_fbclid_is_ignored(bad: str) -> None:
    from urllib.parse import quote

    found = resolve_identity(req(query=f"fbclid={quote(bad)}"), Conf(), write_cookies=True)
    assert found.fbc is None
    assert not any(c.startswith("_fbc") for c in found.cookies)


def test_the_pages_own_url_and_referrer_replace_the_requests() -> None:
    """The mirror endpoint's requests come from the page: the click id is looked for in the
    page's URL, then in the page's referrer, as the pixel looks for it."""
    post = req(headers={"Referer": "https://www.example.com/cart"})
    found = resolve_identity(
        post,
        Conf(),
        now_ms=NOW_MS,
        page_url="https://www.example.com/cart",
        page_referrer=f"https://www.example.com/?fbclid={CLICK}",
    )
    assert found.fbc == f"fb.1.{NOW_MS}.{CLICK}"
    assert found.referrer_url == f"https://www.example.com/?fbclid={CLICK}"
    assert found.event_source_url == "https://www.example.com/cart"


def test_held_events_carry_the_fbp_consent_will_set() -> None:
    fbp = held_fbp("secret-key-one", "mx5qqf1v-hold", 1, NOW_MS)
    assert valid_fbp(fbp) and fbp.startswith(f"fb.1.{NOW_MS}.")
    assert held_fbp("secret-key-one", "mx5qqf1v-hold", 1, NOW_MS) == fbp  # every held event
    assert held_fbp("secret-key-one", "mx5qqf1v-other", 1, NOW_MS) != fbp  # another tab
    assert held_fbp("secret-key-two", "mx5qqf1v-hold", 1, NOW_MS) != fbp  # needs the secret
    # not written without consent; used, and set, in place of a random one when allowed
    held = resolve_identity(req(), Conf(), write_cookies=True, consent=False, fallback_fbp=fbp)
    assert held.fbp == fbp and held.cookies == ()
    granted = resolve_identity(req(), Conf(), write_cookies=True, fallback_fbp=fbp)
    assert granted.cookies[0].startswith(f"_fbp={fbp};")
    existing = "fb.1.1596403881668.1116446470"
    kept = resolve_identity(req(headers={"Cookie": f"_fbp={existing}"}), Conf(), fallback_fbp=fbp)
    assert kept.fbp == existing  # a browser that has one keeps it


def test_refresh_only_never_builds_a_new_fbc_cookie() -> None:
    found = resolve_identity(req(query=f"fbclid={CLICK}"), Conf(), write_cookies=True, mint=False)
    assert found.cookies == ()


def test_malformed_fbc_cookie_is_ignored() -> None:
    found = resolve_identity(req(headers={"Cookie": f"_fbc={CLICK}"}), Conf())  # raw fbclid
    assert found.fbc is None


def test_a_proxy_without_trusted_proxies_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    from capi_bridge import identity

    identity._warn_untrusted_proxy.cache_clear()
    proxies = TrustedProxies(0)
    with caplog.at_level("WARNING", logger="capi_bridge.identity"):
        for _ in range(3):
            found = proxies.client_ip(req(peer="10.0.0.1", headers={"X-Forwarded-For": "8.8.8.8"}))
            assert str(found) == "10.0.0.1"  # still never believed
    assert caplog.text.count("CAPI_BRIDGE_TRUSTED_PROXIES") == 1
