"""The SQLite intake: rows appended to each process's journal, ingested into the outbox.

What must hold: an append is durable when it returns (a process killed right after loses
nothing: any later ingester moves its rows); every row is ingested exactly once, whoever ingests
and however many at a time; the outbox's key still deduplicates; a process reads its own appends
at once; a torn record (its writer died mid-write) is dropped with a WARNING and never hides the
records before it; sealed journals are deleted once ingested, live ones never; journals are
private (0600 in a 0700 directory); the Python fallback for SQLite builds without JSON functions
stores the same rows.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import zlib
from typing import Any

import pytest

from capi_bridge.delivery import journal as journal_module
from capi_bridge.delivery import sqlite_intake
from capi_bridge.delivery.journal import frame, parse
from capi_bridge.delivery.sqlite_store import SQLiteStore as Outbox

NOW = 1_800_000_000.0
EXPIRES = NOW + 7 * 86400
TAG = (2, None, 1, 5, "abcdef0123456789", None, "em=1a2b")


def rows(n: int, *, prefix: str = "e", pixel: str = "111") -> list[tuple[Any, ...]]:
    # compact, as Bridge writes payloads: SQLite gives a JSON value back without whitespace
    payload = json.dumps(
        {"event_name": "Purchase", "event_id": "x", "quote": 'a"b\\c'}, separators=(",", ":")
    )
    return [(pixel, "Purchase", f"{prefix}{i}", "", EXPIRES, payload) for i in range(n)]


def journal_files(outbox: Outbox) -> list[str]:
    return journal_module.journals(outbox.journal.directory)


def stored(outbox: Outbox) -> list[tuple[Any, ...]]:
    return outbox.query(
        "SELECT event_id, created, payload, origin, obs_preview, state FROM outbox ORDER BY id"
    )


def test_an_append_is_read_back_at_once_by_its_own_process(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.append(rows(3), NOW, tags=[TAG] * 3, origin="me")
    assert len(journal_files(outbox)) == 1  # journaled, not yet in the outbox...
    got = stored(outbox)  # ...until this process reads: its own rows come first
    payload = rows(1)[0][5]
    assert got == [(f"e{i}", NOW, payload, "me", "em=1a2b", 3) for i in range(3)]
    assert outbox.stats(NOW).pending == 3


def test_duplicates_are_found_when_ingested(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.append(rows(2), NOW, tags=[TAG] * 2, origin="me")
    outbox.append(rows(3), NOW + 1, tags=[TAG] * 3, origin="me")  # e0, e1 again, then e2
    assert [r[0] for r in stored(outbox)] == ["e0", "e1", "e2"]
    assert outbox.counters()["deduplicated"] == 2
    # the second copies' observations are filed (the inspector shows the pair)
    filed = outbox.query("SELECT event_id, at FROM observations ORDER BY id")
    assert filed == [("e0", NOW + 1), ("e1", NOW + 1)]


def test_another_process_reads_them_once_a_dispatcher_ingests(outbox_path: str) -> None:
    writer, reader = Outbox(outbox_path), Outbox(outbox_path)
    writer.append(rows(4), NOW)
    count = "SELECT count(*) FROM outbox"
    assert reader.query(count) == [(0,)]  # not ingested: still only in writer's journal
    assert reader.ingest() == 4
    assert reader.query(count) == [(4,)]
    assert reader.ingest() == 0  # exactly once: the offset moved in the same transaction
    writer.append(rows(2, prefix="more"), NOW)
    assert reader.stats(NOW).pending == 6  # stats counts every process's journaled rows too


def test_concurrent_ingesters_store_each_row_once(outbox_path: str) -> None:
    writer = Outbox(outbox_path)
    ingesters = [Outbox(outbox_path) for _ in range(3)]
    stop = threading.Event()

    def ingest(store: Outbox) -> None:
        while not stop.is_set():
            store.ingest()

    threads = [threading.Thread(target=ingest, args=(s,)) for s in ingesters]
    for t in threads:
        t.start()
    for batch in range(200):
        writer.append(rows(5, prefix=f"b{batch}-"), NOW)
    stop.set()
    for t in threads:
        t.join()
    writer.ingest()
    assert writer.query("SELECT count(*) FROM outbox")[0][0] == 1000
    assert writer.counters()["deduplicated"] == 0  # no row was ever inserted twice


def test_a_killed_process_loses_nothing_and_its_journal_goes(outbox_path: str) -> None:
    code = (
        "import json, os, sys\n"
        "from capi_bridge.delivery.sqlite_store import SQLiteStore\n"
        "s = SQLiteStore(sys.argv[1])\n"
        "payload = json.dumps({'event_name': 'Purchase'})\n"
        "for i in range(50):\n"
        "    s.append([('111', 'Purchase', f'k{i}', '', 2e9, payload)], 1.8e9)\n"
        "print('stored', flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, outbox_path], capture_output=True, text=True, timeout=60
    )
    assert child.stdout == "stored\n" and child.returncode == -signal.SIGKILL
    outbox = Outbox(outbox_path)
    assert len(journal_files(outbox)) == 1
    assert outbox.ingest() == 50  # the dead process's file is sealed: read to its end...
    assert journal_files(outbox) == []  # ...and deleted
    assert outbox.query("SELECT count(*) FROM outbox")[0][0] == 50
    assert outbox.query("SELECT count(*) FROM meta WHERE key LIKE 'intake:%'")[0][0] <= 1
    outbox.ingest()
    assert outbox.query("SELECT count(*) FROM meta WHERE key LIKE 'intake:%'")[0][0] == 0


def test_a_torn_record_is_dropped_and_the_ones_before_it_kept(
    outbox_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = Outbox(outbox_path)
    writer.append(rows(2), NOW)
    writer.journal.close()  # sealed, as a dead writer's file is
    (name,) = journal_files(writer)
    torn = frame([["111", "Purchase", "torn", 2]], [b"{}"])[:-5]  # its writer died mid-write
    with open(os.path.join(writer.journal.directory, name), "ab") as f:
        f.write(torn)
    reader = Outbox(outbox_path)
    with caplog.at_level(logging.WARNING, "capi_bridge.outbox"):
        assert reader.ingest() == 2
    assert [r[0] for r in stored(reader)] == ["e0", "e1"]
    assert f"dropped {len(torn)} bytes at the end of {name}" in caplog.text
    assert journal_files(reader) == []


def test_a_live_journal_is_never_deleted_and_rotation_seals_the_old_one(
    outbox_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "ROTATE", 500)
    writer, reader = Outbox(outbox_path), Outbox(outbox_path)
    for i in range(12):
        writer.append(rows(1, prefix=f"r{i}-"), NOW)
    files = journal_files(writer)
    assert len(files) > 2  # a new file past ROTATE bytes
    assert reader.ingest() == 12
    assert journal_files(writer) == files[-1:]  # only the live one stays
    writer.append(rows(1, prefix="late"), NOW)
    assert reader.ingest() == 1
    assert reader.query("SELECT count(*) FROM outbox")[0][0] == 13


def test_a_pass_reads_at_most_the_read_limit_of_all_files_together(
    outbox_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many files wait (a delivery process behind a bulk import), one transaction
    reads at most READ_LIMIT bytes of them all; the next passes read the rest, in order."""
    monkeypatch.setattr(journal_module, "ROTATE", 1)  # a file per record
    writer, reader = Outbox(outbox_path), Outbox(outbox_path)
    for i in range(10):
        writer.append(rows(3, prefix=f"r{i}-"), NOW)
    sizes = [
        os.path.getsize(os.path.join(writer.journal.directory, n)) for n in journal_files(writer)
    ]
    assert len(sizes) == 10 and len(set(sizes)) == 1
    monkeypatch.setattr(sqlite_intake, "READ_LIMIT", 3 * sizes[0])  # three records a pass
    passes = []
    while len(passes) < 10 and (read := reader.ingest()):
        passes.append(read)
    assert passes == [9, 9, 9, 3]
    ids = [row[0] for row in stored(reader)]
    assert ids == [f"r{i}-{j}" for i in range(10) for j in range(3)]
    assert len(journal_files(writer)) == 1  # the sealed ones are gone, the live one stays


def test_a_writer_that_keeps_ingestion_busy_does_not_hold_another_s_rows_back(
    outbox_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passes that read one record each: the writers take turns, so the one row of a second
    writer is in the outbox by the second pass, not after the first writer's six."""
    monkeypatch.setattr(journal_module, "ROTATE", 1)  # a file per record
    busy, quiet, reader = Outbox(outbox_path), Outbox(outbox_path), Outbox(outbox_path)
    busy.journal.prefix, quiet.journal.prefix = "1-busy-", "2-quiet-"  # busy's files first
    for i in range(6):
        busy.append(rows(1, prefix=f"busy{i}-"), NOW)
    quiet.append(rows(1, prefix="quiet-"), NOW)
    one = min(os.path.getsize(os.path.join(busy.journal.directory, n)) for n in journal_files(busy))
    monkeypatch.setattr(sqlite_intake, "READ_LIMIT", one)
    assert reader.ingest() == 1 and reader.ingest() == 1
    assert "quiet-0" in [row[0] for row in stored(reader)]
    while reader.ingest():
        pass
    busy_ids = [row[0] for row in stored(reader) if row[0].startswith("busy")]
    assert busy_ids == [f"busy{i}-0" for i in range(6)]  # each writer's rows in its order


def test_closing_the_store_ingests_and_removes_its_journal(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.append(rows(3), NOW)
    outbox.close()
    assert journal_files(outbox) == []
    assert Outbox(outbox_path).query("SELECT count(*) FROM outbox")[0][0] == 3
    outbox.append(rows(1, prefix="after"), NOW)  # an append after close still stores
    assert outbox.query("SELECT count(*) FROM outbox")[0][0] == 4


def test_journals_are_private(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.append(rows(1), NOW)
    directory = outbox.journal.directory
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    (name,) = journal_files(outbox)
    assert stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) == 0o600


def test_full_sync_syncs_every_append(outbox_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(journal_module.os, "fdatasync", synced.append)
    Outbox(outbox_path, synchronous="FULL").append(rows(1), NOW)
    Outbox(outbox_path + "2").append(rows(1), NOW)
    assert len(synced) == 1  # the FULL one only


def test_a_short_write_seals_the_journal_and_raises(
    outbox_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(outbox_path)
    outbox.append(rows(1), NOW)
    real_write = journal_module._write
    monkeypatch.setattr(journal_module, "_write", lambda fd, data: real_write(fd, data[:7]))
    with pytest.raises(OSError, match="disk full"):
        outbox.append(rows(1, prefix="full"), NOW)
    monkeypatch.setattr(journal_module, "_write", real_write)
    outbox.append(rows(1, prefix="next"), NOW)  # a new file: the torn one is sealed
    assert len(journal_files(outbox)) == 2
    assert [r[0] for r in stored(outbox)] == ["e0", "next0"]


def test_a_forked_child_writes_its_own_journal(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.append(rows(1, prefix="parent"), NOW)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            outbox.append(rows(1, prefix="child"), NOW)
            os._exit(0 if len(journal_files(outbox)) == 2 else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    outbox.close()  # seals the parent's file: the child kept no hold on it
    reader = Outbox(outbox_path)
    reader.ingest()
    assert sorted(r[0] for r in stored(reader)) == ["child0", "parent0"]
    assert journal_files(reader) == []


def test_without_json_functions_rows_are_stored_directly_and_alike(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = []
    for has_json in (True, False):
        monkeypatch.setattr(sqlite_intake, "JSON_FUNCTIONS", has_json)
        outbox = Outbox(str(tmp_path / f"{has_json}.sqlite3"))
        outbox.append(rows(3), NOW, tags=[TAG] * 3, origin="me")
        outbox.append(rows(2, prefix="x"), NOW + 0.123456789, origin="me")
        assert bool(journal_files(outbox)) == has_json  # without them, SQLite at once
        got.append(
            outbox.query(
                "SELECT pixel_id, event_name, event_id, test_code, expires, created, due,"
                " payload, origin, obs_channel, obs_loaded, obs_twin, obs_keys, obs_fbp,"
                " obs_fbc_age, obs_preview, state FROM outbox ORDER BY id"
            )
        )
    assert got[0] == got[1] and len(got[0]) == 5
    assert got[0][0][7] == rows(1)[0][5]  # the payload's text, byte for byte


def test_the_write_keeping_the_gil_writes_and_raises_as_os_write(tmp_path: Any) -> None:
    path = str(tmp_path / "f")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        assert journal_module._write(fd, b"abc") == 3
        assert journal_module._write(fd, b"de") == 2
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        assert f.read() == b"abcde"
    read_only = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as raised:
            journal_module._write(read_only, b"x")  # EBADF, as os.write says it
    finally:
        os.close(read_only)
    assert raised.value.errno == errno.EBADF


def old_record(rows: list[list[Any]]) -> bytes:
    """A record of the journal's first format (before payloads were kept apart): length,
    crc32, row count, then the rows as JSON with each payload inside."""
    body = json.dumps(rows, separators=(",", ":")).encode()
    return struct.pack("<III", len(body), zlib.crc32(body), len(rows)) + body


def test_parse_stops_at_a_record_cut_short() -> None:
    one = frame([["a", 1, 2]], [b"{}"])
    two = frame([["b", 2, 8], ["c", None, 2]], ['{"é":1}'.encode(), b"[]"])
    old = old_record([["d", "{}"]])
    whole = parse(one + old + two)
    assert (whole.total, whole.used, whole.corrupt) == (4, len(one + old + two), False)
    assert [json.loads(b) for b in whole.rows] == [[["a", 1, 2]], [["b", 2, 8], ["c", None, 2]]]
    assert whole.payloads == [b"{}", '{"é":1}[]'.encode()]
    assert [json.loads(b) for b in whole.old] == [[["d", "{}"]]]
    cut = parse(one + two[:-1])
    assert (cut.total, cut.used, cut.corrupt) == (1, len(one), False)
    bad = bytearray(one + two)
    bad[-2] ^= 0xFF
    broken = parse(bytes(bad))
    assert (broken.total, broken.used, broken.corrupt) == (1, len(one), True)


def test_payloads_of_any_text_come_back_as_they_were_appended(outbox_path: str) -> None:
    """Payloads are cut out by their length in bytes: multi-byte text, escapes, commas and
    brackets inside them change nothing."""
    texts = [
        json.dumps({"n": "é€😀" * i + '"],[{', "q": "\\"}, ensure_ascii=False) for i in range(6)
    ]
    outbox = Outbox(outbox_path)
    outbox.append([(*row[:5], text) for row, text in zip(rows(6), texts, strict=True)], NOW)
    assert [r[2] for r in stored(outbox)] == texts


def test_journals_of_the_first_format_are_still_ingested(outbox_path: str) -> None:
    """Files an earlier version left (its process died before they were moved in) are read
    with the rows of this one, and a key in both is stored once and counted."""
    writer = Outbox(outbox_path)
    writer.append(rows(2), NOW, tags=[TAG] * 2, origin="me")
    writer.journal.close()
    payload = rows(1)[0][5]
    earlier = [
        ["111", "Purchase", key, "", EXPIRES, when, when, payload, "old", *TAG]
        for key, when in (("o0", NOW), ("o1", NOW), ("e1", NOW + 1))
    ]
    path = os.path.join(writer.journal.directory, "1-0123456789ab-000001.log")
    with open(path, "wb") as f:
        f.write(old_record(earlier))
    reader = Outbox(outbox_path)
    assert reader.ingest() == 5
    got = sorted(r[:4] for r in stored(reader))
    assert got == [
        ("e0", NOW, payload, "me"),
        ("e1", NOW, payload, "me"),
        ("o0", NOW, payload, "old"),
        ("o1", NOW, payload, "old"),
    ]
    assert reader.counters()["deduplicated"] == 1
    assert journal_files(reader) == []


def test_a_bulk_import_is_journaled_only_where_a_worker_delivers(tmp_path: Any) -> None:
    big = [(*row[:5], json.dumps({"pad": "x" * 400_000})) for row in rows(3)]  # 1.2 MB
    for bulk in (False, True):
        outbox = Outbox(str(tmp_path / f"{bulk}.sqlite3"), journal_bulk=bulk)
        outbox.append(big, NOW)
        assert bool(journal_files(outbox)) == bulk  # else SQLite at once, one transaction
        assert outbox.query("SELECT count(*) FROM outbox") == [(3,)]
