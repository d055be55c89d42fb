"""The Django adapter in process: Django's test clients (WSGI and ASGI handlers, the real
middleware chain), a real outbox and the fake Graph API; settings through ``override_settings``
like a project's own tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from hashlib import sha256
from typing import Any

import pytest
from helpers import django_app
from helpers.web import BROWSER, events_body, page_config, pixel_twins

django_app.setup()

from django.core import checks  # noqa: E402 - after settings are configured
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402

from capi_bridge.django import conf, get_bridge  # noqa: E402
from capi_bridge.pages import PENDING_COOKIE  # noqa: E402
from capi_bridge.testing import FakeGraph  # noqa: E402

HEADERS = {
    "HTTP_USER_AGENT": BROWSER["User-Agent"],
    "HTTP_SEC_FETCH_DEST": "document",
    "HTTP_HOST": "localhost",
}
#: The same, as the ASGI test client takes them.
ASGI_HEADERS = {"User-Agent": BROWSER["User-Agent"], "Sec-Fetch-Dest": "document"}


@pytest.fixture
def capi(fake_graph: FakeGraph, outbox_path: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``capi(**extra)`` sets ``CAPI_BRIDGE`` for the test (a dict, as in settings.py)."""
    for key in [k for k in __import__("os").environ if k.startswith("CAPI_BRIDGE_")]:
        monkeypatch.delenv(key)
    overrides: list[Any] = []

    def apply(**extra: Any) -> None:
        value = {
            "PIXEL_ID": "1234567890",
            "ACCESS_TOKEN": "test-token",
            "GRAPH_URL": fake_graph.url,
            "OUTBOX_PATH": outbox_path,
            "LINGER": 0.02,
            **extra,
        }
        override = override_settings(CAPI_BRIDGE=value)
        override.enable()
        overrides.append(override)

    yield apply
    for override in reversed(overrides):
        override.disable()


def client() -> Client:
    return Client(**HEADERS)


def test_page_gets_the_snippet_cookies_and_a_correct_length(capi: Any) -> None:
    capi()
    response = client().get("/")
    html = response.content.decode()
    assert html.index("window.capiBridgeConfig") < html.index("</head>")
    assert int(response["Content-Length"]) == len(response.content)
    assert response.cookies["_fbp"].value.startswith("fb.")
    assert page_config(html)["pv"] == response.cookies["_capib_pv"].value


@pytest.mark.parametrize("path", ["/stream", "/encoded", "/api"])
def test_streaming_encoded_and_json_responses_are_untouched(capi: Any, path: str) -> None:
    capi()
    response = client().get(path)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert b"capiBridgeConfig" not in body
    assert "_fbp" not in response.cookies


def test_fetch_requests_are_untouched(capi: Any) -> None:
    capi()
    response = client().get("/", HTTP_SEC_FETCH_DEST="empty")
    assert b"capiBridgeConfig" not in response.content
    assert not response.cookies


def test_template_tag_places_the_snippet_once(capi: Any) -> None:
    capi()
    html = client().get("/placed").content.decode()
    assert html.count("window.capiBridgeConfig=") == 1
    assert html.startswith("<html><head><script")


def test_settings_dict_env_fallback_and_secret_key_default(
    capi: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    capi(PIXEL_ID=None)
    monkeypatch.setenv("CAPI_BRIDGE_PIXEL_ID", "555")
    settings, _ = conf.read_settings()
    assert settings.pixel_ids == ("555",)  # the environment fills what the dict leaves out
    assert settings.secret_key == django_app.SECRET  # Django's SECRET_KEY signs page tokens


def test_the_mirror_endpoint_is_served_by_the_middleware(capi: Any, fake_graph: FakeGraph) -> None:
    capi()
    browser = client()
    config = page_config(browser.get("/").content.decode())
    reply = browser.post(
        config["endpoint"],
        data=events_body(config["token"], ("PageView", config["pv"])),
        content_type="text/plain",
        HTTP_ORIGIN="http://localhost",
    )
    assert reply.status_code == 202, reply.content
    assert get_bridge().flush(10)
    assert [e["event_id"] for e in fake_graph.events] == [config["pv"]]


def test_track_sends_now_and_stitches_the_next_page(capi: Any, fake_graph: FakeGraph) -> None:
    capi()
    browser = client()
    paid = browser.post("/pay", {"email": "Jane@Example.com"})
    assert paid.status_code == 303
    assert PENDING_COOKIE in paid.cookies
    [twin] = pixel_twins(browser.get("/").content.decode())
    assert get_bridge().flush(10)
    [event] = fake_graph.events
    assert (event["event_name"], event["event_id"]) == ("Purchase", twin[3]["eventID"])
    em = event["user_data"]["em"]
    assert (em if isinstance(em, str) else em[0]) == sha256(b"jane@example.com").hexdigest()


def test_bad_email_still_redirects_and_sends_the_purchase(capi: Any, fake_graph: FakeGraph) -> None:
    capi()
    paid = client().post("/pay", {"email": "jane@intranet"})
    assert paid.status_code == 303
    assert get_bridge().flush(10)
    [event] = fake_graph.events
    assert "em" not in event["user_data"]


def test_an_async_view_calls_track_under_the_asgi_handler(capi: Any, fake_graph: FakeGraph) -> None:
    capi()

    async def visit() -> Any:
        return await AsyncClient().post("/async-pay", headers=ASGI_HEADERS)

    reply = asyncio.run(visit())
    assert reply.status_code == 200
    ids = reply.json()["ids"]
    assert get_bridge().flush(10)
    assert sorted(e["event_id"] for e in fake_graph.events) == sorted(ids)
    assert all(e["user_data"]["external_id"] for e in fake_graph.events)


def test_async_pages_get_the_snippet(capi: Any) -> None:
    capi()

    async def visit() -> Any:
        return await AsyncClient().get("/", headers=ASGI_HEADERS)

    response = asyncio.run(visit())
    assert b"window.capiBridgeConfig" in response.content
    assert int(response["Content-Length"]) == len(response.content)


def test_django_csp_nonce_is_on_every_script(capi: Any) -> None:
    capi()
    middleware = ["csp.middleware.CSPMiddleware", *django_app.MIDDLEWARE]
    from csp.constants import NONCE, SELF

    policy = {"DIRECTIVES": {"script-src": [SELF, NONCE]}}
    with override_settings(
        MIDDLEWARE=middleware,
        CONTENT_SECURITY_POLICY=policy,
        INSTALLED_APPS=["capi_bridge.django", "csp"],
    ):
        response = client().get("/")
    header = response["Content-Security-Policy"]
    nonce = header.split("'nonce-", 1)[1].split("'", 1)[0]
    html = response.content.decode()
    assert html.count("<script") == html.count(f'nonce="{nonce}"') >= 2


def test_a_missing_pixel_id_is_a_check_error_and_stops_the_middleware(capi: Any) -> None:
    capi(PIXEL_ID=None)
    [error] = [m for m in checks.run_checks() if m.id == "capi_bridge.E001"]
    assert 'CAPI_BRIDGE["PIXEL_ID"]' in error.msg and error.hint
    with pytest.raises(ImproperlyConfigured, match="PIXEL_ID"):
        client().get("/")


@pytest.mark.parametrize(
    ("middleware", "expected"),
    [
        (["django.middleware.gzip.GZipMiddleware", *django_app.MIDDLEWARE], set()),
        ([*django_app.MIDDLEWARE, "django.middleware.gzip.GZipMiddleware"], {"capi_bridge.W002"}),
        ([*django_app.MIDDLEWARE, "csp.middleware.CSPMiddleware"], {"capi_bridge.W003"}),
        (["django.middleware.common.CommonMiddleware"], {"capi_bridge.W001"}),
    ],
)
def test_middleware_order_checks(capi: Any, middleware: list[str], expected: set[str]) -> None:
    capi()
    with override_settings(MIDDLEWARE=middleware):
        found = {m.id for m in checks.run_checks() if m.id.startswith("capi_bridge.")}
    assert found == expected


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
@pytest.mark.parametrize(("host", "warned"), [("db.internal", True), ("localhost", False)])
def test_a_sqlite_outbox_beside_a_remote_database_is_a_warning(
    capi: Any, host: str, warned: bool
) -> None:
    capi()
    database = {"ENGINE": "django.db.backends.postgresql", "NAME": "shop", "HOST": host}
    with override_settings(DATABASES={"default": database}):
        found = {m.id for m in checks.run_checks() if m.id.startswith("capi_bridge.")}
    assert ("capi_bridge.W004" in found) is warned


def test_ready_opens_nothing(capi: Any) -> None:
    """``AppConfig.ready()`` may run twice and before a fork: the core is built by the
    middleware, per process, not by the app registry."""
    from django.apps import apps

    capi()
    assert conf._core is None  # the override dropped any earlier core
    apps.get_app_config("capi_bridge").ready()
    assert conf._core is None
