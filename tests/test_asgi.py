"""The pure-ASGI middleware with Starlette and FastAPI apps, a real outbox and the fake Graph."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from helpers.web import BROWSER, SECRET, events_body, page_config, pixel_twins, set_cookies
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse as StarletteHTML,
)
from starlette.responses import (
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.testclient import TestClient

from capi_bridge.asgi import CapiBridgeMiddleware
from capi_bridge.pages import PENDING_COOKIE
from capi_bridge.starlette import capi_pixel, get_bridge, identify, track
from capi_bridge.testing import FakeGraph

PAGE = "<html><head><title>t</title></head><body><h1>shop</h1></body></html>"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, fake_graph: FakeGraph, outbox_path: str) -> None:
    """Settings come from CAPI_BRIDGE_* variables, as in production."""
    for key, value in {
        "PIXEL_ID": "1234567890",
        "ACCESS_TOKEN": "test-token",
        "GRAPH_URL": fake_graph.url,
        "OUTBOX_PATH": outbox_path,
        "SECRET_KEY": SECRET,
        "LINGER": "0.02",
    }.items():
        monkeypatch.setenv(f"CAPI_BRIDGE_{key}", value)


async def home(request: Request) -> Response:
    return StarletteHTML(PAGE)


async def placed(request: Request) -> Response:
    return StarletteHTML(f"<html><head>{capi_pixel(request)}</head><body>placed</body></html>")


async def stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"<html><he"
        yield b"ad></head><body>"
        yield b"streamed</body></html>"

    return StreamingResponse(chunks(), media_type="text/html")


async def pay(request: Request) -> Response:
    identify(request, em="jane@example.com")
    await track(request, "Purchase", custom_data={"value": 10, "currency": "EUR"})
    return RedirectResponse("/", status_code=303)


async def api(request: Request) -> Response:
    return JSONResponse({"pending": get_bridge(request).stats().pending})


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/", home),
            Route("/placed", placed),
            Route("/stream", stream),
            Route("/pay", pay, methods=["POST"]),
            Route("/api", api),
        ],
        middleware=[Middleware(CapiBridgeMiddleware)],
    )


@pytest.fixture
def client(env: None) -> Iterator[TestClient]:
    with TestClient(starlette_app(), base_url="http://localhost") as client:  # runs the lifespan
        yield client


def test_page_gets_the_snippet_cookies_and_a_correct_length(client: TestClient) -> None:
    response = client.get("/", headers=BROWSER)
    assert response.text.index("window.capiBridgeConfig") < response.text.index("</head>")
    assert int(response.headers["content-length"]) == len(response.content)
    assert "_fbp" in set_cookies(response.headers)


def test_streaming_response_is_rewritten_chunk_by_chunk(client: TestClient) -> None:
    text = client.get("/stream", headers=BROWSER).text
    assert text.startswith("<html><head><script")
    assert text.endswith("</head><body>streamed</body></html>")


def test_template_tag_page_is_left_alone(client: TestClient) -> None:
    text = client.get("/placed", headers=BROWSER).text
    assert text.count("window.capiBridgeConfig=") == 1


def test_fetch_and_json_responses_are_untouched(client: TestClient) -> None:
    for headers in ({**BROWSER, "Sec-Fetch-Dest": "empty"}, BROWSER):
        response = client.get("/api", headers=headers)
        assert response.json() == {"pending": 0}
        assert set_cookies(response.headers) == {}


def test_mirror_endpoint_and_server_event_reach_meta(
    client: TestClient, fake_graph: FakeGraph
) -> None:
    page = client.get("/", headers=BROWSER)
    config = page_config(page.text)
    reply = client.post(
        config["endpoint"],
        content=events_body(config["token"], ("PageView", config["pv"])),
        headers={**BROWSER, "Content-Type": "text/plain", "Origin": "http://localhost"},
    )
    assert reply.status_code == 202, reply.text
    paid = client.post("/pay", headers=BROWSER, follow_redirects=False)
    assert PENDING_COOKIE in set_cookies(paid.headers)
    [twin] = pixel_twins(client.get("/", headers=BROWSER).text)
    assert fake_graph.wait_for_events(2, timeout=10)
    ids = {(e["event_name"], e["event_id"]) for e in fake_graph.events}
    assert ids == {("PageView", config["pv"]), ("Purchase", twin[3]["eventID"])}


def test_malformed_endpoint_requests_are_4xx(client: TestClient) -> None:
    reply = client.post(
        "/capi-bridge/events",
        content=b"\xff{",
        headers={"Content-Type": "text/plain", "Origin": "http://localhost"},
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["code"]


def test_fastapi_works_unchanged(env: None, fake_graph: FakeGraph) -> None:
    app = FastAPI()
    app.add_middleware(CapiBridgeMiddleware)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return PAGE

    @app.post("/pay")
    async def fastapi_pay(request: Request) -> dict[str, Any]:
        identify(request, external_id="user-7")
        return {
            "event_id": await track(
                request, "Purchase", custom_data={"value": 1, "currency": "EUR"}
            )
        }

    with TestClient(app, base_url="http://localhost") as client:
        page = client.get("/", headers=BROWSER)
        assert "window.capiBridgeConfig" in page.text
        event_id = client.post("/pay", headers=BROWSER).json()["event_id"]
        assert fake_graph.wait_for_events(1, timeout=10)
        assert fake_graph.events[0]["event_id"] == event_id


def test_missing_middleware_is_explained(env: None) -> None:
    async def bare(request: Request) -> Response:
        return JSONResponse({"id": await track(request, "Lead")})

    app = Starlette(routes=[Route("/", bare)])
    with (
        TestClient(app, raise_server_exceptions=True) as client,
        pytest.raises(RuntimeError, match="CapiBridgeMiddleware"),
    ):
        client.get("/")


def test_servers_see_an_asgi_3_app() -> None:
    """hypercorn tells ASGI from WSGI with inspect.iscoroutinefunction, uvicorn with asyncio's:
    the middleware must be an ``async def`` for both (on every Python the package supports)."""
    import asyncio
    import inspect

    middleware = CapiBridgeMiddleware(api)  # type: ignore[arg-type]
    assert inspect.iscoroutinefunction(middleware.__call__)
    assert asyncio.iscoroutinefunction(middleware.__call__)


def test_a_json_answer_to_a_navigation_passes_as_the_app_sent_it(env: None) -> None:
    """Decided from the start message: the app's own message objects reach the server, with no
    copy and no header of ours, and nothing is built for the request (no Page)."""
    import asyncio

    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
    }
    body = {"type": "http.response.body", "body": b"{}"}
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(start)
        await send(body)
        assert "capi_bridge.page" not in scope["state"]

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "method": "GET",
        "scheme": "https",
        "path": "/api",
        "query_string": b"",
        "headers": [(b"host", b"shop.test"), (b"sec-fetch-dest", b"document")],
        "client": ("203.0.113.7", 1),
        "server": ("shop.test", 443),
    }
    asyncio.run(CapiBridgeMiddleware(app)(scope, receive, send))
    assert sent[0] is start and sent[1] is body
