"""The fake Graph API itself: Meta's rules, body encodings, faults, control API, the wire."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from capi_bridge.testing import FakeGraph, serve_forever

PIXEL = "1234567890"
TOKEN = "test-token"
H = hashlib.sha256(b"x").hexdigest()
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_name": "Lead",
        "event_time": int(time.time()),
        "action_source": "website",
        "user_data": {"em": H},
    }
    base.update(overrides)
    return base


def post(fake: FakeGraph, body: Any = None, *, pixel: str = PIXEL, **kwargs: Any) -> httpx.Response:
    """POST to the events edge; ``body`` is sent as JSON, other encodings via ``kwargs``."""
    if body is not None:
        kwargs["json"] = body
    kwargs.setdefault("headers", BEARER)
    return httpx.post(f"{fake.url}/v26.0/{pixel}/events", timeout=10, **kwargs)


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


# --- Meta's rules ---------------------------------------------------------------------------------


def test_valid_batch_is_accepted_and_recorded(fake_graph: FakeGraph) -> None:
    before = time.time()
    response = post(fake_graph, {"data": [event(), event(event_name="Purchase")]})
    after = time.time()
    assert response.status_code == 200
    body = response.json()
    assert body["events_received"] == 2 and body["messages"] == []
    assert body["fbtrace_id"] == response.headers["x-fb-trace-id"]
    first = fake_graph.events[0]
    assert first["pixel_id"] == PIXEL and first["test_event_code"] is None
    assert before <= first["received_at"] <= after
    assert first["user_data"] == {"em": H}


def envelope_of(response: httpx.Response) -> tuple[int, int, int | None]:
    error = error_of(response)
    assert error["type"] in ("OAuthException", "GraphMethodException")
    assert error["is_transient"] is False and error["fbtrace_id"]
    return response.status_code, error["code"], error.get("error_subcode")


OLD = int(time.time()) - 7 * 86400 - 120


@pytest.mark.parametrize(
    ("bad", "expected", "text"),
    [
        (event(event_time=OLD), (400, 100, 2804003), "too far in the past"),
        (event(user_data={"em": "joe@example.com"}), (400, 100, 2804016), "em"),
        (event(user_data={"ph": [H, "16505551212"]}), (400, 100, 2804016), "ph"),
        (event(user_data={"em": H.upper()}), (400, 100, 2804016), "em"),
        (event(user_data={"ct": H, "em": []}), (400, 100, 2804016), "em"),
        (event(user_data={"fbp": "fb.1.1.1", "country": "us"}), (400, 100, 2804016), "country"),
        (event(user_data={}), (400, 100, 2804050), "insufficient"),
        (event(user_data={"client_user_agent": "ua"}), (400, 100, 2804050), "insufficient"),
        (event(user_data={"db": H, "client_user_agent": "ua"}), (400, 100, 2804050), ""),
        (event(user_data={"fn": H, "ge": H}), (400, 100, 2804050), ""),
        (event(user_data={"ln": [H], "ge": [H]}), (400, 100, 2804050), ""),
        (
            event(
                user_data=dict.fromkeys(("ct", "country", "st", "zp", "ge"), H)
                | {"client_user_agent": "ua"}
            ),
            (400, 100, 2804050),
            "",
        ),
        (event(foo=1), (400, 100, None), 'Unexpected key "foo" on param "$[\'data\'][1]"'),
        (
            event(user_data={"em": H, "email": H}),
            (400, 100, None),
            "Unexpected key \"email\" on param \"$['data'][1]['user_data']\"",
        ),
        ({k: v for k, v in event().items() if k != "event_name"}, (400, 100, None), "event_name"),
        ({k: v for k, v in event().items() if k != "event_time"}, (400, 100, None), "event_time"),
        ({k: v for k, v in event().items() if k != "user_data"}, (400, 100, None), "user_data"),
        ({k: v for k, v in event().items() if k != "action_source"}, (400, 100, None), "action"),
        (event(action_source="web"), (400, 100, None), "action_source"),
        (event(event_time=str(int(time.time()))), (400, 100, None), "integer"),
        (event(event_time=time.time()), (400, 100, None), "integer"),
        (event(user_data=[H]), (400, 100, None), "object"),
    ],
)
def test_one_invalid_event_rejects_the_whole_batch(
    fake_graph: FakeGraph, bad: dict[str, Any], expected: tuple[int, int, int | None], text: str
) -> None:
    response = post(fake_graph, {"data": [event(), bad]})
    assert envelope_of(response) == expected
    error = error_of(response)
    assert text in error["message"] + " " + error.get("error_user_msg", "")
    if expected[2]:
        assert error["message"] == "Invalid parameter" and error["error_user_title"]
    assert fake_graph.events == []


@pytest.mark.parametrize(
    "user_data",
    [
        {"em": H},  # no client_user_agent: Meta does not enforce it for website events (observed)
        {"fn": H, "ln": H, "ge": H},  # not a subset of any one too-broad combination
        {"client_ip_address": "203.0.113.9"},
        {"fbp": "fb.1.1596403881668.1116446470", "client_user_agent": "ua"},
        {"external_id": "user-42"},  # Meta recommends hashing it but accepts it raw
        {"ph": [H, H], "ct": None},
    ],
)
def test_sufficient_customer_information_is_accepted(
    fake_graph: FakeGraph, user_data: dict[str, Any]
) -> None:
    assert post(fake_graph, {"data": [event(user_data=user_data)]}).status_code == 200


def test_age_limit_is_seven_days_except_physical_store_sixty_two() -> None:
    now = int(time.time())
    with FakeGraph() as fake:
        assert post(fake, {"data": [event(event_time=now - 7 * 86400 + 120)]}).status_code == 200
        store = event(event_time=now - 30 * 86400, action_source="physical_store")
        assert post(fake, {"data": [store]}).status_code == 200
        store["event_time"] = now - 63 * 86400
        assert envelope_of(post(fake, {"data": [store]}))[2] == 2804003


def test_more_than_1000_events_is_code_100(fake_graph: FakeGraph) -> None:
    response = post(fake_graph, {"data": [event()] * 1001})
    assert envelope_of(response) == (400, 100, None)
    assert "1000" in error_of(response)["message"]
    assert post(fake_graph, {"data": [event()] * 1000}).json()["events_received"] == 1000


@pytest.mark.parametrize("body", [{}, {"data": []}, {"data": "not json"}, {"data": {"a": 1}}])
def test_missing_or_malformed_data_is_code_100(fake_graph: FakeGraph, body: Any) -> None:
    assert envelope_of(post(fake_graph, body)) == (400, 100, None)


# --- tokens and pixels ----------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "x"}])
def test_missing_or_wrong_token_is_190_with_401(fake_graph: FakeGraph, headers: Any) -> None:
    response = post(fake_graph, {"data": [event()]}, headers=headers)
    assert envelope_of(response) == (401, 190, None)
    assert error_of(response)["message"] == "Invalid OAuth access token - Cannot parse access token"


def test_token_none_accepts_any_token_but_not_none() -> None:
    with FakeGraph(token=None) as fake:
        ok = post(fake, {"data": [event()]}, headers={"Authorization": "Bearer whatever"})
        assert ok.status_code == 200
        assert post(fake, {"data": [event()]}, headers={}).status_code == 401


def test_token_in_body_is_accepted_and_redacted_in_the_record(fake_graph: FakeGraph) -> None:
    response = post(fake_graph, {"data": [event()], "access_token": TOKEN}, headers={})
    assert response.status_code == 200
    (request,) = fake_graph.requests
    assert request["token_source"] == "body"
    assert request["params"] == {"access_token": "[redacted]"}
    assert request["warnings"] == []


def test_token_in_query_is_accepted_with_a_warning(fake_graph: FakeGraph) -> None:
    url = f"{fake_graph.url}/v26.0/{PIXEL}/events?access_token={TOKEN}"
    assert httpx.post(url, json={"data": [event()]}).status_code == 200
    (request,) = fake_graph.requests
    assert request["token_source"] == "query"
    assert request["path"] == f"/v26.0/{PIXEL}/events?access_token={TOKEN}"
    assert any("query string" in warning for warning in request["warnings"])


def test_authorization_value_is_redacted_and_unknown_params_warned(fake_graph: FakeGraph) -> None:
    post(fake_graph, {"data": [event()], "test_even_code": "T"})
    (request,) = fake_graph.requests
    assert request["headers"]["Authorization"] == "Bearer [redacted]"
    assert TOKEN not in json.dumps(request)
    assert request["warnings"] == ["unknown top-level parameter 'test_even_code'"]


@pytest.mark.parametrize("pixel", ["999", "abc"])
def test_unknown_pixel_is_100_33(pixel: str) -> None:
    with FakeGraph(pixels=[PIXEL]) as fake:
        response = post(fake, {"data": [event()]}, pixel=pixel)
        assert envelope_of(response) == (400, 100, 33)
        assert post(fake, {"data": [event()]}).status_code == 200


def test_unknown_path_and_get_on_the_edge_are_graph_errors(fake_graph: FakeGraph) -> None:
    unknown = httpx.post(f"{fake_graph.url}/v26.0/{PIXEL}/nope", headers=BEARER)
    assert envelope_of(unknown) == (400, 2500, None)
    get = httpx.get(f"{fake_graph.url}/v26.0/{PIXEL}/events", headers=BEARER)
    assert envelope_of(get) == (400, 100, None)


# --- body encodings -------------------------------------------------------------------------------


def test_form_encoded_data_as_one_json_string(fake_graph: FakeGraph) -> None:
    form = {"data": json.dumps([event(), event()]), "access_token": TOKEN, "test_event_code": "T"}
    response = post(fake_graph, data=form, headers={})
    assert response.json()["events_received"] == 2
    assert fake_graph.events[0]["test_event_code"] == "T"


def test_form_encoded_sdk_shape_array_of_json_strings(fake_graph: FakeGraph) -> None:
    data = json.dumps([json.dumps(event()), json.dumps(event())], separators=(",", ":"))
    response = post(fake_graph, data={"data": data}, headers=BEARER)
    assert response.json()["events_received"] == 2


def test_form_encoded_repeated_data_fields(fake_graph: FakeGraph) -> None:
    form = [("data", json.dumps(event())), ("data", json.dumps(event())), ("access_token", TOKEN)]
    body = urlencode(form).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    assert post(fake_graph, content=body, headers=headers).json()["events_received"] == 2


def test_multipart_form_like_metas_curl_example(fake_graph: FakeGraph) -> None:
    files = {"data": (None, json.dumps([event()])), "access_token": (None, TOKEN)}
    response = post(fake_graph, files=files, headers={})
    assert response.json()["events_received"] == 1


def test_chunked_json_body(fake_graph: FakeGraph) -> None:
    raw = json.dumps({"data": [event()]}).encode()
    chunks = iter([raw[:10], raw[10:]])
    headers = {**BEARER, "Content-Type": "application/json"}
    assert post(fake_graph, content=chunks, headers=headers).json()["events_received"] == 1


def test_unsupported_content_type_is_rejected(fake_graph: FakeGraph) -> None:
    headers = {**BEARER, "Content-Type": "text/plain"}
    assert envelope_of(post(fake_graph, content=b"data", headers=headers)) == (400, 100, None)


# --- Meta's own SDK -------------------------------------------------------------------------------


def sdk_events(count: int, event_time: int | None = None) -> list[Any]:
    from facebook_business.adobjects.serverside.action_source import ActionSource
    from facebook_business.adobjects.serverside.custom_data import CustomData
    from facebook_business.adobjects.serverside.event import Event
    from facebook_business.adobjects.serverside.user_data import UserData

    user = UserData(email="Joe@Example.com", client_user_agent="ua", fbp="fb.1.1.2")
    return [
        Event(
            event_name="Purchase",
            event_time=event_time or int(time.time()),
            event_id=f"sdk-{i}",
            user_data=user,
            custom_data=CustomData(currency="usd", value=1.5),
            action_source=ActionSource.WEBSITE,
            event_source_url="https://shop.test/",
        )
        for i in range(count)
    ]


@pytest.fixture
def sdk_api(fake_graph: FakeGraph) -> Any:
    """Meta's default API object, pointed at the fake: ``GRAPH`` set on the session instance
    (``FacebookAdsApi.call`` reads ``self._session.GRAPH``); restored afterwards."""
    from facebook_business.api import FacebookAdsApi
    from facebook_business.session import FacebookSession

    session = FacebookSession(access_token=TOKEN, app_secret="sdk-secret", timeout=10)
    session.GRAPH = fake_graph.url
    previous = FacebookAdsApi.get_default_api()
    FacebookAdsApi.set_default_api(FacebookAdsApi(session))
    yield fake_graph
    FacebookAdsApi.set_default_api(previous)
    session.requests.close()


def test_the_real_sdk_sends_to_the_fake(sdk_api: FakeGraph) -> None:
    from facebook_business.adobjects.serverside.event_request import EventRequest

    response = EventRequest(pixel_id=PIXEL, events=sdk_events(3), test_event_code="SDK1").execute()
    assert response.events_received == 3
    assert [e["event_id"] for e in sdk_api.events] == ["sdk-0", "sdk-1", "sdk-2"]
    assert sdk_api.events[0]["user_data"]["em"] == [hashlib.sha256(b"joe@example.com").hexdigest()]
    (request,) = sdk_api.requests
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert request["token_source"] == "query" and request["warnings"]
    assert "appsecret_proof=" in request["path"]


def test_the_real_sdk_gets_metas_error(sdk_api: FakeGraph) -> None:
    from facebook_business.adobjects.serverside.event_request import EventRequest
    from facebook_business.exceptions import FacebookRequestError

    old = int(time.time()) - 8 * 86400
    with pytest.raises(FacebookRequestError) as info:
        EventRequest(pixel_id=PIXEL, events=sdk_events(1, old)).execute()
    assert (info.value.api_error_code(), info.value.api_error_subcode()) == (100, 2804003)
    assert info.value.api_transient_error() is False


def test_the_real_async_sdk_sends_repeated_data_fields(
    sdk_api: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    from facebook_business.adobjects.serverside.event_request_async import EventRequestAsync
    from facebook_business.session import FacebookSession

    monkeypatch.setattr(FacebookSession, "GRAPH", sdk_api.url)  # the async path reads the class
    response = asyncio.run(EventRequestAsync(pixel_id=PIXEL, events=sdk_events(2)).execute())
    assert response.events_received == 2
    assert sdk_api.requests[0]["token_source"] == "body"


# --- faults ---------------------------------------------------------------------------------------


def test_faults_apply_in_order_for_count_requests(fake_graph: FakeGraph) -> None:
    fake_graph.add_fault(mode="status", status=500, count=2)
    fake_graph.add_fault(mode="code", code=190)
    fake_graph.add_fault(mode="reset")
    fake_graph.add_fault(mode="delay", seconds=0)
    assert fake_graph.pending_faults == 5
    statuses: list[int | None] = []
    for _ in range(6):
        try:
            statuses.append(post(fake_graph, {"data": [event()]}).status_code)
        except httpx.TransportError:
            statuses.append(None)
    assert statuses == [500, 500, 401, None, 200, 200]
    records = fake_graph.requests
    assert [r["fault"] for r in records] == ["status", "status", "code", "reset", "delay", None]
    assert [r["status"] for r in records] == statuses
    assert len(fake_graph.events) == 2 and fake_graph.pending_faults == 0


def test_status_and_code_faults_use_metas_envelope(fake_graph: FakeGraph) -> None:
    fake_graph.add_fault(mode="status", status=500)
    fake_graph.add_fault(mode="status", status=429, retry_after=1)
    fake_graph.add_fault(mode="code", code=100, subcode=2804019, message="Custom")
    server, throttled, custom = (post(fake_graph, {"data": [event()]}) for _ in range(3))
    assert error_of(server)["code"] == 2 and error_of(server)["is_transient"] is True
    assert (throttled.status_code, error_of(throttled)["code"]) == (429, 4)
    assert throttled.headers["Retry-After"] == "1"
    assert (custom.status_code, error_of(custom)["error_subcode"]) == (400, 2804019)
    assert error_of(custom)["message"] == "Custom"


def test_faults_skip_control_requests_and_can_be_cleared(fake_graph: FakeGraph) -> None:
    fake_graph.add_fault(mode="status", status=500, count=3)
    assert httpx.get(f"{fake_graph.url}/_fake/events").status_code == 200
    fake_graph.clear_faults()
    assert post(fake_graph, {"data": [event()]}).status_code == 200


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"mode": "explode"}, "mode must be one of"),
        ({"mode": "status", "status": 500, "seconds": 1}, "not allowed"),
        ({"mode": "status", "status": 200}, "400-599"),
        ({"mode": "reset", "count": 0}, "at least 1"),
        ({"mode": "reset", "count": "2"}, "integer"),
        ({"mode": "code"}, "needs a code"),
        ({"mode": "delay", "seconds": -1}, ">= 0"),
    ],
)
def test_bad_faults_are_refused_with_a_reason(
    fake_graph: FakeGraph, spec: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        fake_graph.add_fault(**spec)
    response = httpx.post(f"{fake_graph.url}/_fake/faults", json=spec)
    assert response.status_code == 400 and reason in response.json()["error"]
    assert fake_graph.pending_faults == 0


def test_stop_cuts_a_delay_short(fake_graph: FakeGraph) -> None:
    fake_graph.add_fault(mode="delay", seconds=600)
    outcome: list[Any] = []

    def send() -> None:
        try:
            outcome.append(post(fake_graph, {"data": [event()]}).status_code)
        except httpx.TransportError as exc:
            outcome.append(type(exc))

    before = set(threading.enumerate())
    sender = threading.Thread(target=send)
    sender.start()
    with fake_graph._changed:  # the handler has taken the fault: it is waiting now
        assert fake_graph._changed.wait_for(lambda: fake_graph.pending_faults == 0, 10)
    fake_graph.stop()
    for thread in set(threading.enumerate()) - before:  # the sender and the handler thread
        thread.join(30)
        assert not thread.is_alive(), f"{thread.name} still runs after stop()"
    assert outcome and outcome[0] != 200 and fake_graph.events == []


def test_release_held_answers_a_delayed_request_now(fake_graph: FakeGraph) -> None:
    fake_graph.add_fault(mode="delay", seconds=600)
    outcome: list[int] = []
    sender = threading.Thread(
        target=lambda: outcome.append(post(fake_graph, {"data": [event()]}).status_code)
    )
    sender.start()
    assert fake_graph.wait_for(lambda g: g.pending_faults == 0, 10)  # the request is held
    assert fake_graph.requests == []
    fake_graph.release_held()
    sender.join(30)
    assert outcome == [200] and len(fake_graph.events) == 1  # answered as usual


# --- control API ----------------------------------------------------------------------------------


def test_control_api(fake_graph: FakeGraph) -> None:
    base = f"{fake_graph.url}/_fake"
    post(fake_graph, {"data": [event()]})
    assert httpx.get(f"{base}/events").json()["events"][0]["event_name"] == "Lead"
    assert httpx.get(f"{base}/requests").json()["requests"][0]["status"] == 200
    queued = httpx.post(f"{base}/faults", json={"mode": "status", "status": 503, "count": 2})
    assert queued.status_code == 201 and queued.json()["pending"] == 2
    assert post(fake_graph, {"data": [event()]}).status_code == 503
    assert httpx.delete(f"{base}/faults").status_code == 200
    assert post(fake_graph, {"data": [event()]}).status_code == 200
    assert httpx.delete(f"{base}/events").status_code == 200
    assert fake_graph.events == [] and len(fake_graph.requests) == 3
    assert httpx.delete(f"{base}/requests").status_code == 200 and fake_graph.requests == []
    assert httpx.delete(f"{base}/nothing").status_code == 404
    bad = httpx.post(f"{base}/faults", content=b"[1]")
    assert bad.status_code == 400 and "JSON object" in bad.json()["error"]


def test_wait_for_events_blocks_until_accepted(fake_graph: FakeGraph) -> None:
    assert fake_graph.wait_for_events(1, timeout=0) is False  # checked, not waited for
    poster = threading.Thread(target=post, args=(fake_graph, {"data": [event(), event()]}))
    poster.start()
    assert fake_graph.wait_for_events(2, timeout=10) is True
    poster.join(30)  # its answer read before the fake stops (else the thread fails unseen)


# --- the wire -------------------------------------------------------------------------------------


def test_each_reply_is_one_write_on_a_nodelay_keep_alive_socket(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[int, int, int]] = []
    writer: Any = socketserver._SocketWriter  # type: ignore[attr-defined]  # stdlib, since 3.6
    original = writer.write

    def spy(self: Any, data: bytes) -> int:
        nodelay = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        writes.append((id(self._sock), nodelay, len(data)))
        result: int = original(self, data)
        return result

    monkeypatch.setattr(writer, "write", spy)
    with httpx.Client(headers=BEARER) as client:
        bodies: list[dict[str, Any]] = [{"data": [event()]}, {"data": []}, {"data": [event()]}]
        for body in bodies:
            client.post(f"{fake_graph.url}/v26.0/{PIXEL}/events", json=body)
    assert len(writes) == 3, "headers and body must go out in one write per reply"
    assert len({sock for sock, _, _ in writes}) == 1, "HTTP/1.1 keep-alive was not used"
    assert all(nodelay for _, nodelay, _ in writes), "TCP_NODELAY is not set"


def test_full_response_arrives_in_one_recv(fake_graph: FakeGraph) -> None:
    body = json.dumps({"data": [event()]}).encode()
    host, port = fake_graph.url.removeprefix("http://").split(":")
    request = (
        f"POST /v26.0/{PIXEL}/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for _ in range(2):  # twice on one connection: keep-alive
            sock.sendall(request + body)
            data = sock.recv(65536)
            head, _, payload = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            length = int(
                next(h for h in head.split(b"\r\n") if h.startswith(b"Content-Length:"))[15:]
            )
            assert len(payload) == length and json.loads(payload)["events_received"] == 1


# --- serve_forever (the CLI command) --------------------------------------------------------------


def test_cli_fake_graph_prints_the_url_and_stops_on_sigterm() -> None:
    command = [sys.executable, "-m", "capi_bridge.cli", "fake-graph", "--port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        assert process.stdout is not None
        first = process.stdout.readline()
        url = first.split("listening on ", 1)[1].split()[0]
        hint = process.stdout.readline() + process.stdout.readline()
        assert f"CAPI_BRIDGE_GRAPH_URL={url}" in hint
        answer = httpx.post(f"{url}/v26.0/1/events", json={"data": [event()]}, headers=BEARER)
        assert answer.status_code == 200
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=30)[0]
    assert process.returncode == 0
    assert "stopped (1 events accepted)" in rest


def test_serve_forever_reports_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert serve_forever("127.0.0.1", busy.getsockname()[1]) == 1
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err
