"""RequestView/Response: the framework-neutral views the browser bridge works on."""

from __future__ import annotations

import io
import json

import pytest

from capi_bridge.cookies import expire_cookie, parse_cookie_header, set_cookie
from capi_bridge.request import Headers, RequestView, Response


def test_headers_are_case_insensitive_and_join_repeats() -> None:
    headers = Headers([("X-Forwarded-For", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2")])
    assert headers["X-FORWARDED-FOR"] == "1.1.1.1, 2.2.2.2"
    assert headers.get_all("x-forwarded-for") == ["1.1.1.1", "2.2.2.2"]
    assert "x-forwarded-for" in headers and len(headers) == 1
    cookies = Headers([("cookie", "a=1"), ("Cookie", "b=2")])
    assert cookies["cookie"] == "a=1; b=2"  # HTTP/2 sends one cookie field per cookie


def test_from_wsgi() -> None:
    environ = {
        "REQUEST_METHOD": "post",
        "wsgi.url_scheme": "https",
        "HTTP_HOST": "Shop.Example.com",
        "SCRIPT_NAME": "/app",
        "PATH_INFO": "/caf\u00c3\u00a9",  # UTF-8 bytes of "café" as PEP 3333 latin-1 text
        "QUERY_STRING": "fbclid=AbC&x=",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "12",
        "HTTP_USER_AGENT": "UA/1.0",
        "HTTP_COOKIE": "_fbp=fb.1.1700000000000.42; junk; _fbp=second",
        "REMOTE_ADDR": "10.0.0.1",
        "wsgi.input": io.BytesIO(b""),
    }
    view = RequestView.from_wsgi(environ)
    assert (view.method, view.scheme, view.host) == ("POST", "https", "shop.example.com")
    assert view.path == "/app/café"
    assert view.headers["content-type"] == "text/plain"
    assert view.headers["User-Agent"] == "UA/1.0"
    assert view.cookies == {"_fbp": "fb.1.1700000000000.42"}  # first of duplicates wins
    assert view.client_addr == "10.0.0.1"
    assert view.query_param("fbclid") == "AbC" and view.query_param("x") == ""
    assert view.query_param("missing") is None
    assert view.url == "https://shop.example.com/app/café?fbclid=AbC&x="


def test_from_wsgi_without_host_header() -> None:
    view = RequestView.from_wsgi(
        {"SERVER_NAME": "example.com", "SERVER_PORT": "8080", "wsgi.url_scheme": "http"}
    )
    assert view.host == "example.com:8080" and view.path == "/" and view.client_addr is None
    view = RequestView.from_wsgi(
        {"SERVER_NAME": "example.com", "SERVER_PORT": "443", "wsgi.url_scheme": "https"}
    )
    assert view.host == "example.com"


def test_from_asgi() -> None:
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": "https",
        "path": "/p/1",
        "query_string": b"a=1",
        "headers": [
            (b"host", b"example.com"),
            (b"x-forwarded-for", b"1.1.1.1"),
            (b"x-forwarded-for", b"2.2.2.2"),
            (b"cookie", b"_fbp=one"),
            (b"cookie", b"_fbc=two"),
        ],
        "client": ("192.0.2.1", 5000),
        "server": ("10.0.0.5", 443),
    }
    view = RequestView.from_asgi(scope)
    assert view.host == "example.com" and view.path == "/p/1" and view.query_string == "a=1"
    assert view.headers["x-forwarded-for"] == "1.1.1.1, 2.2.2.2"
    assert view.cookies == {"_fbp": "one", "_fbc": "two"}
    assert view.client_addr == "192.0.2.1"


def test_from_asgi_falls_back_to_server_address() -> None:
    view = RequestView.from_asgi({"type": "http", "path": "/", "server": ("10.0.0.5", 8000)})
    assert view.host == "10.0.0.5:8000" and view.method == "GET" and view.client_addr is None


def test_response_helpers() -> None:
    reply = Response.json(202, {"accepted": 1}, headers=[("X-A", "b")])
    assert reply.status_line == "202 Accepted"
    assert json.loads(reply.body) == {"accepted": 1}
    assert reply.header("content-type") == "application/json"
    assert reply.header("Content-Length") == str(len(reply.body))
    assert reply.header("cache-control") == "no-store" and reply.header("x-a") == "b"
    empty = Response.empty()
    assert empty.status_line == "204 No Content" and empty.body == b""
    assert Response(429).status_line == "429 Too Many Requests"


def test_cookie_parsing_survives_junk() -> None:
    assert parse_cookie_header('a=1; =x; b; c="quoted"; d=with=equals; a=2') == {
        "a": "1",
        "c": "quoted",
        "d": "with=equals",
    }
    assert parse_cookie_header(None) == {}


def test_set_cookie() -> None:
    value = set_cookie("_fbp", "fb.1.1.2", max_age=60, domain="example.com", secure=True)
    assert value == "_fbp=fb.1.1.2; Max-Age=60; Path=/; Domain=example.com; SameSite=Lax; Secure"
    assert "HttpOnly" in set_cookie("c", "1", max_age=1, http_only=True)
    assert expire_cookie("_fbc").startswith("_fbc=; Max-Age=0; Path=/")
    with pytest.raises(ValueError):
        set_cookie("_fbp", "a;b", max_age=1)
    with pytest.raises(ValueError):
        set_cookie("bad name", "x", max_age=1)
