"""``capi-bridge check`` as a user runs it: a real process, configured by environment variables,
talking to a real (fake) Graph API server started here. The token must never be printed."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from capi_bridge import __version__
from capi_bridge.normalize import hash_user_data
from capi_bridge.testing import FakeGraph

PIXEL = "1234567890"
TOKEN = "EAAB-secret-token-never-printed-42"
CODE = "TEST4242"


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def check(env: dict[str, str], *args: str) -> Run:
    """``capi-bridge check`` in a subprocess, with only ``env``'s CAPI_BRIDGE_* variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CAPI_BRIDGE_")}
    done = subprocess.run(
        [sys.executable, "-m", "capi_bridge.cli", "check", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    run = Run(done.returncode, done.stdout, done.stderr)
    assert TOKEN not in run.text  # whatever happened, the token was not printed
    assert "Traceback" not in run.err
    return run


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph(token=TOKEN, pixels=[PIXEL]) as fake:
        yield fake


def settings_for(graph: FakeGraph, **extra: str) -> dict[str, str]:
    env = {
        "CAPI_BRIDGE_PIXEL_ID": PIXEL,
        "CAPI_BRIDGE_ACCESS_TOKEN": TOKEN,
        "CAPI_BRIDGE_GRAPH_URL": graph.url,
        "CAPI_BRIDGE_TEST_EVENT_CODE": CODE,
    }
    env.update({f"CAPI_BRIDGE_{k.upper()}": v for k, v in extra.items()})
    return env


def test_success_sends_exactly_one_test_event(graph: FakeGraph) -> None:
    run = check(settings_for(graph))
    assert run.code == 0, run.text
    [request] = graph.requests
    [event] = graph.events
    assert "events_received 1" in run.out
    assert re.search(r"fbtrace_id [\w-]{6,}", run.out)  # the fake's trace id, as Meta's
    assert "Test events" in run.out and CODE in run.out
    assert event["test_event_code"] == CODE and event["pixel_id"] == PIXEL
    assert event["action_source"] == "website" and event["event_source_url"].startswith("https://")
    assert event["user_data"]["client_user_agent"] == f"capi-bridge-check/{__version__}"
    expected = hash_user_data({"external_id": "capi-bridge-check"})["external_id"]
    assert event["user_data"]["external_id"] == expected
    assert request["token_source"] == "authorization" and request["warnings"] == []


def test_flags_override_the_environment(graph: FakeGraph) -> None:
    env = settings_for(graph, pixel_id="999", test_event_code="")
    url = "https://shop.example/"
    run = check(env, "--pixel-id", PIXEL, "--test-event-code", "TESTFLAG", "--url", url)
    assert run.code == 0, run.text
    [event] = graph.events
    assert (event["pixel_id"], event["test_event_code"]) == (PIXEL, "TESTFLAG")
    assert event["event_source_url"] == url


def test_bad_token_explains_how_to_make_one(graph: FakeGraph) -> None:
    run = check(settings_for(graph), "--access-token", "EAAB-expired")
    assert run.code == 1
    assert "code 190" in run.err and "invalid, expired or revoked" in run.err
    assert "System users" in run.err and "ads_management" in run.err
    assert "fbtrace_id" in run.err
    assert graph.events == []


def test_token_is_masked_even_when_the_server_echoes_it(graph: FakeGraph) -> None:
    graph.add_fault(mode="code", code=100, message=f"(#100) bad token {TOKEN} in request")
    run = check(settings_for(graph))  # check() asserts the token is absent from the output
    assert run.code == 1 and "[access token]" in run.err


def test_unknown_pixel_explains_id_or_access() -> None:
    with FakeGraph(token=TOKEN, pixels=["111"]) as graph:
        run = check(settings_for(graph))
    assert run.code == 1
    assert f"does not know pixel {PIXEL}" in run.err and "subcode 33" in run.err
    assert "CAPI_BRIDGE_PIXEL_ID" in run.err


def test_insufficient_customer_information(graph: FakeGraph) -> None:
    graph.add_fault(mode="code", code=100, subcode=2804050)
    run = check(settings_for(graph))
    assert run.code == 1
    assert "too little customer information" in run.err and "2804050" in run.err


def test_other_meta_errors_show_metas_words(graph: FakeGraph) -> None:
    graph.add_fault(mode="code", code=4, status=400, message="(#4) Application request limit")
    run = check(settings_for(graph))
    assert run.code == 1
    assert "(#4) Application request limit" in run.err and "code 4" in run.err
    assert "fbtrace_id" in run.err and "try again" in run.err


def test_unreachable_server_says_what_was_tried() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # nothing listens there any more: connection refused
    env = {
        "CAPI_BRIDGE_PIXEL_ID": PIXEL,
        "CAPI_BRIDGE_ACCESS_TOKEN": TOKEN,
        "CAPI_BRIDGE_GRAPH_URL": url,
        "CAPI_BRIDGE_TEST_EVENT_CODE": CODE,
    }
    run = check(env)
    assert run.code == 1
    assert f"POST {url}/v26.0/{PIXEL}/events" in run.err
    assert "running and reachable" in run.err


def test_no_test_event_code_sends_nothing(graph: FakeGraph) -> None:
    env = settings_for(graph)
    del env["CAPI_BRIDGE_TEST_EVENT_CODE"]
    run = check(env)
    assert run.code == 2
    assert "Test events" in run.err and "--test-event-code" in run.err
    assert graph.requests == []


def test_missing_setting_names_it(graph: FakeGraph) -> None:
    env = settings_for(graph)
    del env["CAPI_BRIDGE_PIXEL_ID"]
    run = check(env)
    assert run.code == 2
    assert "CAPI_BRIDGE_PIXEL_ID" in run.err and "Fix:" in run.err
    assert graph.requests == []


def test_a_bad_flag_is_named_as_typed(graph: FakeGraph) -> None:
    run = check(settings_for(graph), "--access-token", "Bearer EAAB-pasted-with-its-prefix")
    assert run.code == 2 and graph.requests == []
    assert "--access-token: the value starts with 'Bearer '" in run.err  # not access_token
    run = check(settings_for(graph, graph_url="http://[::1"))
    assert run.code == 2 and "CAPI_BRIDGE_GRAPH_URL: 'http://[::1' does not parse" in run.err
