"""Issue 13: what an attacker got through, one test per item of the issue (each one failed on
the code the issue was filed against; item 1 was fixed with issue 12's response core, its test
here measures a real server's memory). Items whose defence lives in the adapters (pages of a
foreign Host, the snippet marker, Cache-Control) run on every adapter; the endpoint's own
decisions run on the core every adapter serves. The fuzz over all adapters is
test_fuzz_adapters.py, the load test from one client test_load_one_client.py."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.adapters import ADAPTERS, HOST, Call, Shop, open_shop, page_of
from helpers.visits import view
from helpers.web import BROWSER, SECRET, page_config, pixel_twins

from capi_bridge.admission import OutboxLevels
from capi_bridge.assembly import build_core
from capi_bridge.demo import demo_environment
from capi_bridge.errors import InvalidEvent, InvalidUserData
from capi_bridge.normalize import normalize
from capi_bridge.pages import PageBridge
from capi_bridge.request import Response
from capi_bridge.settings import Settings
from capi_bridge.signing import PageSigner
from capi_bridge.testing import FakeGraph

UA = BROWSER["User-Agent"]
ENDPOINT = "/capi-bridge/events"


class Clock:
    """Time that moves only when a test moves it (starting now: the outbox checks event times
    against the real clock)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_core(delivery_settings: Any) -> Iterator[Any]:
    """``make(clock=None, **settings) -> PageBridge`` for the site ``shop.test``."""
    cores: list[PageBridge] = []

    def make(clock: Clock | None = None, **overrides: Any) -> PageBridge:
        values = {"secret_key": SECRET, "allowed_hosts": (HOST,), **overrides}
        core = build_core(delivery_settings(**values), clock=clock or time.time)
        cores.append(core)
        return core

    yield make
    for core in cores:
        core.close(timeout=0)


def synchronous_levels(core: PageBridge) -> None:
    """Read the outbox's counts in the request's own thread (the app reads them in a thread of
    their own), so what a cap lets through is exact."""
    settings = core.settings
    core.endpoint.admission.levels = OutboxLevels(
        core.bridge.outbox.waiting,
        bound=max(settings.max_held_rows, settings.max_pending_rows) + 1000,
        spawn=lambda work: work(),
    )


def page_token(core: PageBridge, **kw: Any) -> dict[str, Any]:
    page = core.open_page(view(**kw))
    return page_config(page.render())


def event(name: str = "Lead", **fields: Any) -> dict[str, Any]:
    return {
        "event_name": name,
        "event_id": str(uuid.uuid4()),
        "event_time": int(time.time()),
        "event_source_url": f"http://{HOST}/product",
        **fields,
    }


def post(
    core: PageBridge,
    body: dict[str, Any],
    *,
    host: str = HOST,
    cookies: dict[str, str] | None = None,
    **headers: str,
) -> Response:
    sent = {"origin": f"http://{host}", "content_type": "text/plain", "sec_fetch_dest": "empty"}
    request = view(ENDPOINT, method="POST", host=host, cookies=cookies, **{**sent, **headers})
    return core.handle(request, json.dumps(body).encode())


def error(reply: Response) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(reply.body)["error"]
    return found


def cookies_of(headers: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> list[str]:
    return [value for name, value in headers if name.lower() == "set-cookie"]


@pytest.fixture(params=ADAPTERS)
def shop_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def make_shop(delivery_settings: Any, shop_kind: str) -> Iterator[Any]:
    """``make(**settings) -> Shop``: the adapter of this test's parameter, closed afterwards."""
    opened: list[Iterator[Shop]] = []

    def make(**overrides: Any) -> Shop:
        values = {"secret_key": SECRET, "allowed_hosts": (HOST,), **overrides}
        shops = open_shop(shop_kind, delivery_settings(**values))
        opened.append(shops)
        return next(shops)

    yield make
    for shops in opened:
        next(shops, None)


def browse(shop: Shop, path: str = "/shop", query: str = "", host: str = HOST) -> Any:
    headers = {"user-agent": UA, "sec-fetch-dest": "document", "host": host}
    return shop.call(Call(path=path, query=query, headers=headers))


# --- 1. memory: a chunked body of any size ----------------------------------------------------

_SERVER = Path(__file__).parent / "helpers" / "body_server.py"
_MIB = 1 << 20


def _peak_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


def _huge_chunked_post(mode: str, outbox: str, mib: int) -> tuple[int, bytes]:
    """Peak RSS growth (MiB) of a werkzeug worker serving one chunked POST of ``mib`` MiB."""
    command = [sys.executable, str(_SERVER), mode, outbox]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as server:
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            before = _peak_mib(server.pid)
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(
                    b"POST /capi-bridge/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: text/plain\r\nOrigin: http://127.0.0.1\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                chunk = b"%x\r\n" % _MIB + b"x" * _MIB + b"\r\n"
                try:
                    for _ in range(mib):
                        sock.sendall(chunk)
                    sock.sendall(b"0\r\n\r\n")
                except OSError:  # the server answered and closed: fine, it read no more
                    pass
                answer = sock.recv(64)
            return _peak_mib(server.pid) - before, answer
        finally:
            server.kill()


def test_item1_a_real_flask_worker_stays_small_under_a_huge_chunked_post(tmp_path: Path) -> None:
    """A 96 MiB chunked POST without Content-Length, to Flask on Werkzeug's server: the worker's
    peak memory grows by a few MiB (the answer is 413 once 64 KiB + 1 byte are read). A view
    that reads the body the way Flask does grows by the whole body, which shows the probe
    sees a reader that buffers."""
    grown, answer = _huge_chunked_post("bridge", str(tmp_path / "o.sqlite3"), 96)
    assert answer.startswith(b"HTTP/1.1 413")
    assert grown < 24, grown
    greedy, answer = _huge_chunked_post("greedy", str(tmp_path / "g.sqlite3"), 96)
    assert answer.startswith(b"HTTP/1.1 200") and greedy >= 96, greedy


# --- 2. the rate limit counts events ----------------------------------------------------------


def test_item2_the_rate_limit_counts_events_and_logs_once_per_client_and_minute(
    make_core: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    core = make_core(clock=clock)  # the default: 120 events per minute
    token = page_token(core)["token"]
    accepted, refused = 0, []
    with caplog.at_level(logging.WARNING, logger="capi_bridge"):
        for _ in range(40):
            reply = post(core, {"token": token, "events": [event() for _ in range(20)]})
            if reply.status == 202:
                accepted += json.loads(reply.body)["accepted"]
            else:
                refused.append(reply)
        assert accepted == 120  # six posts of 20 (it was 40 x 20 = 800)
        assert {r.status for r in refused} == {429}
        assert {error(r)["code"] for r in refused} == {"rate_limited"}
        assert all(int(str(r.header("Retry-After"))) >= 1 for r in refused)
        logged = [r for r in caplog.records if "429 for client" in r.getMessage()]
        assert len(logged) == 1 and "81.2.x.x" in logged[0].getMessage()  # masked
        clock.now += 61
        for _ in range(12):
            post(core, {"token": token, "events": [event() for _ in range(20)]})
        logged = [r for r in caplog.records if "429 for client" in r.getMessage()]
        assert len(logged) == 2  # a minute later: once more


def test_item2_an_ipv6_client_is_limited_by_its_64(make_core: Any) -> None:
    core = make_core(clock=Clock(), rate_limit=20, trusted_proxies=1)
    token = page_token(core)["token"]

    def send(address: str, count: int) -> int:
        body = {"token": token, "events": [event() for _ in range(count)]}
        return post(core, body, x_forwarded_for=address).status

    assert send("2a00:1450:4001:81a::1", 20) == 202
    assert send("2a00:1450:4001:81a::99", 1) == 429  # another address of the same /64
    assert send("2a00:1450:4001:81b::1", 1) == 202


# --- 3. disk: held and pending rows capped -------------------------------------------------------


def test_item3_held_rows_are_capped_per_client_and_in_total(make_core: Any) -> None:
    core = make_core(
        clock=Clock(),
        consent="required",
        rate_limit=100_000,
        held_per_client=100,
        max_held_rows=240,
        trusted_proxies=1,
    )
    synchronous_levels(core)
    token = page_token(core)["token"]

    def flood(client: str, posts: int = 10) -> list[Response]:
        hold = "tab" + client.replace(".", "") + "-0123456789abcdef"
        body = {"token": token, "hold": hold}
        return [
            post(core, {**body, "events": [event() for _ in range(20)]}, x_forwarded_for=client)
            for _ in range(posts)
        ]

    first = flood("8.8.8.8")
    assert [r.status for r in first] == [202] * 5 + [429] * 5
    assert {error(r)["code"] for r in first[5:]} == {"client_limit"}
    assert core.bridge.stats().held == 100
    flood("9.9.9.9")
    third = flood("1.1.1.1")
    assert core.bridge.stats().held == 240  # the total cap, whatever the clients
    assert error(third[-1])["code"] == "outbox_full" and third[-1].header("Retry-After")


def test_item3_pending_rows_are_capped_per_client(make_core: Any, fake_graph: FakeGraph) -> None:
    core = make_core(clock=Clock(), rate_limit=100_000, pending_per_client=60)
    token = page_token(core)["token"]
    body = {"token": token}
    replies = [post(core, {**body, "events": [event() for _ in range(20)]}) for _ in range(6)]
    assert [r.status for r in replies] == [202, 202, 202, 429, 429, 429]
    assert core.bridge.flush(10)
    assert len(fake_graph.events) == 60


# --- 4. the pixel-twin cookie ------------------------------------------------------------------


def _set(headers: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for value in cookies_of(headers):
        name, _, rest = value.partition("=")
        out[name] = rest.split(";", 1)[0]
    return out


def _purchase(core: PageBridge, fbp: str, scheme: str = "http") -> list[tuple[str, str]]:
    page = core.open_page(view("/pay", method="POST", scheme=scheme, cookies={"_fbp": fbp}))
    page.track("Purchase", custom_data={"value": 10, "currency": "EUR"})
    return page.response_headers()


ATTACKER_FBP = "fb.1.1700000000000.1111111111"
VICTIM_FBP = "fb.1.1700000000000.2222222222"


def test_item4_a_twin_cookie_fires_only_in_its_own_browser_and_only_once(make_core: Any) -> None:
    core = make_core()
    twin = _set(_purchase(core, ATTACKER_FBP))["_capib_ev"]  # from the attacker's own session
    # planted on a victim (a sibling subdomain can set it for the parent domain)
    victim = core.open_page(view("/", cookies={"_fbp": VICTIM_FBP, "_capib_ev": twin}))
    assert pixel_twins(victim.render()) == []
    cleared = [v for v in cookies_of(victim.response_headers()) if v.startswith("_capib_ev=")]
    assert len(cleared) == 2 and any("Domain=shop.test" in v for v in cleared)  # both copies
    # in the browser it was made for, it fires once, even if the cookie comes back
    mine = {"_fbp": ATTACKER_FBP, "_capib_ev": twin}
    assert len(pixel_twins(core.open_page(view("/", cookies=mine)).render())) == 1
    assert pixel_twins(core.open_page(view("/", cookies=mine)).render()) == []


def test_item4_on_https_the_twin_cookie_is_host_only(make_core: Any) -> None:
    core = make_core()
    [made] = [v for v in cookies_of(_purchase(core, ATTACKER_FBP, "https")) if "capib_ev" in v]
    assert made.startswith("__Host-capib_ev=") and "Secure" in made and "Domain" not in made
    plain = _set(_purchase(core, ATTACKER_FBP))["_capib_ev"]  # an http cookie of the same browser
    page = core.open_page(
        view("/", scheme="https", cookies={"_fbp": ATTACKER_FBP, "_capib_ev": plain})
    )
    assert pixel_twins(page.render()) == []  # on https only the __Host- cookie counts
    assert any(v.startswith("_capib_ev=;") for v in cookies_of(page.response_headers()))


# --- 5. the inspector and DNS rebinding --------------------------------------------------------


@pytest.mark.parametrize("allowed", [(), (HOST,)])
def test_item5_the_inspector_refuses_a_host_that_is_not_loopback_nor_allowed(
    make_core: Any, allowed: tuple[str, ...]
) -> None:
    core = make_core(inspector=True, allowed_hosts=allowed)

    def get(host: str) -> Response:
        return core.handle(view("/capi-bridge/inspector/data", host=host, peer="127.0.0.1"))

    refused = get("rebind.attacker.test")
    assert refused.status == 403 and error(refused)["code"] == "host_not_allowed"
    for host in ("localhost:8000", "127.0.0.1:5000", "[::1]:8000", "app.localhost", *allowed):
        assert get(host).status == 200, host


def test_item5_the_demos_inspector_refuses_a_rebinding_host(
    fake_graph: FakeGraph, tmp_path: Path
) -> None:
    settings = Settings.from_env(demo_environment(fake_graph, str(tmp_path / "o.sqlite3")))
    core = build_core(settings)
    try:
        request = view("/capi-bridge/inspector/data", host="rebind.attacker.test", peer="127.0.0.1")
        assert core.handle(request).status == 403
        loopback = view("/capi-bridge/inspector/data", host="127.0.0.1:8000", peer="127.0.0.1")
        assert core.handle(loopback).status == 200
    finally:
        core.close(timeout=0)


# --- 6. conversions from a script: Hosts and values ------------------------------------------


def test_item6_pages_of_a_foreign_host_get_no_snippet_nor_cookie(make_shop: Any) -> None:
    shop = make_shop()
    ours = browse(shop)
    assert "capiBridgeConfig" in page_of(ours) and ours.all("set-cookie")
    foreign = browse(shop, host="competitor.example")
    assert foreign.status == 200 and "capiBridgeConfig" not in page_of(foreign)
    assert foreign.all("set-cookie") == []


def test_item6_the_endpoint_refuses_a_foreign_host(make_core: Any) -> None:
    core = make_core()
    signer = PageSigner.from_settings(core.settings)
    foreign = signer.issue(host="competitor.example", page_view_id=None)  # its page's token
    purchase = event("Purchase", custom_data={"value": 99999, "currency": "EUR"})
    reply = post(core, {"token": foreign, "events": [purchase]}, host="competitor.example")
    assert (reply.status, error(reply)["code"], error(reply)["field"]) == (
        400,
        "host_not_allowed",
        "Host",
    )
    assert core.bridge.stats().pending == 0


@pytest.mark.parametrize("value", [-1, -1e14, 1e14, "-5", 1_000_000_001])
def test_item6_implausible_values_are_refused_naming_the_field(make_core: Any, value: Any) -> None:
    core = make_core()
    token = page_token(core)["token"]
    custom = {"value": value, "currency": "EUR"}
    reply = post(core, {"token": token, "events": [event("Purchase", custom_data=custom)]})
    assert reply.status == 400 and error(reply)["field"] == "events[0].custom_data.value"
    assert error(reply)["code"] == "implausible_value"
    assert core.bridge.stats().pending == 0


def test_item6_start_up_warns_without_allowed_hosts_outside_debug(
    caplog: pytest.LogCaptureFixture, delivery_settings: Any
) -> None:
    def warnings(debug: bool = False, **overrides: Any) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="capi_bridge"):
            settings = delivery_settings(secret_key=SECRET, **overrides)
            build_core(settings, debug=debug).close(timeout=0)
        return [r.getMessage() for r in caplog.records if "allowed_hosts" in r.getMessage()]

    [warning] = warnings()
    assert "any Host header" in warning and "post conversions" in warning
    assert warnings(allowed_hosts=(HOST,)) == []
    assert warnings(debug=True) == []  # Flask's app.debug, Django's DEBUG


# --- 7. PageView rebinding and token refresh -------------------------------------------------


def _refresh(core: PageBridge, token: str, pv: str | None = None) -> Response:
    query = f"token={token}" + (f"&pv={pv}" if pv else "")
    return core.handle(view(f"{ENDPOINT}?{query}", sec_fetch_dest="empty"))


def test_item7_page_views_bound_per_page_load_even_through_chained_tokens(make_core: Any) -> None:
    core = make_core(clock=Clock(), page_views_per_load=10)
    token = page_token(core)["token"]
    statuses = []
    for i in range(12):
        reply = _refresh(core, token, str(uuid.uuid4()))
        statuses.append(reply.status)
        if reply.status == 200 and i % 2:  # an SPA goes on with the token it was given
            token = json.loads(reply.body)["token"]
    assert statuses == [200] * 10 + [403, 403]
    assert error(_refresh(core, token, str(uuid.uuid4())))["code"] == "page_view_limit"
    assert _refresh(core, token).status == 200  # refreshing without a new PageView still works


def test_item7_tokens_refresh_only_within_the_window_of_their_page_load(make_core: Any) -> None:
    clock = Clock()
    core = make_core(clock=clock)  # token_refresh_window 24h
    first = page_token(core)["token"]
    clock.now += 23 * 3600
    second = json.loads(_refresh(core, first).body)["token"]
    clock.now += 2 * 3600  # the second token is 2 h old, its page load 25 h
    chained = _refresh(core, second)
    assert (chained.status, error(chained)["code"]) == (403, "token_expired")
    clock.now += 27 * 86400  # 29 days after the first page
    assert _refresh(core, first).status == 403  # a 29-day-old token


# --- 8. snippet suppression -------------------------------------------------------------------


@pytest.mark.parametrize("term", ["data-capi-bridge", "<script data-capi-bridge>"])
def test_item8_a_reflected_marker_does_not_stop_injection(make_shop: Any, term: str) -> None:
    shop = make_shop()
    reply = browse(shop, query=f"q={term}")
    assert reply.status == 200
    assert "capiBridgeConfig" in page_of(reply)
    assert page_of(reply).count("window.capiBridgeConfig=") == 1  # injected once


# --- 9. cookies -----------------------------------------------------------------------------


def test_item9_the_page_marker_is_secure_on_https(make_core: Any) -> None:
    core = make_core(trusted_proxies=1)
    page = core.open_page(view("/", x_forwarded_proto="https"))
    page.render()
    [marker] = [v for v in cookies_of(page.response_headers()) if v.startswith("_capib_pv=")]
    assert "Secure" in marker


def test_item9_withdrawing_consent_deletes_the_twin_and_the_test_code(make_core: Any) -> None:
    core = make_core()
    token = page_token(core)["token"]
    reply = post(core, {"token": token, "consent": False})
    deleted = {v.split("=")[0] for v in cookies_of(reply.headers) if "Max-Age=0" in v}
    assert {"_capib_ev", "_capib_test", "_fbp", "_fbc", "capib_consent"} <= deleted


# --- 10. internal errors from input ------------------------------------------------------------


def test_item10_malformed_input_gets_a_clean_answer_and_no_error_log(
    make_core: Any, caplog: pytest.LogCaptureFixture
) -> None:
    core = make_core()
    token = page_token(core)["token"]
    future = PageSigner(SECRET, core.settings.pixel_ids, clock=lambda: float(2**40))
    huge = 10**400
    cases: list[tuple[dict[str, Any], dict[str, str], int]] = [
        ({"token": future.issue(host=HOST, page_view_id=None), "events": [event()]}, {}, 403),
        ({"token": token, "events": [event()]}, {"origin": "http://[127.0.0.1:18000"}, 403),
        ({"token": token, "events": [event(event_time=huge)]}, {}, 202),  # receive time used
        ({"token": token, "sent_at": huge, "events": [event()]}, {}, 202),
        ({"token": token, "events": [event(custom_data={"n": huge})]}, {}, 400),
        ({"token": token, "events": [event()]}, {"content_length": "²"}, 202),
    ]
    with caplog.at_level(logging.DEBUG, logger="capi_bridge"):
        for body, headers, status in cases:
            reply = post(core, body, **headers)
            assert reply.status == status, (body, headers, reply.body)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_item10_a_scripted_request_with_nothing_to_match_on_does_not_break_track(
    make_core: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A POST to a checkout without User-Agent, cookie or public address: Meta would refuse
    its server event, but the request, not the app, is at fault: no exception (a 500 and a
    traceback per request), one warning; strict settings (the app's tests) still raise."""
    bare = view("/pay", method="POST", peer="10.0.0.1", user_agent="")
    core = make_core()
    with caplog.at_level(logging.WARNING, logger="capi_bridge"):
        for _ in range(3):
            page = core.open_page(bare)
            assert page.track("Purchase", custom_data={"value": 1, "currency": "EUR"})
    assert len([r for r in caplog.records if "was not stored" in r.getMessage()]) == 1
    strict = make_core(strict=True).open_page(bare)
    with pytest.raises(InvalidEvent, match="user_data"):
        strict.track("Purchase", custom_data={"value": 1, "currency": "EUR"})
    checkout = make_core().open_page(view("/pay", method="POST"))
    with pytest.raises(InvalidEvent, match="currency"):  # the app's own mistake still raises
        checkout.track("Purchase", custom_data={"value": 1})


# --- 11. bad Unicode ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"custom_data": {"search_string": "a\ud800b"}}, "custom_data.search_string"),
        ({"custom_data": {"content_ids": ["sku\x00"]}}, "custom_data.content_ids[0]"),
        ({"event_source_url": f"http://{HOST}/\udfff"}, "event_source_url"),
        ({"referrer_url": "https://www.facebook.com/\x00"}, "referrer_url"),
    ],
)
def test_item11_nul_and_lone_surrogates_are_refused_before_storage(
    make_core: Any, fields: dict[str, Any], where: str
) -> None:
    core = make_core()
    token = page_token(core)["token"]
    reply = post(core, {"token": token, "events": [event(**fields)]})
    assert reply.status == 400 and error(reply)["field"] == f"events[0].{where}"
    assert core.bridge.stats().pending == 0


# --- 12. personal data in messages and caches ------------------------------------------------


def test_item12_errors_about_a_visitors_value_never_quote_it() -> None:
    with pytest.raises(InvalidUserData) as caught:
        normalize("em", "jane.doe@intranet")
    assert "jane" not in str(caught.value) and "intranet" not in str(caught.value)
    assert str(caught.value) == "user_data.em: 'xxxx.xxx@xxxxxxxx' is not an email address"
    with pytest.raises(InvalidUserData) as caught:
        normalize("db", "1990-02-31")
    assert "1990" not in str(caught.value) and "31" not in str(caught.value)


def test_item12_pages_with_raw_advanced_matching_are_private(make_shop: Any) -> None:
    shop = make_shop(advanced_matching=True)
    matched = browse(shop, query="em=jane%40example.com")
    assert '"em":"jane@example.com"' in page_of(matched)
    assert matched.all("cache-control") == ["private, max-age=600"]
    anonymous = browse(shop)
    assert anonymous.all("cache-control") == ["public, max-age=600"]

