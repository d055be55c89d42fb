"""GraphClient and AsyncGraphClient against the real fake Graph API over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import pickle
import socket
import time
from typing import Any

import pytest

from capi_bridge import __version__
from capi_bridge.graph import (
    AsyncGraphClient,
    ErrorKind,
    GraphClient,
    GraphError,
    GraphResult,
    build_body,
    build_body_encoded,
    classify,
    parse_response,
    parse_retry_after,
)
from capi_bridge.settings import Settings
from capi_bridge.testing import FakeGraph

PIXEL = "1234567890"
TOKEN = "test-token"
HASHED = hashlib.sha256(b"joe@example.com").hexdigest()


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": int(time.time()),
        "action_source": "website",
        "event_id": "order-1",
        "user_data": {"em": [HASHED], "client_user_agent": "Mozilla/5.0"},
        "custom_data": {"currency": "usd", "value": 12.5},
    }
    base.update(overrides)
    return base


@pytest.fixture
def client(fake_graph: FakeGraph) -> Any:
    with GraphClient(TOKEN, graph_url=fake_graph.url) as graph:
        yield graph


def send_error(client: GraphClient, events: list[dict[str, Any]] | None = None) -> GraphError:
    with pytest.raises(GraphError) as info:
        client.send(PIXEL, events or [event()])
    return info.value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- success --------------------------------------------------------------------------------------


def test_send_returns_metas_result_and_the_fake_stores_the_events(
    client: GraphClient, fake_graph: FakeGraph
) -> None:
    result = client.send(PIXEL, [event(), event(event_id="order-2")], test_event_code="TEST42")
    assert isinstance(result, GraphResult)
    assert result.events_received == 2
    assert result.messages == []
    assert result.fbtrace_id
    stored = fake_graph.events
    assert [e["event_id"] for e in stored] == ["order-1", "order-2"]
    assert {e["pixel_id"] for e in stored} == {PIXEL}
    assert {e["test_event_code"] for e in stored} == {"TEST42"}


def test_request_carries_partner_agent_user_agent_and_optional_fields_only_when_set(
    client: GraphClient, fake_graph: FakeGraph
) -> None:
    client.send(PIXEL, [event()])
    client.send(PIXEL, [event()], test_event_code="T1")
    first, second = fake_graph.requests
    assert first["params"] == {"partner_agent": "capibridge_0_1"}
    assert second["params"] == {"partner_agent": "capibridge_0_1", "test_event_code": "T1"}
    assert first["headers"]["User-Agent"] == f"capi-bridge/{__version__}"
    assert first["headers"]["Content-Type"] == "application/json"
    assert first["path"] == f"/v26.0/{PIXEL}/events"
    assert first["peer"] == second["peer"], "the pooled keep-alive connection was not reused"


def test_body_is_compact_json_with_the_events_first() -> None:
    body = build_body([event()], partner_agent="agent_1_0")
    assert body.startswith(b'{"data":[{"event_name":"Purchase",')
    assert b", " not in body and b": " not in body
    assert json.loads(body)["partner_agent"] == "agent_1_0"


@pytest.mark.parametrize(
    "optional",
    [{}, {"test_event_code": "T1"}, {"test_event_code": "T1", "proof": "ab12"}],
)
def test_pre_encoded_events_give_the_same_bytes(optional: dict[str, str]) -> None:
    events = [event(), event(event_id="é-2", custom_data={"value": 1.0})]
    texts = [json.dumps(e, separators=(",", ":")) for e in events]
    expected = build_body(events, partner_agent="agent_1_0", **optional)
    assert build_body_encoded(texts, partner_agent="agent_1_0", **optional) == expected
    assert build_body_encoded(texts, partner_agent=None) == build_body(events, partner_agent=None)


def test_send_encoded_delivers_and_refuses_oversized_batches(
    client: GraphClient, fake_graph: FakeGraph
) -> None:
    texts = [json.dumps(event(event_id=f"e{i}")) for i in range(3)]
    assert client.send_encoded(PIXEL, texts, test_event_code="T").events_received == 3
    assert [e["event_id"] for e in fake_graph.events] == ["e0", "e1", "e2"]
    with pytest.raises(ValueError, match="at most 1000"):
        client.send_encoded(PIXEL, texts * 334)
    fake_graph.add_fault(mode="code", code=190)
    with pytest.raises(GraphError) as info:
        client.send_encoded(PIXEL, texts)
    assert info.value.kind is ErrorKind.AUTH


def test_from_settings_uses_url_version_timeout_and_app_secret(fake_graph: FakeGraph) -> None:
    settings = Settings(
        pixel_id=PIXEL,
        access_token=TOKEN,
        app_secret="app-secret",
        graph_url=fake_graph.url,
        api_version="v25.0",
        partner_agent="shop_2_1",
    )
    with GraphClient.from_settings(settings) as graph:
        assert graph.send(PIXEL, [event()]).events_received == 1
    (request,) = fake_graph.requests
    assert request["path"].startswith("/v25.0/")
    assert request["params"]["partner_agent"] == "shop_2_1"
    assert "appsecret_proof" in request["params"]


# --- secrets --------------------------------------------------------------------------------------


def test_token_travels_only_in_the_authorization_header() -> None:
    token = "EAAB-very-secret-token-value"
    with FakeGraph(token=token) as fake, GraphClient(token, graph_url=fake.url) as graph:
        graph.send(PIXEL, [event()])
        (request,) = fake.requests
    assert request["token_source"] == "authorization"  # the fake found it there and accepted it
    assert request["headers"]["Authorization"] == "Bearer [redacted]"
    assert token not in request["path"] and "access_token" not in request["path"]
    assert "access_token" not in request["params"]
    assert request["warnings"] == []


def test_appsecret_proof_is_hmac_sha256_of_the_token_and_the_fake_checks_it() -> None:
    with FakeGraph(app_secret="s3cret") as fake:
        with GraphClient(TOKEN, graph_url=fake.url, app_secret="s3cret") as graph:
            assert graph.send(PIXEL, [event()]).events_received == 1
        with GraphClient(TOKEN, graph_url=fake.url, app_secret="wrong") as graph:
            error = send_error(graph)
        with GraphClient(TOKEN, graph_url=fake.url) as graph:
            missing = send_error(graph)
        sent = fake.requests[0]["params"]["appsecret_proof"]
    expected = hmac.new(b"s3cret", TOKEN.encode(), hashlib.sha256).hexdigest()
    assert sent == expected
    assert error.code == missing.code == 100
    assert "appsecret_proof" in error.message


def test_repr_str_and_logs_never_show_the_token_or_payload(
    fake_graph: FakeGraph, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="capi_bridge.graph")
    token = "EAAB-secret-token"
    with GraphClient(token, graph_url=fake_graph.url, app_secret="app-secret") as graph:
        auth_error = send_error(graph)
        fake_graph.add_fault(mode="reset")
        network = send_error(graph)
        text = " ".join([repr(graph), str(auth_error), repr(auth_error), str(network)])
    assert auth_error.kind is ErrorKind.AUTH
    assert "GraphClient(graph_url=" in repr(graph)
    ours = [record for record in caplog.records if record.name == "capi_bridge.graph"]
    logged = " ".join(record.getMessage() for record in ours)
    assert len(ours) == 2
    for secret in (token, "app-secret", HASHED, "order-1"):
        assert secret not in text
        assert secret not in logged


# --- refusing what Meta would reject whole --------------------------------------------------------


@pytest.mark.parametrize(
    ("pixel", "count", "problem"),
    [(PIXEL, 1001, "at most 1000"), (PIXEL, 0, "no events"), ("12/../34", 1, "not a pixel id")],
)
def test_caller_errors_raise_value_error_before_any_request(
    client: GraphClient, fake_graph: FakeGraph, pixel: str, count: int, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        client.send(pixel, [event()] * count)
    assert fake_graph.requests == []


def test_exactly_1000_events_are_accepted(client: GraphClient) -> None:
    assert client.send(PIXEL, [event()] * 1000).events_received == 1000


# --- classification of the fake's real answers ----------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "status", "code"),
    [
        ({"mode": "status", "status": 500}, ErrorKind.RETRY, 500, 2),
        ({"mode": "status", "status": 503}, ErrorKind.RETRY, 503, 2),
        ({"mode": "code", "code": 190}, ErrorKind.AUTH, 401, 190),
        ({"mode": "code", "code": 190, "subcode": 463}, ErrorKind.AUTH, 401, 190),
        ({"mode": "code", "code": 102}, ErrorKind.AUTH, 401, 102),
        ({"mode": "code", "code": 1}, ErrorKind.RETRY, 500, 1),
        ({"mode": "code", "code": 4}, ErrorKind.RETRY, 400, 4),
        ({"mode": "code", "code": 17}, ErrorKind.RETRY, 400, 17),
        ({"mode": "code", "code": 341}, ErrorKind.RETRY, 400, 341),
        ({"mode": "code", "code": 368}, ErrorKind.RETRY, 400, 368),
        ({"mode": "code", "code": 3}, ErrorKind.CONFIG, 400, 3),
        ({"mode": "code", "code": 10}, ErrorKind.CONFIG, 400, 10),
        ({"mode": "code", "code": 200}, ErrorKind.CONFIG, 400, 200),
        ({"mode": "code", "code": 100, "subcode": 33}, ErrorKind.CONFIG, 400, 100),
        ({"mode": "code", "code": 100, "subcode": 2804019}, ErrorKind.REJECTED, 400, 100),
        ({"mode": "code", "code": 100}, ErrorKind.REJECTED, 400, 100),
    ],
)
def test_fault_answers_are_classified(
    client: GraphClient,
    fake_graph: FakeGraph,
    fault: dict[str, Any],
    kind: ErrorKind,
    status: int,
    code: int,
) -> None:
    fake_graph.add_fault(**fault)
    error = send_error(client)
    assert (error.kind, error.status, error.code) == (kind, status, code)
    assert error.error_subcode == fault.get("subcode")
    assert error.type == "OAuthException"
    assert error.fbtrace_id and error.fbtrace_id in str(error)
    assert f"code {code}" in str(error)
    assert fake_graph.events == []


def test_500_is_transient_and_429_carries_retry_after(
    client: GraphClient, fake_graph: FakeGraph
) -> None:
    fake_graph.add_fault(mode="status", status=500)
    fake_graph.add_fault(mode="status", status=429, retry_after=1)
    fake_graph.add_fault(mode="status", status=503, retry_after=2.5)
    server_error, throttled, unavailable = (send_error(client) for _ in range(3))
    assert server_error.is_transient is True and server_error.retry_after is None
    assert (throttled.kind, throttled.code, throttled.retry_after) == (ErrorKind.RETRY, 4, 1.0)
    assert unavailable.retry_after == 2.5


def test_delay_past_the_client_timeout_is_retry(fake_graph: FakeGraph) -> None:
    fake_graph.add_fault(mode="delay", seconds=30)
    url = f"{fake_graph.url}/v26.0/{PIXEL}/events"
    with GraphClient(TOKEN, graph_url=fake_graph.url, timeout=0.2) as graph:
        error = send_error(graph)
    assert (error.kind, error.status, error.code) == (ErrorKind.RETRY, None, None)
    assert str(error) == f"no response within 0.2s from {url}"


def test_reset_connection_is_retry(client: GraphClient, fake_graph: FakeGraph) -> None:
    fake_graph.add_fault(mode="reset")
    error = send_error(client)
    assert (error.kind, error.status) == (ErrorKind.RETRY, None)
    assert f"{fake_graph.url}/v26.0/{PIXEL}/events" in str(error)
    assert client.send(PIXEL, [event()]).events_received == 1  # the pool recovers


def test_unreachable_server_is_retry_with_a_useful_message() -> None:
    port = closed_port()
    with GraphClient(TOKEN, graph_url=f"http://127.0.0.1:{port}") as graph:
        error = send_error(graph)
    assert error.kind is ErrorKind.RETRY and error.status is None
    expected = f"could not connect to http://127.0.0.1:{port}/v26.0/{PIXEL}/events"
    assert str(error) == f"{expected}: connection refused"


def test_bad_token_is_auth(fake_graph: FakeGraph) -> None:
    with GraphClient("not-the-token", graph_url=fake_graph.url) as graph:
        error = send_error(graph)
    assert (error.kind, error.status, error.code) == (ErrorKind.AUTH, 401, 190)
    assert error.message == "Invalid OAuth access token - Cannot parse access token"


def test_unknown_pixel_is_config() -> None:
    with FakeGraph(pixels=["111"]) as fake, GraphClient(TOKEN, graph_url=fake.url) as graph:
        error = send_error(graph)
    assert (error.kind, error.code, error.error_subcode) == (ErrorKind.CONFIG, 100, 33)
    assert f"Object with ID '{PIXEL}' does not exist" in error.message


def test_wrong_graph_url_path_is_config(fake_graph: FakeGraph) -> None:
    with GraphClient(TOKEN, graph_url=fake_graph.url + "/some/prefix") as graph:
        error = send_error(graph)
    assert (error.kind, error.code) == (ErrorKind.CONFIG, 2500)


@pytest.mark.parametrize(
    ("bad", "subcode", "title"),
    [
        (event(event_time=int(time.time()) - 8 * 86400), 2804003, "Event Timestamp Too Old"),
        (event(user_data={"em": "joe@example.com"}), 2804016, "User Parameter Not Hashed"),
        (event(user_data={"ge": [HASHED], "fn": [HASHED]}), 2804050, "Insufficient"),
    ],
)
def test_capi_rejections_are_rejected_with_metas_texts(
    client: GraphClient, fake_graph: FakeGraph, bad: dict[str, Any], subcode: int, title: str
) -> None:
    error = send_error(client, [event(), bad])
    assert (error.kind, error.status, error.code) == (ErrorKind.REJECTED, 400, 100)
    assert error.error_subcode == subcode
    assert error.message == "Invalid parameter"
    assert error.error_user_title is not None and error.error_user_title.startswith(title)
    assert error.error_user_msg and error.error_user_msg in str(error)
    assert error.is_transient is False
    assert error.fbtrace_id and error.fbtrace_id in str(error)
    assert fake_graph.events == [], "one bad event must reject the whole batch"


def test_unexpected_key_is_rejected_with_metas_message(client: GraphClient) -> None:
    error = send_error(client, [event(advertiser_tracking_enabled=True)])
    assert error.kind is ErrorKind.REJECTED
    assert error.message == 'Unexpected key "advertiser_tracking_enabled" on param "$[\'data\'][0]"'


# --- pure functions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "subcode", "transient", "kind"),
    [
        (None, None, None, None, ErrorKind.RETRY),
        (500, None, None, None, ErrorKind.RETRY),
        (502, 100, None, False, ErrorKind.RETRY),
        (429, None, None, None, ErrorKind.RETRY),
        (408, None, None, None, ErrorKind.RETRY),
        (400, 100, 2804003, True, ErrorKind.RETRY),
        (400, 1, None, None, ErrorKind.RETRY),
        (400, 2, None, None, ErrorKind.RETRY),
        (400, 4, None, False, ErrorKind.RETRY),
        (400, 17, None, None, ErrorKind.RETRY),
        (400, 341, None, None, ErrorKind.RETRY),
        (400, 368, None, None, ErrorKind.RETRY),
        (401, 190, 460, False, ErrorKind.AUTH),
        (400, 190, None, None, ErrorKind.AUTH),
        (400, 102, None, None, ErrorKind.AUTH),
        (401, None, None, None, ErrorKind.AUTH),
        (400, 100, 33, False, ErrorKind.CONFIG),
        (400, 3, None, None, ErrorKind.CONFIG),
        (403, 10, None, None, ErrorKind.CONFIG),
        (403, 200, None, None, ErrorKind.CONFIG),
        (403, 299, None, None, ErrorKind.CONFIG),
        (404, None, None, None, ErrorKind.CONFIG),
        (301, None, None, None, ErrorKind.CONFIG),
        (400, 100, 2804003, False, ErrorKind.REJECTED),
        (400, 100, 2804050, None, ErrorKind.REJECTED),
        (400, 100, None, False, ErrorKind.REJECTED),
        (400, 9999, None, None, ErrorKind.REJECTED),
        (400, None, None, None, ErrorKind.REJECTED),
        (413, None, None, None, ErrorKind.REJECTED),
    ],
)
def test_classify(
    status: int | None,
    code: int | None,
    subcode: int | None,
    transient: bool | None,
    kind: ErrorKind,
) -> None:
    assert classify(status, code, subcode, transient) is kind


def test_parse_response_tolerates_missing_fields_and_reads_the_trace_header() -> None:
    result = parse_response(200, {"x-fb-trace-id": "T"}, b'{"events_received":3,"messages":[7]}')
    assert result == GraphResult(3, ["7"], "T")
    envelope = {
        "error": {"message": "m", "code": "4", "error_data": '{"blame_field_specs":[["x"]]}'}
    }
    with pytest.raises(GraphError) as info:
        parse_response(400, {}, json.dumps(envelope).encode())
    error = info.value
    assert (error.code, error.blame_field_specs, error.kind) == (4, [["x"]], ErrorKind.RETRY)


@pytest.mark.parametrize(
    ("status", "kind"), [(502, ErrorKind.RETRY), (200, ErrorKind.RETRY), (404, ErrorKind.CONFIG)]
)
def test_non_graph_answers_are_errors_that_say_so(status: int, kind: ErrorKind) -> None:
    headers = {"content-type": "text/html; charset=utf-8"}
    with pytest.raises(GraphError) as info:
        parse_response(status, headers, b"<html>Bad gateway</html>")
    assert info.value.kind is kind
    assert str(info.value) == (
        f"Graph API error (HTTP {status}): HTTP {status} with a text/html body (24 bytes) "
        "that is not a Graph API answer"
    )


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = parse_retry_after(
        time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    )
    assert later is not None and 50 < later <= 60


def test_graph_error_pickles_with_all_fields() -> None:
    error = GraphError("m", status=429, code=4, fbtrace_id="T", retry_after=2.0)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.kind, copy.retry_after, copy.fbtrace_id, str(copy)) == (
        ErrorKind.RETRY,
        2.0,
        "T",
        str(error),
    )


# --- async client ---------------------------------------------------------------------------------


def test_async_client_sends_and_parses_the_same(fake_graph: FakeGraph) -> None:
    async def main() -> GraphResult:
        async with AsyncGraphClient(TOKEN, graph_url=fake_graph.url, app_secret="s") as graph:
            assert TOKEN not in repr(graph) and "AsyncGraphClient(graph_url=" in repr(graph)
            return await graph.send(PIXEL, [event()], test_event_code="T2")

    result = asyncio.run(main())
    assert result.events_received == 1
    (request,) = fake_graph.requests
    assert request["token_source"] == "authorization" and request["warnings"] == []
    assert request["params"]["test_event_code"] == "T2"
    assert fake_graph.events[0]["event_id"] == "order-1"


def test_async_client_classifies_faults_and_network_errors(fake_graph: FakeGraph) -> None:
    fake_graph.add_fault(mode="status", status=429, retry_after=1)
    fake_graph.add_fault(mode="code", code=190)
    fake_graph.add_fault(mode="delay", seconds=30)
    settings = Settings(
        pixel_id=PIXEL, access_token=TOKEN, graph_url=fake_graph.url, request_timeout=0.2
    )

    async def collect() -> list[GraphError]:
        errors = []
        async with AsyncGraphClient.from_settings(settings) as graph:
            for bad in ([event()], [event()], [event()], [event(user_data={"em": "raw"})]):
                with pytest.raises(GraphError) as info:
                    await graph.send(PIXEL, bad)
                errors.append(info.value)
        async with AsyncGraphClient(TOKEN, graph_url=f"http://127.0.0.1:{closed_port()}") as dead:
            with pytest.raises(GraphError) as info:
                await dead.send(PIXEL, [event()])
            errors.append(info.value)
        return errors

    throttled, auth, slow, rejected, unreachable = asyncio.run(collect())
    assert (throttled.kind, throttled.retry_after) == (ErrorKind.RETRY, 1.0)
    assert auth.kind is ErrorKind.AUTH
    assert (slow.kind, slow.status) == (ErrorKind.RETRY, None)
    assert (rejected.kind, rejected.error_subcode) == (ErrorKind.REJECTED, 2804016)
    assert unreachable.kind is ErrorKind.RETRY
    assert str(unreachable).startswith("could not connect to http://127.0.0.1:")
