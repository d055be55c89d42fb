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


def test_stats_say_who_delivers_a_sqlite_outbox_on_this_host(
    outbox_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from capi_bridge.delivery.host_worker import WorkerPresence, lock_paths

    opened({"outbox_path": outbox_path}).close()
    code, out = run(capsys, "stats", "--path", outbox_path)
    assert code == 0 and "delivery     no delivery process on this host" in out
    assert not os.path.exists(lock_paths(outbox_path)[0])  # stats only read: no file made
    presence = WorkerPresence(outbox_path)
    assert presence.claim()
    try:
        code, out = run(capsys, "stats", "--path", outbox_path)
        assert f"delivery     by process {os.getpid()} (" in out
    finally:
        presence.release()
    code, out = run(capsys, "stats", "--path", outbox_path)
    assert "no delivery process on this host" in out


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
    code, out = run(capsys, "retry-dead", *filled, "--id", "999", str(rejected))
    assert code == 1 and "requeued 0" in out
    # what it left, and why
    assert f"not requeued: #{rejected}, #999: no such dead letter (already requeued or" in out
    code, out = run(capsys, "retry-dead", *filled, "--all")
    assert code == 0 and "There were no dead letters." in out


def test_retry_dead_without_ids_or_all_explains_and_requeues_nothing(
    filled: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "retry-dead", *filled)
    assert code == 2
    assert "--id N [N ...]" in out and "or --all" in out and "Nothing was requeued" in out
    assert json.loads(run(capsys, "stats", *filled, "--json")[1])["dead"] == 2


def test_retry_dead_says_which_it_left_for_consent(
    filled: list[str], store_target: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    outbox = opened(store_target)
    now = time.time()
    assert outbox.forget_settled(now + 1) == 4  # past the dedup window: keys forgotten
    # the same event again, from a visitor who has not consented yet
    outbox.enqueue([("111", "Purchase", "id-2", "", now + 86400, "{}")], now, hold="tab-0001-abcd")
    outbox.close()
    letters = json.loads(run(capsys, "dead", *filled, "--json")[1])
    held = next(d["id"] for d in letters if d["event_id"] == "id-2")
    code, out = run(capsys, "retry-dead", *filled, "--all")
    assert code == 0 and "requeued 1 dead letters" in out
    assert f"not requeued: #{held}: an event with the same key is held for consent" in out


def test_purge_keeps_keys_inside_the_dedup_window_and_says_why(
    filled: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "purge", *filled)
    assert code == 0 and "deleted 0 delivered keys and 2 dead letters" in out
    assert "kept 2 delivered keys inside the 48h dedup window (CAPI_BRIDGE_DEDUP_WINDOW)" in out
    assert "--older-than AGE deletes those older than AGE anyway" in out
    assert "kept 1 events waiting for delivery and 0 held for consent: they are never" in out
    code, out = run(capsys, "purge", *filled, "--older-than", "1h")
    assert "deleted 0 delivered keys and 0 dead letters" in out
    assert "kept 2 delivered keys younger than 1h" in out and "sent again" not in out
    code, out = run(capsys, "purge", *filled, "--delivered", "--older-than", "0s")
    assert "deleted 2 delivered keys" in out and "sent again" in out
    stats = json.loads(run(capsys, "stats", *filled, "--json")[1])
    assert (stats["pending"], stats["dead"]) == (1, 0)


def test_purge_follows_the_app_s_dedup_window(
    filled: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPI_BRIDGE_DEDUP_WINDOW", "1h")
    code, out = run(capsys, "purge", *filled, "--delivered")
    assert code == 0 and "kept 2 delivered keys inside the 1h dedup window" in out
    monkeypatch.setenv("CAPI_BRIDGE_DEDUP_WINDOW", "soon")
    code, out = run(capsys, "purge", *filled)
    assert code == 2 and "CAPI_BRIDGE_DEDUP_WINDOW: 'soon' is not a duration" in out


def test_purge_names_the_newest_row_it_must_keep(
    outbox_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    outbox = open_store("sqlite:///" + outbox_path)  # PostgreSQL has no such rule
    now = time.time()
    outbox.enqueue([("111", "Lead", "old", "", now + 86400, "{}")], now - 7200)
    outbox.prepare()
    [row] = outbox.claim("111", "", owner="h:1:a", now=now, limit=1, lease=60, linger=0).rows
    outbox.delivered([row.id], "111", "h:1:a")
    outbox.close()
    code, out = run(capsys, "purge", "--path", outbox_path, "--delivered", "--older-than", "1h")
    assert code == 0 and "deleted 0 delivered keys" in out
    assert "kept 1 delivered key, the outbox's newest row: row ids must only grow" in out


def test_purge_age_needs_a_unit(filled: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["outbox", "purge", *filled, "--older-than", "48"])
    assert exit_.value.code == 2  # a bare 48 once meant hours: refused, nothing purged
    assert "'48' has no unit; write it as 90s, 15m, 24h or 7d" in capsys.readouterr().err
    assert json.loads(run(capsys, "stats", *filled, "--json")[1])["dead"] == 2


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


def test_stats_without_write_access_counts_what_is_in_and_says_why_at_debug(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Another user (no write access to the outbox nor the app's journals) still gets the
    stats of what is in the outbox; why the journaled rest is not is a DEBUG line."""
    from helpers.stores import read_only

    from capi_bridge.delivery.sqlite_store import SQLiteStore

    path = str(tmp_path / "o.sqlite3")
    app = SQLiteStore(path)
    now = time.time()
    payload = json.dumps(make_event(0))
    app.enqueue([("111", "Purchase", "in", "", now + 86400, payload)], now)
    app.append([("111", "Purchase", "journaled", "", now + 86400, payload)], now)
    app.journal.close()  # sealed, not ingested: as an app process leaves it between passes
    caplog.set_level("DEBUG", logger="capi_bridge.cli")
    with read_only(path):
        code, out = run(capsys, "stats", "--path", path, "--json")
    assert code == 0 and json.loads(out)["pending"] == 1
    assert any("showing only what is in" in r.getMessage() for r in caplog.records)
    assert all(r.levelno == 10 for r in caplog.records if r.name == "capi_bridge.cli")
    code, out = run(capsys, "stats", "--path", path, "--json")  # writable: moved in first
    assert code == 0 and json.loads(out)["pending"] == 2
