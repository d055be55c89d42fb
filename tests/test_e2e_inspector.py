"""The inspector end to end: a visitor clicks through an example shop in real headless Chromium
(product page, add to cart, newsletter, checkout), then the inspector, opened in another browser
on loopback, must show every event with both copies deduplicated and the expected match keys.
The same against ``capi-bridge demo`` started as README says. Waits are on the page's DOM,
never fixed sleeps; a screenshot of each inspector is kept in ``test-artifacts/``."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_e2e_shops as shops

pytestmark = pytest.mark.browser

# The shops, the visitor's browser and Chromium itself, as test_e2e_shops.py sets them up.
browser = shops.browser
make_shop = shops.make_shop
visitor = shops.visitor

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
INSPECTOR = "/capi-bridge/inspector"
#: What the click-through produces: the page views of product, newsletter (before and after
#: subscribing), cart and thank-you pages, the AddToCart, the Lead and the Purchase.
EXPECTED = {"PageView": 5, "AddToCart": 1, "Lead": 1, "Purchase": 1}
ROWS_READY = """(expected) => {
  const rows = [...document.querySelectorAll('tr[data-event-id]')];
  const count = {};
  for (const tr of rows) {
    if (tr.dataset.dedup !== '1' || tr.dataset.state !== 'delivered') return false;
    count[tr.dataset.eventName] = (count[tr.dataset.eventName] || 0) + 1;
  }
  return Object.entries(expected).every(([name, n]) => count[name] === n)
    && rows.length === Object.values(expected).reduce((a, b) => a + b, 0);
}"""


def click_through(page: Any, url: str) -> None:
    """Product, add to cart, newsletter sign-up, checkout: every kind of event the shop has.
    Each page is left only once capi-bridge.js runs there (it has then sent the PageView):
    a visitor faster than the script loses that PageView on both channels alike."""
    ready = "() => window.capiBridge && window.capiBridge.ready"
    page.goto(url + "/product/mug-01")
    page.wait_for_function(ready)
    page.click("#add-to-cart")
    page.wait_for_selector("#added", state="visible")
    page.goto(url + "/newsletter")
    page.wait_for_function(ready)
    page.fill("#lead-email", "reader@example.com")
    page.click("#subscribe")
    page.wait_for_selector("#subscribed")
    page.wait_for_function(ready)
    page.goto(url + "/cart")
    page.wait_for_function(ready)
    page.fill("#email", "Jane.Doe@Example.com")
    page.click("#pay")
    page.wait_for_selector("#thanks")
    page.wait_for_function(ready)
    shops.pixel_sent(page, "Purchase")  # the twin fired on the thank-you page


def inspect(browser: Any, url: str, screenshot: str) -> list[dict[str, Any]]:
    """Open the inspector from loopback (no proxy header), wait until every expected row is
    deduplicated and delivered, keep a screenshot; returns what its DOM says of each row."""
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    try:
        page = context.new_page()
        page.goto(url + INSPECTOR)
        page.wait_for_function(ROWS_READY, arg=EXPECTED, timeout=20_000)
        page.wait_for_selector("#diagnostic-rows tr[data-event-name='Purchase']")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
        rows: list[dict[str, Any]] = page.evaluate(
            """() => [...document.querySelectorAll('tr[data-event-id]')].map(tr => ({
              name: tr.dataset.eventName, flagged: tr.dataset.flagged,
              browser: tr.querySelector('td.browser').dataset.seen,
              server: tr.querySelector('td.server').dataset.seen,
              dedup: tr.querySelector('td.dedup').dataset.dedup,
              browserKeys: tr.querySelector('td.keys').dataset.browserKeys.split(' '),
              serverKeys: tr.querySelector('td.keys').dataset.serverKeys.split(' '),
              state: tr.querySelector('td.state').textContent,
              flags: tr.querySelector('td.flags').textContent,
            }))"""
        )
        return rows
    finally:
        context.close()


def check_rows(rows: list[dict[str, Any]], *, ip: bool) -> None:
    pixel_keys = {"fbp", "ua"} | ({"ip"} if ip else set())
    for row in rows:
        where = f"{row['name']}: {row}"
        assert (row["browser"], row["server"], row["dedup"]) == ("1", "1", "1"), where
        assert row["flagged"] == "0" and "differs" not in row["flags"], where
        assert pixel_keys <= set(row["browserKeys"]), where
        assert pixel_keys <= set(row["serverKeys"]), where
        assert ("em" in row["serverKeys"]) is (row["name"] in ("Lead", "Purchase")), where
        assert "delivered" in row["state"] and "fbtrace_id" in row["state"], where
    if not ip:  # loopback visitors: Meta rejects private addresses, none is sent
        assert all("ip" not in row["serverKeys"] for row in rows)


def test_the_inspector_shows_both_copies_of_every_event(
    make_shop: Any, visitor: Any, browser: Any, request: pytest.FixtureRequest
) -> None:
    shop = make_shop(inspector="true")
    page = visitor()
    click_through(page, shop.url)
    framework = request.node.callspec.params["make_shop"]
    name = "inspector.png" if framework == "flask" else f"inspector-{framework}.png"
    rows = inspect(browser, shop.url, name)
    check_rows(rows, ip=True)
    # what the inspector says is what the fake Graph API received
    assert sorted(e["event_name"] for e in shop.graph.events) == sorted(
        name for name, n in EXPECTED.items() for _ in range(n)
    )


def test_the_inspector_is_absent_unless_enabled(make_shop: Any, browser: Any) -> None:
    shop = make_shop()
    context = browser.new_context()
    try:
        reply = context.new_page().goto(shop.url + INSPECTOR)
        assert reply is not None and reply.status == 404
    finally:
        context.close()


# --- capi-bridge demo -----------------------------------------------------------------------


def _demo_command() -> list[str]:
    script = Path(sys.executable).with_name("capi-bridge")
    return [str(script)] if script.exists() else [sys.executable, "-m", "capi_bridge.cli"]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[dict[str, str]]:
    """``capi-bridge demo --port 0`` (README), in an empty directory; its printed URLs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPI_BRIDGE_")}
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [*_demo_command(), "demo", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    urls: dict[str, str] = {}
    out: list[str] = []
    deadline = time.monotonic() + 20
    try:
        while "inspector" not in urls or "shop" not in urls:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                pytest.fail("the demo exited: " + "".join(out))
            out.append(line)
            found = re.match(r"^  (shop|inspector) +(http\S+)", line)
            if found:
                urls[found.group(1)] = found.group(2).rstrip("/")
        yield urls
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(30)  # stdout read to its end; then no pipe is left for the GC to close
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def test_the_demo_s_inspector_after_a_click_through(demo: dict[str, str], browser: Any) -> None:
    assert demo["inspector"] == demo["shop"] + INSPECTOR
    context = browser.new_context(user_agent=shops.DESKTOP_UA)  # the demo serves the pixel stub
    try:
        click_through(context.new_page(), demo["shop"])
    finally:
        context.close()
    rows = inspect(browser, demo["shop"], "inspector-demo.png")
    check_rows(rows, ip=False)
    on_a_phone(browser, demo["shop"])


PHONE = """() => ({
  width: document.documentElement.scrollWidth,
  ids: [...document.querySelectorAll('td.id code')].map(c => c.getClientRects().length),
  pixel: [...document.querySelectorAll('tr[data-event-id] td.browser')].map(td =>
    [td.dataset.pixelLoaded, td.querySelector('.pixel-loaded').textContent]),
  ipNote: ((note) => note.hidden ? '' : note.textContent)(document.getElementById('ip-note')),
  ipChips: [...document.querySelectorAll('#diagnostic-rows .chip[data-key="ip"]')]
    .map(c => c.textContent),
})"""


def on_a_phone(browser: Any, url: str) -> None:
    """The demo's inspector 390 px wide: no sideways scrolling, ids on one line, every row
    saying whether fbevents.js loaded, and the demo's ip 0% explained beside it."""
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        missing: list[str] = []
        page.on("response", lambda r: missing.append(r.url) if r.status >= 400 else None)
        page.goto(url + INSPECTOR)
        page.wait_for_function(ROWS_READY, arg=EXPECTED, timeout=20_000)
        page.wait_for_selector("#diagnostic-rows tr[data-event-name='Purchase']")
        page.screenshot(path=str(ARTIFACTS / "inspector-demo-390.png"), full_page=True)
        seen = page.evaluate(PHONE)
        assert seen["width"] <= 390, seen
        assert seen["ids"] and set(seen["ids"]) == {1}, seen  # each id on one line
        texts = {"1": "fbevents.js loaded", "0": "fbevents.js did not load"}
        texts["?"] = "fbevents.js unknown"
        assert len(seen["pixel"]) == sum(EXPECTED.values())
        assert all(texts[flag] == text for flag, text in seen["pixel"]), seen["pixel"]
        assert set(seen["ipChips"]) == {"ip 0%"}  # a loopback visitor: no ip is ever sent...
        assert "Loopback and private addresses" in seen["ipNote"]  # ...and the page says why
        assert missing == [] and "favicon" not in str(
            page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
        )
    finally:
        context.close()
