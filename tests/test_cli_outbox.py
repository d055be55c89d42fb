"""``capi-bridge outbox stats|dead|retry-dead|purge`` on both stores: ``--path`` to a SQLite
file, ``--url`` (and ``--schema``) to a PostgreSQL database; the same output from both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.delivery_worker import make_event
from helpers.stores import POSTGRES_URL

from capi_bridge.cli import main
from capi_bridge.delivery import open_store
from capi_bridge.delivery.store import Store


def where(target: dict[str, Any]) -> list[str]:
    """The CLI arguments naming the test's outbox."""
    if "outbox_url" in target:
        return ["--url", target["outbox_url"], "--schema", target["outbox_schema"]]
    return ["--path", target["outbox_path"]]


def opened(target: dict[str, Any]) -> Store:
    url = target.get("outbox_url") or "sqlite:///" + target["outbox_path"]
    return open_store(url, schema=target.get("outbox_schema", "capi_bridge"))


@pytest.fixture
def filled(store_target: dict[str, Any]) -> Iterator[list[str]]:
    """An outbox with 2 delivered keys, 1 pending event and 2 dead letters (no dispatcher);
    yields the arguments that name it."""
    outbox = opened(store_target)
    now = time.time()
    payload = json.dumps(make_event(0))
    rows = [("111", "Purchase", f"id-{i}", "", now + 86400, payload) for i in range(5)]
    outbox.enqueue(rows, now)
    outbox.enqueue([rows[0]], now)  # one duplicate
    outbox.prepare()
    claimed = outbox.claim("111", "", owner="h:1:a", now=now, limit=4, lease=60, linger=0).rows
    outbox.delivered([r.id for r in claimed[:2]], "111", "h:1:a")
    outbox.dead_letter(
        [claimed[2].id],
        "h:1:a",
        reason="rejected",
        now=now,
        message="User Parameter Not Hashed",
        code=100,
        subcode=2804016,
        fbtrace_id="TRACE9",
    )
    outbox.dead_letter([claimed[3].id], "h:1:a", reason="expired", now=now, message="too old")
    outbox.close()
    yield where(store_target)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["outbox", *argv])
    return code, capsys.readouterr().out


def test_stats_text_and_json(filled: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "stats", *filled)
    assert code == 0
    assert "pending      1" in out and "delivered    2" in out and "dead         2" in out
    assert "deduplicated 1" in out and "capi-bridge outbox dead" in out
    code, out = run(capsys, "stats", *filled, "--json")
    data = json.loads(out)
    assert (data["pending"], data["delivered"], data["dead"], data["deduplicated"]) == (1, 2, 2, 1)


def test_stats_show_events_held_for_consent(
    filled: list[str], store_target: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    outbox = opened(store_target)
    now = time.time()
    held = [("111", "Lead", f"held-{i}", "", now + 86400, "{}") for i in range(3)]
    outbox.enqueue(held, now, hold="tab-session-id-0001")
    stale = ("111", "Lead", "stale", "", now + 86400, "{}")
    outbox.enqueue([stale], now - 7200, hold="tab-session-id-0002")
    assert outbox.expire_held(now - 3600) == 1
    outbox.close()
    code, out = run(capsys, "stats", *filled)
    assert code == 0 and "held         3 (waiting for consent; 1 expired)" in out
    assert "pending      1" in out  # held events are not pending delivery
    data = json.loads(run(capsys, "stats", *filled, "--json")[1])
    assert (data["held"], data["held_expired"], data["undelivered"]) == (3, 1, 1)


def test_outbox_from_the_environment(
    filled: list[str],
    store_target: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if "outbox_url" in store_target:
        monkeypatch.setenv("CAPI_BRIDGE_OUTBOX_URL", store_target["outbox_url"])
        monkeypatch.setenv("CAPI_BRIDGE_OUTBOX_SCHEMA", store_target["outbox_schema"])
        shown = f"(schema {store_target['outbox_schema']})"
    else:
        monkeypatch.setenv("CAPI_BRIDGE_OUTBOX_PATH", store_target["outbox_path"])
        shown = os.path.abspath(store_target["outbox_path"])
    code, out = run(capsys, "stats", "--json")
    assert code == 0 and shown in json.loads(out)["path"]


def test_missing_outbox_is_an_error_not_a_new_file(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    path = os.path.join(str(tmp_path), "absent.sqlite3")
    code, out = run(capsys, "stats", "--path", path)
    assert code == 1 and "cannot open the outbox" in out and "--path" in out
    assert not os.path.exists(path)


def test_dead_lists_reasons_without_user_data(
    filled: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "dead", *filled)
    assert code == 0
    assert "id-2: rejected, code 100/2804016, fbtrace_id TRACE9: User Parameter Not Hashed" in out
    assert "id-3: expired" in out and "retry-dead" in out
    assert "user_data" not in out and "@" not in out
    code, out = run(capsys, "dead", *filled, "--json", "--limit", "1")
    [letter] = json.loads(out)
    assert letter["event_id"] == "id-3" and "payload" not in letter


def test_retry_dead_requeues(filled: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    letters = json.loads(run(capsys, "dead", *filled, "--json")[1])
    rejected = next(d["id"] for d in letters if d["reason"] == "rejected")
    code, out = run(capsys, "retry-dead", *filled, "--id", str(rejected))
    assert code == 0 and "requeued 1 dead letters" in out
    stats = json.loads(run(capsys, "stats", *filled, "--json")[1])
    assert (stats["pending"], stats["dead"]) == (2, 1)
    code, out = run(capsys, "retry-dead", *filled, "--all")
    assert code == 0 and "requeued 1" in out
    code, out = run(capsys, "retry-dead", *filled, "--id", "999")
    assert code == 1 and "requeued 0" in out


def test_purge_confirms_and_never_drops_pending(
    filled: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "purge", *filled, "--older-than", "1")
    assert code == 0 and "deleted 0 delivered keys and 0 dead letters older than 1 h" in out
    code, out = run(capsys, "purge", *filled, "--dead")
    assert code == 0 and "deleted 0 delivered keys and 2 dead letters" in out
    code, out = run(capsys, "purge", *filled)
    assert "deleted 2 delivered keys" in out and "sent again" in out
    stats = json.loads(run(capsys, "stats", *filled, "--json")[1])
    assert (stats["pending"], stats["dead"]) == (1, 0)


def test_console_script_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "capi_bridge.cli", "outbox", "--help"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for action in ("stats", "dead", "retry-dead", "purge"):
        assert action in out


def test_a_missing_schema_is_an_error_not_a_new_outbox(
    pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "stats", "--url", POSTGRES_URL, "--schema", pg_schema)
    assert code == 1 and "cannot open the outbox" in out and f"schema {pg_schema}" in out
    assert "--url" in out
    with pytest.raises(Exception, match="no capi-bridge outbox"):
        open_store(POSTGRES_URL, schema=pg_schema, create=False)
