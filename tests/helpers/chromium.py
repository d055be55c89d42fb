"""Real headless Chromium for the browser tests (js/tests and the end-to-end tests).

Debian's ``chromium`` driven by Playwright through ``executable_path`` (``playwright install``
cannot download browsers here); Meta's fbevents.js is routed to the local stub, which records
what the pixel would send in ``window.__fbqSent``. Waits are on page conditions, never sleeps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import pytest

CHROMIUM = os.environ.get("CAPI_BRIDGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STUB = (resources.files("capi_bridge") / "static" / "fbevents-stub.js").read_bytes()
#: A desktop browser's user agent. Headless Chromium announces itself as HeadlessChrome, which
#: capi-bridge (rightly) ignores as a bot, and so does the pixel: tests that expect events to be
#: mirrored give their pages this one.
DESKTOP_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/156.0.0.0 Safari/537.36"
)


def launch() -> Iterator[Any]:
    """A module-scoped ``browser`` fixture's body: fails (with the fix) when Chromium is absent,
    rather than skipping: a skipped browser test would pass CI without testing anything."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM} (tests/run installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def contexts(browser: Any, **defaults: Any) -> Iterator[Callable[..., Any]]:
    """A function-scoped fixture's body: ``make(block_pixel=False, **context_options)`` opens a
    page in a fresh browser profile (a new visitor); every profile is closed afterwards."""
    opened: list[Any] = []

    def make(*, block_pixel: bool = False, **options: Any) -> Any:
        context = browser.new_context(**{**defaults, **options})
        opened.append(context)
        if block_pixel:
            context.route("**/fbevents.js", lambda route: route.abort("blockedbyclient"))
        else:
            context.route(
                "**/fbevents.js",
                lambda route: route.fulfill(status=200, content_type="text/javascript", body=STUB),
            )
        return context.new_page()

    yield make
    for context in opened:
        context.close()


def pixel_sent(page: Any, event: str, count: int = 1) -> list[dict[str, Any]]:
    """What the pixel stub sent for ``event``, once it has sent ``count`` of them."""
    page.wait_for_function(
        "([e, n]) => (window.__fbqSent || []).filter(s => s.event === e).length >= n",
        arg=[event, count],
    )
    sent: list[dict[str, Any]] = page.evaluate(
        "e => window.__fbqSent.filter(s => s.event === e)", event
    )
    return sent
