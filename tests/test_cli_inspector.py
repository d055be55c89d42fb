"""``capi-bridge inspector-link`` and ``capi-bridge diagnostics``, as an operator runs them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.visits import Visitor, view
from helpers.web import SECRET

from capi_bridge.assembly import build_core
from capi_bridge.cli import main
from capi_bridge.pages import PageBridge
from capi_bridge.testing import FakeGraph


@pytest.fixture
def core(delivery_settings: Any) -> Iterator[PageBridge]:
    core = build_core(delivery_settings(secret_key=SECRET, inspector=True))
    yield core
    core.close(timeout=0)


def test_inspector_link_opens_the_inspector_from_anywhere(
    core: PageBridge, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAPI_BRIDGE_SECRET_KEY", SECRET)
    assert main(["inspector-link", "http://shop.test/", "--valid-for", "2h"]) == 0
    link, note = capsys.readouterr().out.splitlines()
    assert link.startswith("http://shop.test/capi-bridge/inspector?key=")
    assert "It works for 2h" in note and "CAPI_BRIDGE_INSPECTOR=true" in note
    path = link.removeprefix("http://shop.test")
    assert core.handle(view(path, peer="81.2.69.142", x_forwarded_for="1.2.3.4")).status == 200


def test_inspector_link_keeps_the_old_hours_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAPI_BRIDGE_SECRET_KEY", SECRET)
    assert main(["inspector-link", "http://shop.test/", "--hours", "2"]) == 0
    out = capsys.readouterr()
    assert "It works for 2h" in out.out and "--valid-for 2h" in out.err


def test_inspector_link_follows_a_custom_path(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAPI_BRIDGE_SECRET_KEY", SECRET)
    monkeypatch.setenv("CAPI_BRIDGE_INSPECTOR_PATH", "/ops/capi")
    assert main(["inspector-link", "https://shop.example"]) == 0
    assert capsys.readouterr().out.startswith("https://shop.example/ops/capi?key=")


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (["inspector-link", "http://shop.test/"], {}, "CAPI_BRIDGE_SECRET_KEY is not set"),
        (["inspector-link", "shop.test"], {"CAPI_BRIDGE_SECRET_KEY": SECRET}, "https://shop"),
        (
            ["inspector-link", "http://shop.test/", "--valid-for", "8d"],
            {"CAPI_BRIDGE_SECRET_KEY": SECRET},
            "at most 7d",
        ),
        (
            ["inspector-link", "http://shop.test/", "--hours", "500"],
            {"CAPI_BRIDGE_SECRET_KEY": SECRET},
            "at most 7d",
        ),
        (  # the rule the site applies: a weak key would not run the site either
            ["inspector-link", "http://shop.test/"],
            {"CAPI_BRIDGE_SECRET_KEY": "dev"},
            "CAPI_BRIDGE_SECRET_KEY: the secret key has 3 characters, fewer than 32",
        ),
    ],
)
def test_inspector_link_mistakes_name_the_fix(
    argv: list[str],
    env: dict[str, str],
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("CAPI_BRIDGE_SECRET_KEY", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(argv) == 1
    assert says in capsys.readouterr().out


def test_diagnostics_reads_the_outbox_of_the_app(
    core: PageBridge,
    fake_graph: FakeGraph,
    outbox_path: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    visitor = Visitor(core)
    page = visitor.page("/")
    assert visitor.post(page["token"], ("PageView", page["pv"])).status == 202
    # no flush: the command files what no dispatcher has picked up yet
    assert main(["diagnostics", "--path", outbox_path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    [pv] = report["events"]
    assert pv["event_name"] == "PageView" and pv["count"] == 1
    assert pv["dedup"]["coverage"] == 1.0 and pv["key_share"]["fbp"] == 1.0
    assert report["emq"]["label"] == "estimate" and report["emq"]["weights"]["em"] == 3
    assert main(["diagnostics", "--path", outbox_path, "--window", "10m"]) == 0
    text = capsys.readouterr().out
    assert "PageView: 1 events, 1 server copies" in text and "(estimate)" in text


def test_diagnostics_without_an_outbox_names_the_fix(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diagnostics", "--path", str(tmp_path / "nope.sqlite3")]) == 1
    assert "--path" in capsys.readouterr().out
    assert main(["diagnostics", "--path", str(tmp_path / "x"), "--window", "0"]) == 1
    assert "e.g. 24h or 7d" in capsys.readouterr().out
