from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capi_bridge.injection import (
    MARKER,
    Injector,
    inject_once,
    is_navigation,
    should_inject,
)

SNIPPET = b'<script data-capi-bridge nonce="n">fbq()</script>'  # as snippet.py renders it
PAGE = (
    b"<!doctype html><html><head><meta charset=utf-8><title>t</title></head><body>hi</body></html>"
)


def test_inserts_before_head_close() -> None:
    out, injected = inject_once(PAGE, SNIPPET)
    assert injected
    assert out == PAGE.replace(b"</head>", SNIPPET + b"</head>")


def test_falls_back_to_after_body_open() -> None:
    page = b'<html><body class="x"><p>no head</p></body></html>'
    out, injected = inject_once(page, SNIPPET)
    assert injected
    assert out == page.replace(b'<body class="x">', b'<body class="x">' + SNIPPET)


def test_case_insensitive_and_spaced_tag() -> None:
    page = b"<HTML><HEAD><TITLE>x</TITLE></HEAD  ><BODY></BODY></HTML>"
    out, injected = inject_once(page, SNIPPET)
    assert injected and out.index(SNIPPET) < out.index(b"</HEAD")


def test_no_insertion_point_passes_through() -> None:
    out, injected = inject_once(b"just text", SNIPPET)
    assert (out, injected) == (b"just text", False)


def test_page_that_already_has_the_snippet_is_left_alone() -> None:
    page = PAGE.replace(b"</head>", SNIPPET + b"</head>")
    assert MARKER in SNIPPET
    assert inject_once(page, SNIPPET) == (page, False)


def test_body_tag_prefix_is_not_a_body_tag() -> None:
    page = b"<html><bodyguard></bodyguard><head></head></html>"
    out, injected = inject_once(page, SNIPPET)
    assert injected and out.index(SNIPPET) == page.index(b"</head>")


def test_search_limit_stops_buffering() -> None:
    injector = Injector(SNIPPET, limit=100)
    assert injector.feed(b"x" * 60) == b""
    released = injector.feed(b"y" * 60)
    assert released == b"x" * 60 + b"y" * 60
    assert injector.decided and not injector.injected
    assert injector.feed(b"</head>") == b"</head>"  # after the decision: pass-through


def test_streaming_releases_nothing_until_the_insertion_point() -> None:
    injector = Injector(SNIPPET)
    assert injector.feed(b"<html><head><title>") == b""
    assert injector.feed(b"x</title></he") == b""
    out = injector.feed(b"ad><body>")
    assert out == b"<html><head><title>x</title>" + SNIPPET + b"</head><body>"
    assert injector.feed(b"rest") == b"rest"
    assert injector.finish() == b""


@given(st.lists(st.integers(min_value=1, max_value=len(PAGE)), max_size=8))
def test_any_chunking_gives_the_same_bytes(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [PAGE[a:b] for a, b in zip([0, *points], [*points, len(PAGE)], strict=True)]
    injector = Injector(SNIPPET)
    out = b"".join(injector.feed(c) for c in chunks) + injector.finish()
    assert out == inject_once(PAGE, SNIPPET)[0]
    assert len(out) == len(PAGE) + len(SNIPPET)


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, [("content-type", "text/html; charset=utf-8")], True),
        (200, [("content-type", "TEXT/HTML")], True),
        (200, [("content-type", "application/xhtml+xml")], True),
        (200, [("content-type", "application/json")], False),
        (200, [("content-type", "text/event-stream")], False),
        (200, [], False),
        (404, [("content-type", "text/html")], False),
        (304, [("content-type", "text/html")], False),
        (204, [("content-type", "text/html")], False),
        (200, [("content-type", "text/html"), ("content-encoding", "gzip")], False),
        (200, [("content-type", "text/html"), ("content-encoding", "identity")], True),
        (
            200,
            [("content-type", "text/html"), ("content-disposition", "attachment; filename=a")],
            False,
        ),
    ],
)
def test_should_inject(status: int, headers: list[tuple[str, str]], expected: bool) -> None:
    assert should_inject(status, headers) is expected


@pytest.mark.parametrize(
    ("dest", "expected"),
    [
        (None, True),  # old browsers, curl, crawlers: the snippet is inert without JavaScript
        ("document", True),  # page loads and form posts
        ("iframe", True),
        ("empty", False),  # fetch()/XHR
        ("script", False),
        ("image", False),
    ],
)
def test_is_navigation(dest: str | None, expected: bool) -> None:
    assert is_navigation(dest) is expected
