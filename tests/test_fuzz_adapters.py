"""Hypothesis over every adapter (issue 13): hostile headers, queries, cookies, bodies and
chunking, sent to the same shop under bare WSGI, Flask, Django (WSGI), bare ASGI, Starlette and
Django (ASGI). Whatever arrives: no 5xx, no ERROR log line from anyone, and bounded memory: a
body of several MiB sent to one of our routes makes the adapter allocate well under one MiB
(traced with tracemalloc; Django's ASGI handler spools the body before any middleware runs, so
there only the answer is checked).

Deterministic and quick: ``derandomize=True`` (the same examples on every run), a fixed number
of examples per adapter, no deadline. Each example is one in-process request; the shop, its
outbox and the fake Graph API are shared by the examples of one adapter, as a server's are.
"""

from __future__ import annotations

import json
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from helpers.adapters import ADAPTERS, HOST, STREAMING, Call, Shop, open_shop
from helpers.logs import ErrorRecords
from helpers.web import BROWSER, SECRET
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from capi_bridge.browser_payload import MAX_BODY_BYTES

ENDPOINT = "/capi-bridge/events"
SCRIPT = "/capi-bridge/capi-bridge.js"
INSPECTOR = "/capi-bridge/inspector"
OUR_ROUTES = (ENDPOINT, SCRIPT, INSPECTOR, INSPECTOR + "/data", INSPECTOR + "/diagnostics")
PATHS = (*OUR_ROUTES, "/shop", "/pay", "/nope", "/shop/", "//shop")
#: A 3 MiB body in 64 KiB chunks, made once: examples pick it, nobody copies it.
HUGE = [b"x" * 65536] * 48
#: What an adapter may allocate while answering a huge body on our routes (it reads 64 KiB + 1).
MEMORY_BOUND = 1 << 20

# Header values as servers hand them over: latin-1 text without control characters.
_LATIN1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
_TEXT = st.text(_LATIN1, max_size=60)
_ORIGINS = st.sampled_from(["http://[127.0.0.1:1", "null", "https://evil.test"])
_TYPES = st.sampled_from(["application/json", "text/plain;charset=x", "x/y"])
_NAMES = st.sampled_from(["PageView", "Lead", "", "x" * 60])
_COOKIES = ("_fbp", "_fbc", "_capib_ev", "__Host-capib_ev", "_capib_test", "capib_consent", "x")


def _mostly(valid: Any, other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(valid), st.just(valid), other)


def _valid_event() -> dict[str, Any]:
    return {
        "event_name": "Purchase",
        "event_id": str(uuid.uuid4()),
        "event_time": 1_800_000_000,
        "event_source_url": f"http://{HOST}/p",
        "custom_data": {"value": 5, "currency": "EUR"},
    }


@st.composite
def _event(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return _valid_event()
    junk = st.one_of(
        _TEXT,
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=False),
        st.sampled_from([10**400, -1, 1e14, "\ud800", "a\x00", None, [], {}]),
    )
    event = {
        "event_name": draw(_mostly("Purchase", _NAMES)),
        "event_id": draw(_mostly(str(uuid.uuid4()), junk)),
        "event_time": draw(_mostly(1_800_000_000, junk)),
        "event_source_url": draw(_mostly(f"http://{HOST}/p", _TEXT)),
        "custom_data": {
            "value": draw(_mostly(5, junk)),
            "currency": draw(_mostly("EUR", junk)),
            "content_ids": draw(_mostly(["sku-1"], st.lists(junk, max_size=3))),
        },
    }
    if draw(st.booleans()):
        event["referrer_url"] = draw(_mostly("https://www.facebook.com/", junk))
    return event


@st.composite
def _body(draw: st.DrawFn) -> list[bytes] | str:
    """The body's chunks, or ``"huge"`` for :data:`HUGE` (kept out of the examples' repr)."""
    kind = draw(st.sampled_from(["events", "events", "consent", "json", "bytes", "huge", "none"]))
    if kind == "huge":
        return "huge"
    if kind == "none":
        return []
    if kind == "bytes":
        return [draw(st.binary(max_size=300))]
    if kind == "json":
        data: Any = draw(st.recursive(st.none() | st.booleans() | st.integers() | _TEXT,
                                      lambda inner: st.lists(inner, max_size=3)
                                      | st.dictionaries(_TEXT, inner, max_size=3),
                                      max_leaves=8))  # fmt: skip
    else:
        data = {"token": draw(_mostly("valid", st.sampled_from(["forged", "foreign", "junk"])))}
        if kind == "events":
            data["events"] = draw(st.lists(_event(), min_size=1, max_size=3))
            data["sent_at"] = draw(_mostly(1_800_000_000_000, st.integers() | _TEXT))
        else:
            data["consent"] = draw(st.booleans())
        if draw(st.booleans()):
            data["hold"] = draw(_mostly("tab-0123456789abcdef", _TEXT))
    raw = json.dumps(data).encode()
    cut = draw(st.integers(min_value=1, max_value=max(1, len(raw))))
    return [raw[:cut], raw[cut:]] if draw(st.booleans()) else [raw]


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    headers = {
        "host": draw(_mostly(HOST, st.sampled_from(["evil.test", "[::1", "localhost:0"]) | _TEXT)),
        "user-agent": draw(_mostly(BROWSER["User-Agent"], _TEXT)),
        "sec-fetch-dest": draw(st.sampled_from(["document", "empty", "image", ""])),
        "origin": draw(_mostly(f"http://{HOST}", _ORIGINS | _TEXT)),
        "content-type": draw(_mostly("text/plain", _TYPES | _TEXT)),
    }
    for name in ("referer", "x-forwarded-for", "x-forwarded-proto", "sec-fetch-site",
                 "content-length", "forwarded"):  # fmt: skip
        if draw(st.integers(0, 3)) == 0:
            headers[name] = draw(_TEXT)
    cookies = draw(st.dictionaries(st.sampled_from(_COOKIES), _TEXT, max_size=4))
    if cookies:
        headers["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    params = draw(st.dictionaries(st.sampled_from(["token", "pv", "em", "q", "v", "key", "window"]),
                                  _TEXT, max_size=3))  # fmt: skip
    # a request target is ASCII: servers hand the query over percent-encoded as the client sent it
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    path = draw(st.sampled_from(PATHS))
    natural = draw(st.sampled_from(["POST", "GET"])) if path == ENDPOINT else "GET"
    natural = "POST" if path == "/pay" else natural
    methods = st.sampled_from(["GET", "POST", "HEAD", "PUT", "OPTIONS"])
    refresh = f"token=valid&pv={uuid.uuid4()}"  # a token refresh binding a new PageView
    queries = st.sampled_from(
        [refresh, "token=valid", "em=jane%40example.com&q=data-capi-bridge", f"v={'0' * 12}"]
    )
    return {
        "method": draw(_mostly(natural, methods)),
        "path": path,
        "query": draw(queries | st.just(query) | _TEXT.map(lambda text: quote(text, safe="=&%"))),
        "headers": headers,
        "chunks": draw(_body()),
        "chunked": draw(st.booleans()),
        "scheme": draw(st.sampled_from(["http", "https"])),
    }


@pytest.fixture(params=ADAPTERS)
def shop(request: pytest.FixtureRequest, delivery_settings: Any) -> Iterator[Shop]:
    settings = delivery_settings(
        secret_key=SECRET,
        allowed_hosts=(HOST,),
        inspector=True,
        advanced_matching=True,
        scoped_test_events=True,
        trusted_proxies=1,
    )
    yield from open_shop(request.param, settings)


def _tokens(shop: Shop) -> dict[str, str]:
    return {
        "valid": shop.core.signer.issue(host=HOST, page_view_id=str(uuid.uuid4())),
        "foreign": shop.core.signer.issue(host="evil.test", page_view_id=None),
        "forged": shop.core.signer.issue(host=HOST, page_view_id=None)[:-4] + "AAAA",
        "junk": "\x00<script>",
    }


def _request(path: str, method: str = "POST", body: Any = None, **headers: str) -> dict[str, Any]:
    base = {"host": HOST, "user-agent": BROWSER["User-Agent"], "origin": f"http://{HOST}",
            "content-type": "text/plain", "sec-fetch-dest": "empty"}  # fmt: skip
    return {
        "method": method,
        "path": path,
        "query": "",
        "headers": {k: v for k, v in {**base, **headers}.items() if v is not None},
        "chunks": [json.dumps(body).encode()] if body is not None else [],
        "chunked": False,
        "scheme": "http",
    }


def _post(**event: Any) -> dict[str, Any]:
    return {"token": "valid", "events": [{**_valid_event(), **event}]}


#: The attacks issue 13 reported, always tried first (then Hypothesis's own examples).
ATTACKS = [
    _request(ENDPOINT, body=_post(), origin="http://[127.0.0.1:18000"),
    _request(ENDPOINT, body=_post(event_time=10**400)),
    _request(ENDPOINT, body={**_post(), "sent_at": 10**400}),
    _request(ENDPOINT, body=_post(custom_data={"value": 10**400, "currency": "EUR"})),
    _request(ENDPOINT, body=_post(custom_data={"content_ids": ["\ud800", "a\x00"]})),
    _request(ENDPOINT, body=_post(referrer_url="https://x.test/\udfff")),
    _request(ENDPOINT, body=_post(), **{"content-length": "\xb2"}),
    _request(ENDPOINT, body=_post(), host="competitor.example", origin="http://competitor.example"),
    _request(INSPECTOR + "/data", "GET", host="rebind.attacker.test"),
    _request("/pay", **{"user-agent": None, "x-forwarded-for": "unknown"}),
    {**_request(ENDPOINT), "chunks": "huge", "chunked": True},
]


def _attacks(test: Any) -> Any:
    for attack in reversed(ATTACKS):
        test = example(req=attack)(test)
    return test


@_attacks
@settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(req=requests())
def test_hostile_requests_never_5xx_log_errors_or_hold_a_big_body(
    shop: Shop, req: dict[str, Any]
) -> None:
    chunks = HUGE if req["chunks"] == "huge" else req["chunks"]
    if chunks and chunks is not HUGE and b'"token"' in chunks[0]:  # a real token, sometimes
        data = json.loads(b"".join(chunks))
        data["token"] = _tokens(shop).get(data["token"], data["token"])
        chunks = [json.dumps(data).encode()]
    call = Call(
        method=req["method"],
        path=req["path"],
        query=req["query"].replace("token=valid", f"token={_tokens(shop)['valid']}"),
        headers=req["headers"],
        chunks=chunks,
        chunked=req["chunked"],
        scheme=req["scheme"],
    )
    traced = chunks is HUGE and call.path in OUR_ROUTES and shop.kind in STREAMING
    with ErrorRecords() as errors:
        if traced:
            tracemalloc.start()
        try:
            reply = shop.call(call)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    if traced:
        assert peak < MEMORY_BOUND, (shop.kind, call.path, peak)
    assert reply.status < 500, (reply.status, reply.body[:300])
    assert errors.records == [], errors.messages
    if call.path in OUR_ROUTES and shop.kind in STREAMING:
        assert reply.read <= MAX_BODY_BYTES + 65536, reply.read  # one chunk past the limit
    if reply.status >= 400 and call.path == ENDPOINT and call.method == "POST":
        assert set(json.loads(reply.body)["error"]) >= {"code", "message", "field"}
