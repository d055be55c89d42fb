"""The Flask extension: init_app, settings from app.config, template tag, identify and track."""

from __future__ import annotations

from collections.abc import Iterator
from hashlib import sha256
from typing import Any

import pytest
from flask import Flask, Response, render_template_string, stream_with_context
from helpers.web import BROWSER, SECRET, events_body, page_config, pixel_twins, set_cookies

from capi_bridge.errors import ConfigError
from capi_bridge.flask import EXTENSION_KEY, CapiBridge
from capi_bridge.pages import PENDING_COOKIE, PageBridge
from capi_bridge.testing import FakeGraph

TEMPLATE = "<html><head><title>t</title></head><body><h1>{{ title }}</h1></body></html>"
PLACED = "<html><head>{{ capi_pixel() }}</head><body>placed</body></html>"


def make_app(fake_graph: FakeGraph, outbox_path: str, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        {
            "SECRET_KEY": SECRET,
            "CAPI_BRIDGE_PIXEL_ID": "1234567890",
            "CAPI_BRIDGE_ACCESS_TOKEN": "test-token",
            "CAPI_BRIDGE_GRAPH_URL": fake_graph.url,
            "CAPI_BRIDGE_OUTBOX_PATH": outbox_path,
            "CAPI_BRIDGE_LINGER": "0.02",
            **config,
        }
    )
    capi = CapiBridge()
    capi.init_app(app)
    app.extensions["test_capi"] = capi

    @app.get("/")
    def index() -> str:
        return render_template_string(TEMPLATE, title="home")

    @app.get("/placed")
    def placed() -> str:
        return render_template_string(PLACED)

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            yield "<html><he"
            yield "ad></head><body>"
            yield "streamed</body></html>"

        return Response(stream_with_context(chunks()), mimetype="text/html")

    @app.get("/account")
    def account() -> str:
        capi.identify(em="Jane@Example.com", external_id="user-7")
        return render_template_string(TEMPLATE, title="account")

    @app.post("/pay")
    def pay() -> Any:
        capi.identify(em="Jane@Example.com")
        capi.track("Purchase", custom_data={"value": 10, "currency": "EUR"})
        return "", 303, {"Location": "/"}

    @app.post("/api/lead")
    def api_lead() -> dict[str, str]:
        capi.identify(external_id="user-7")
        return {"event_id": capi.track("Lead")}

    return app


@pytest.fixture
def app(fake_graph: FakeGraph, outbox_path: str) -> Iterator[Flask]:
    app = make_app(fake_graph, outbox_path)
    yield app
    app.extensions[EXTENSION_KEY].close(timeout=0)


def test_init_app_keeps_state_in_extensions_and_reads_secret_key(app: Flask) -> None:
    core = app.extensions[EXTENSION_KEY]
    assert isinstance(core, PageBridge)
    assert core.settings.secret_key == SECRET  # from SECRET_KEY: no second secret to manage
    assert not hasattr(app.extensions["test_capi"], "app")


def test_page_gets_the_snippet_and_cookies(app: Flask) -> None:
    response = app.test_client().get("/", headers=BROWSER)
    html = response.get_data(as_text=True)
    assert html.index("window.capiBridgeConfig") < html.index("</head>")
    assert int(response.headers["Content-Length"]) == len(response.get_data())
    assert "_fbp" in set_cookies(response.headers)


def test_streamed_page_gets_the_snippet(app: Flask) -> None:
    html = app.test_client().get("/stream", headers=BROWSER).get_data(as_text=True)
    assert html.startswith("<html><head><script")
    assert html.endswith("</head><body>streamed</body></html>")


def test_template_tag_places_the_snippet_once(app: Flask) -> None:
    html = app.test_client().get("/placed", headers=BROWSER).get_data(as_text=True)
    assert html.count("window.capiBridgeConfig=") == 1
    assert html.startswith("<html><head><script")


def test_auto_inject_off_leaves_pages_to_the_template_tag(
    fake_graph: FakeGraph, outbox_path: str
) -> None:
    app = make_app(fake_graph, outbox_path, CAPI_BRIDGE_AUTO_INJECT="false")
    client = app.test_client()
    assert "capiBridgeConfig" not in client.get("/", headers=BROWSER).get_data(as_text=True)
    assert "capiBridgeConfig" in client.get("/placed", headers=BROWSER).get_data(as_text=True)
    app.extensions[EXTENSION_KEY].close(timeout=0)


def test_a_misspelled_setting_fails_at_start_up_naming_it(
    fake_graph: FakeGraph, outbox_path: str
) -> None:
    with pytest.raises(Exception, match="CAPI_BRIDGE_PIXELID"):
        make_app(fake_graph, outbox_path, CAPI_BRIDGE_PIXELID="1")


@pytest.mark.parametrize("allowed", [False, True])
def test_identify_reaches_advanced_matching_only_when_allowed(
    fake_graph: FakeGraph, outbox_path: str, allowed: bool
) -> None:
    app = make_app(fake_graph, outbox_path, CAPI_BRIDGE_ADVANCED_MATCHING=str(allowed))
    html = app.test_client().get("/account", headers=BROWSER).get_data(as_text=True)
    assert ('"em":"jane@example.com"' in html) is allowed
    app.extensions[EXTENSION_KEY].close(timeout=0)


def test_browser_event_carries_the_identified_user(app: Flask, fake_graph: FakeGraph) -> None:
    client = app.test_client()
    page = client.get("/", headers=BROWSER)
    config = page_config(page.get_data(as_text=True))
    reply = client.post(
        config["endpoint"],
        data=events_body(config["token"], ("PageView", config["pv"])),
        headers={**BROWSER, "Content-Type": "text/plain", "Origin": "http://localhost"},
    )
    assert reply.status_code == 202, reply.get_data(as_text=True)
    assert app.extensions[EXTENSION_KEY].bridge.flush(10)
    assert [e["event_id"] for e in fake_graph.events] == [config["pv"]]


def test_track_sends_now_and_stitches_the_next_page(app: Flask, fake_graph: FakeGraph) -> None:
    client = app.test_client()
    paid = client.post("/pay", headers=BROWSER)
    assert PENDING_COOKIE in set_cookies(paid.headers)
    [twin] = pixel_twins(client.get("/", headers=BROWSER).get_data(as_text=True))
    assert app.extensions[EXTENSION_KEY].bridge.flush(10)
    [event] = fake_graph.events
    assert (event["event_name"], event["event_id"]) == ("Purchase", twin[3]["eventID"])
    em = event["user_data"]["em"]
    assert (em if isinstance(em, str) else em[0]) == sha256(b"jane@example.com").hexdigest()


def test_track_from_a_fetch_call_sets_no_cookies(app: Flask, fake_graph: FakeGraph) -> None:
    reply = app.test_client().post("/api/lead", headers={**BROWSER, "Sec-Fetch-Dest": "empty"})
    assert reply.status_code == 200
    assert set_cookies(reply.headers) == {}
    assert app.extensions[EXTENSION_KEY].bridge.flush(10)
    assert [e["event_id"] for e in fake_graph.events] == [reply.get_json()["event_id"]]


def test_a_weak_flask_secret_key_is_named_as_flask_s(
    fake_graph: FakeGraph, outbox_path: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make_app(fake_graph, outbox_path, SECRET_KEY="dev")
    assert info.value.setting == "SECRET_KEY"  # what the user set, not CAPI_BRIDGE_SECRET_KEY
    assert "3 characters, fewer than 32" in info.value.problem
    assert info.value.fix.startswith("set SECRET_KEY to a random string of at least 32")
    with pytest.raises(ConfigError) as info:
        make_app(fake_graph, outbox_path, CAPI_BRIDGE_SECRET_KEY="dev")
    assert info.value.setting == "CAPI_BRIDGE_SECRET_KEY"  # this one wins over SECRET_KEY
    with pytest.raises(ConfigError) as info:
        make_app(fake_graph, outbox_path, CAPI_BRIDGE_LINGER="inf")
    assert info.value.setting == "CAPI_BRIDGE_LINGER"


def test_a_random_bytes_secret_key_is_used(fake_graph: FakeGraph, outbox_path: str) -> None:
    key = bytes(range(200, 224))  # like os.urandom(24): not UTF-8
    app = make_app(fake_graph, outbox_path, SECRET_KEY=key)
    assert app.extensions[EXTENSION_KEY].settings.secret_key == key.hex()
    app.extensions[EXTENSION_KEY].close(timeout=0)
