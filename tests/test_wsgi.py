"""The WSGI middleware against plain WSGI apps, a real outbox and the fake Graph API."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from hashlib import sha256
from typing import Any

import pytest
from helpers.web import BROWSER, SECRET, events_body, page_config, pixel_twins, set_cookies
from werkzeug.test import Client

from capi_bridge.pages import PAGE_ENVIRON_KEY, PENDING_COOKIE, PageBridge
from capi_bridge.testing import FakeGraph
from capi_bridge.wsgi import CapiBridgeMiddleware

PAGE = b"<!doctype html><html><head><title>t</title></head><body><h1>shop</h1></body></html>"
HTML = [("Content-Type", "text/html; charset=utf-8")]


class Tracked:
    """A body iterable that records whether the server closed it (PEP 3333)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed = True


def make_app(
    body: Iterable[bytes] = (PAGE,),
    headers: list[tuple[str, str]] | None = None,
    status: str = "200 OK",
    seen: list[dict[str, Any]] | None = None,
) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if seen is not None:
            seen.append(environ)
        start_response(status, list(HTML if headers is None else headers))
        return body

    return app


@pytest.fixture
def core(delivery_settings: Any) -> Iterator[PageBridge]:
    core = PageBridge(delivery_settings(secret_key=SECRET))
    yield core
    core.close(timeout=0)


def wrap(core: PageBridge, app: Callable[..., Iterable[bytes]]) -> Client:
    return Client(CapiBridgeMiddleware(app, core=core))


def test_snippet_goes_before_head_end_and_content_length_grows(core: PageBridge) -> None:
    headers = [*HTML, ("Content-Length", str(len(PAGE)))]
    response = wrap(core, make_app(headers=headers)).get("/", headers=BROWSER)
    body = response.get_data()
    assert int(response.headers["Content-Length"]) == len(body) > len(PAGE)
    assert body.index(b"data-capi-bridge") < body.index(b"</head>")
    assert body.count(b"window.capiBridgeConfig=") == 1
    cookies = set_cookies(response.headers)
    assert cookies["_fbp"].startswith("_fbp=fb.")
    assert page_config(body.decode())["pv"] in cookies["_capib_pv"]


def test_streamed_body_is_buffered_only_to_the_insertion_point_and_closed(
    core: PageBridge,
) -> None:
    body = Tracked([b"<html><he", b"ad><title>t</title></he", b"ad><body>", b"x" * 10, b"</body>"])
    response = wrap(core, make_app(body)).get("/", headers=BROWSER)
    out = response.get_data()
    response.close()
    assert body.closed
    assert out.startswith(b"<html><head><title>t</title><script")
    assert out.endswith(b"</head><body>" + b"x" * 10 + b"</body>")


@pytest.mark.parametrize(
    ("method", "status", "headers"),
    [
        ("HEAD", "200 OK", HTML),
        ("GET", "304 Not Modified", HTML),
        ("GET", "404 Not Found", HTML),
        ("GET", "200 OK", [("Content-Type", "application/json")]),
        ("GET", "200 OK", [*HTML, ("Content-Encoding", "gzip")]),
        ("GET", "200 OK", [*HTML, ("Content-Disposition", "attachment; filename=a.html")]),
    ],
)
def test_responses_that_are_not_pages_are_untouched(
    core: PageBridge, method: str, status: str, headers: list[tuple[str, str]]
) -> None:
    response = wrap(core, make_app(headers=headers, status=status)).open(
        "/", method=method, headers=BROWSER
    )
    assert b"data-capi-bridge" not in response.get_data()
    assert "_fbp" not in set_cookies(response.headers)


def test_a_json_answer_to_a_navigation_passes_as_the_app_sent_it(core: PageBridge) -> None:
    """Decided at start_response: the server gets the app's own status, header list and
    iterable, and the request's Page is left unused (nothing parsed, signed or set)."""
    headers = [("Content-Type", "application/json"), ("Content-Length", "2")]
    body = Tracked([b"{}"])
    received: list[Any] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", headers)
        return body

    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/api",
        "HTTP_SEC_FETCH_DEST": "document",
        "SERVER_NAME": "shop.test",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }

    def start_response(status: str, sent: list[Any], exc_info: Any = None) -> Any:
        received.append((status, sent))

    result = CapiBridgeMiddleware(app, core=core)(environ, start_response)
    assert result is body
    assert received == [("200 OK", headers)] and received[0][1] is headers
    assert environ[PAGE_ENVIRON_KEY].quiet


def test_fetch_requests_pass_straight_through(core: PageBridge) -> None:
    body = Tracked([PAGE])
    seen: list[dict[str, Any]] = []
    app = make_app(body, seen=seen)
    middleware = CapiBridgeMiddleware(app, core=core)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/api",
        "HTTP_SEC_FETCH_DEST": "empty",
        "SERVER_NAME": "shop.test",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    result = middleware(environ, lambda status, headers, exc_info=None: None)
    assert result is body  # the app's own iterable: no wrapper, no copy
    assert PAGE_ENVIRON_KEY not in seen[0]


def test_a_page_holding_the_snippet_is_left_alone(core: PageBridge) -> None:
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(environ)
        placed = environ[PAGE_ENVIRON_KEY].render()  # what the template tag does
        start_response("200 OK", HTML)
        return [b"<html><head>" + placed.encode() + b"</head><body></body></html>"]

    response = wrap(core, app).get("/", headers=BROWSER)
    assert response.get_data().count(b"window.capiBridgeConfig=") == 1
    assert "_fbp" in set_cookies(response.headers)


def test_mirrored_page_view_reaches_meta_with_the_pixel_id_and_fbp(
    core: PageBridge, fake_graph: FakeGraph
) -> None:
    client = wrap(core, make_app())
    page = client.get("/", headers=BROWSER)
    config = page_config(page.get_data(as_text=True))
    fbp = set_cookies(page.headers)["_fbp"].split(";")[0].split("=", 1)[1]
    reply = client.post(
        config["endpoint"],
        data=events_body(config["token"], ("PageView", config["pv"])),
        headers={**BROWSER, "Content-Type": "text/plain", "Origin": "http://localhost"},
    )
    assert reply.status_code == 202, reply.get_data(as_text=True)
    assert core.bridge.flush(10)
    [event] = fake_graph.events
    assert event["event_id"] == config["pv"]
    assert event["event_name"] == "PageView"
    assert event["user_data"]["fbp"] == fbp


def test_bad_endpoint_requests_get_a_reason_never_a_500(core: PageBridge) -> None:
    client = wrap(core, make_app())
    path = core.settings.endpoint_path
    for data, ctype in ((b"{", "text/plain"), (b"x" * 70000, "text/plain"), (b"{}", "image/png")):
        reply = client.post(path, data=data, headers={"Content-Type": ctype})
        assert 400 <= reply.status_code < 500
        assert reply.get_json()["error"]["message"]


def server_event_app(core: PageBridge) -> Callable[..., Iterable[bytes]]:
    """POST /pay confirms a Purchase on the server and redirects; GET renders a page."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        page = environ[PAGE_ENVIRON_KEY]
        if environ["REQUEST_METHOD"] == "POST":
            page.identify(em="Jane.Doe@Example.com")
            environ["event_id"] = page.track(
                "Purchase", custom_data={"value": 42.5, "currency": "EUR"}
            )
            start_response("303 See Other", [("Location", "/thanks")])
            return [b""]
        start_response("200 OK", HTML)
        return [PAGE]

    return app


def test_server_event_is_sent_and_its_pixel_twin_fires_on_the_next_page(
    core: PageBridge, fake_graph: FakeGraph
) -> None:
    client = wrap(core, server_event_app(core))
    paid = client.post("/pay", headers=BROWSER)
    assert paid.status_code == 303
    assert PENDING_COOKIE in set_cookies(paid.headers)
    thanks = client.get("/thanks", headers=BROWSER)
    [twin] = pixel_twins(thanks.get_data(as_text=True))
    assert twin[:3] == ["track", "Purchase", {"value": 42.5, "currency": "EUR"}]
    assert set_cookies(thanks.headers)[PENDING_COOKIE].startswith(f"{PENDING_COOKIE}=;")
    assert core.bridge.flush(10)
    [event] = fake_graph.events
    assert event["event_id"] == twin[3]["eventID"]
    em = event["user_data"]["em"]
    assert (em if isinstance(em, str) else em[0]) == sha256(b"jane.doe@example.com").hexdigest()
    # a reload of the thank-you page fires nothing more
    again = client.get("/thanks", headers=BROWSER)
    assert pixel_twins(again.get_data(as_text=True)) == []


def test_forged_pending_cookie_fires_nothing(core: PageBridge) -> None:
    client = wrap(core, server_event_app(core))
    client.set_cookie(PENDING_COOKIE, "W3sibiI6IlB1cmNoYXNlIn1d.forged", domain="localhost")
    page = client.get("/thanks", headers=BROWSER)
    assert pixel_twins(page.get_data(as_text=True)) == []


def test_legacy_write_callable_is_passed_through(core: PageBridge) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        write = start_response("200 OK", HTML)
        write(PAGE)
        return []

    response = wrap(core, app).get("/", headers=BROWSER)
    assert response.get_data() == PAGE
