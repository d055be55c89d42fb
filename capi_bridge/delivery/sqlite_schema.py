"""The outbox's SQLite schema, its versions and the in-place upgrade of older files.

Kept apart from :mod:`capi_bridge.delivery.sqlite_store` (connections, enqueue, held rows) so
the storage layout can be read in one place. Every statement is idempotent: workers starting
together on an older file upgrade it once, under the write lock (see ``SQLiteStore._install``).
The PostgreSQL store has the same tables (:mod:`capi_bridge.delivery.postgres_schema`), so the
statements of :mod:`capi_bridge.delivery.sql_reads` run on both.
"""

from __future__ import annotations

import functools
import sqlite3

from capi_bridge.delivery.sql_reads import OBSERVED_COLUMNS

#: 1: the first release; 2: held rows (``hold_key``, index ``outbox_held``, ``held_expired``);
#: 3: ``observations`` and ``deliveries`` (inspector, diagnostics), ``outbox.delivery``, and
#: the ``obs_*`` columns an event's observation rides in until ingestion files it; 4: ``origin``
#: (the process that stored or released a row: ``flush()`` waits for its own rows only); 5:
#: ``dropped`` (counts of browser events the mirror did not store, :mod:`capi_bridge.drops`);
#: 6: ``claims`` (fresh rows a dispatcher sends without moving them first, see
#: :mod:`capi_bridge.delivery.sqlite_fresh`) and the ``observed`` cursor.
SCHEMA_VERSION = 6

TABLES = """
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY,
    pixel_id    TEXT    NOT NULL,
    event_name  TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    test_code   TEXT    NOT NULL,          -- '' when the event is not a test event
    expires     REAL    NOT NULL,          -- event_time + Meta's window (7 days, 62 in store)
    created     REAL    NOT NULL,
    due         REAL    NOT NULL,          -- not before (FIFO order, backoff)
    state       INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL,
    payload     TEXT,                      -- hashed wire JSON; NULL once settled
    hold_key    TEXT,                      -- held rows (state 4): who must consent first
    delivery    INTEGER,                   -- delivered rows: deliveries.id of their request
    -- fresh and held rows: the event's observation, until ingestion files it (observations.Tag)
    obs_channel INTEGER,
    obs_loaded  INTEGER,
    obs_twin    INTEGER,
    obs_keys    INTEGER,
    obs_fbp     TEXT,
    obs_fbc_age INTEGER,
    obs_preview TEXT,
    origin      TEXT,                      -- the storing process (dispatcher owner id)
    UNIQUE (pixel_id, event_name, event_id)
);
CREATE INDEX IF NOT EXISTS outbox_ready ON outbox (pixel_id, test_code, due) WHERE state = 0;
CREATE TABLE IF NOT EXISTS dead_letters (
    id         INTEGER PRIMARY KEY,
    pixel_id   TEXT NOT NULL,
    event_name TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    test_code  TEXT NOT NULL,
    expires    REAL NOT NULL,
    created    REAL NOT NULL,
    failed_at  REAL NOT NULL,
    reason     TEXT NOT NULL,              -- 'rejected' by Meta, or 'expired' before sending
    message    TEXT,
    code       INTEGER,
    subcode    INTEGER,
    fbtrace_id TEXT,
    payload    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pauses (
    pixel_id TEXT PRIMARY KEY,
    until    REAL NOT NULL,
    kind     TEXT NOT NULL,
    failures INTEGER NOT NULL,
    prober   TEXT                          -- owner sending the probe batch (half-open)
);
CREATE TABLE IF NOT EXISTS claims (       -- version 6: fresh rows leased as one range
    id    INTEGER PRIMARY KEY,
    owner TEXT    NOT NULL,                -- the dispatcher sending them
    low   INTEGER NOT NULL,                -- first and last outbox id of the range
    high  INTEGER NOT NULL,
    until REAL    NOT NULL                 -- then its fresh rows become pending for anyone
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('delivered', 0), ('deduplicated', 0);
INSERT OR IGNORE INTO counters VALUES ('held_expired', 0);
INSERT OR IGNORE INTO meta VALUES ('ingested', '0');
INSERT OR IGNORE INTO meta SELECT 'observed', value FROM meta WHERE key = 'ingested';
"""
OBSERVATION_TABLES = """
CREATE TABLE IF NOT EXISTS observations (
    id           INTEGER PRIMARY KEY,      -- in time order: pruning and windows go by id
    at           REAL    NOT NULL,
    pixel_id     TEXT    NOT NULL,
    event_name   TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    channel      INTEGER NOT NULL,         -- 1 browser (mirror), 2 server, 3 pixel twin
    pixel_loaded INTEGER,                  -- browser: fbevents.js had loaded (1) or not (0)
    twin         INTEGER,                  -- server: its pixel twin goes to the next page (1)
    keys         INTEGER NOT NULL,         -- match keys present (bitmask, observations.KEYS)
    fbp_hash     TEXT,                     -- 16 hex digits of its hash: fbp itself not kept
    fbc_age      INTEGER,                  -- seconds from the click (fbc) to the event
    preview      TEXT    NOT NULL,         -- masked keys (em=1a2b|ip=81.2.x.x), never raw
    problem      TEXT                      -- browser: why its server copy was refused
);
CREATE TABLE IF NOT EXISTS dropped (       -- version 5: bounded counts, never one row per post
    hour         INTEGER NOT NULL,         -- unix time // 3600
    event_name   TEXT    NOT NULL,
    reason       TEXT    NOT NULL,         -- drops.REASONS
    detail       TEXT    NOT NULL,         -- a pixel id, a user-agent word, Meta's reason
    count        INTEGER NOT NULL,
    last_at      REAL    NOT NULL,
    PRIMARY KEY (hour, event_name, reason, detail)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    at              REAL    NOT NULL,
    pixel_id        TEXT    NOT NULL,
    events          INTEGER NOT NULL,      -- events in the request
    events_received INTEGER,               -- Meta's count in its reply
    fbtrace_id      TEXT
);
CREATE INDEX IF NOT EXISTS dead_letters_key ON dead_letters (pixel_id, event_name, event_id)
"""
# Created after the upgrades have added their columns (see install).
LATE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS outbox_held ON outbox (hold_key) WHERE state = 4",
    "CREATE INDEX IF NOT EXISTS outbox_mine ON outbox (origin, id) WHERE state = 0",
)


@functools.cache  # four possible statements, built once each: this runs on every enqueue
def insert_sql(*, held: bool, observed: bool) -> str:
    """``INSERT OR IGNORE`` of one new row: fresh (state 3) or held (4, then its hold key),
    with its observation's seven ``obs_*`` values when ``observed``. Parameters: pixel_id,
    event_name, event_id, test_code, expires, created, due, payload, origin[, hold_key][, obs]."""
    columns = "pixel_id, event_name, event_id, test_code, expires, created, due, payload, origin"
    values = 9
    if held:
        columns += ", hold_key"
        values += 1
    if observed:
        columns += ", " + OBSERVED_COLUMNS
        values += 7
    state = 4 if held else 3
    marks = ", ".join(["?"] * values)
    return f"INSERT OR IGNORE INTO outbox ({columns}, state) VALUES ({marks}, {state})"


def _insert_selecting(picks: list[str], source: str) -> str:
    """:func:`insert_sql` (fresh, observed) with its VALUES replaced by ``picks`` (one SQL
    expression per parameter, in order) selected from ``source``."""
    head, _, values = insert_sql(held=False, observed=True).partition(" VALUES ")
    state = values.rpartition(", ")[2].rstrip(")")
    return f"{head} SELECT {', '.join(picks)}, {state} FROM {source}"


#: Parameters of the journal's insert, and where the payload is among them.
_WIDTH = insert_sql(held=False, observed=True).count("?")
_PAYLOAD = insert_sql(held=False, observed=True).partition(" (")[2].split(", ").index("payload")

#: :func:`insert_sql` (fresh, observed) of every row of one JSON array, each row an array of
#: that statement's parameters in order (journal rows of the first format).
INSERT_JSON_SQL = _insert_selecting(
    [f"json_extract(value, '$[{i}]')" for i in range(_WIDTH)], "json_each(?)"
)


def _insert_split_sql() -> str:
    size = _WIDTH - 1  # a row's last value: its payload's length in bytes
    picks = [f"json_extract(v, '$[{i}]')" for i in range(size)]
    length = f"json_extract(v, '$[{size}]')"
    picks.insert(_PAYLOAD, f"CAST(substr(?2, e - {length} + 1, {length}) AS TEXT)")
    return _insert_selecting(
        picks,
        f"(SELECT value AS v, sum(json_extract(value, '$[{size}]')) OVER (ORDER BY key) AS e"
        " FROM json_each(?1))",
    )


#: The same for journal rows without their payloads (each ends with its payload's length in
#: bytes) and, as a BLOB, those payloads back to back in the same order: where each payload
#: ends is the running sum of the lengths.
INSERT_SPLIT_SQL = _insert_split_sql()

#: Bound parameters one statement may carry: SQLite's default limit (999 before 3.32).
MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999


@functools.lru_cache(maxsize=16)
def insert_many_sql(*, held: bool, observed: bool, count: int) -> str:
    """:func:`insert_sql` for ``count`` rows in one statement (``VALUES (...), (...)``): one
    step of the VM instead of one per row, so a batch releases and retakes the GIL once, not
    once per row (the dispatcher thread waits for it meanwhile), and binds in C. Parameters:
    each row's, one row after another; see :func:`rows_per_insert` for ``count``'s bound."""
    one = insert_sql(held=held, observed=observed)
    head, _, group = one.partition(" VALUES ")
    return f"{head} VALUES {', '.join([group] * count)}"


def rows_per_insert(width: int) -> int:
    """Rows of ``width`` parameters that fit in one statement."""
    return max(1, MAX_VARIABLES // width)


COUNT_DEDUP = "UPDATE counters SET value = value + ? WHERE name = 'deduplicated'"

_LATER_COLUMNS = (
    ("delivery", "INTEGER"),
    ("obs_channel", "INTEGER"),
    ("obs_loaded", "INTEGER"),
    ("obs_twin", "INTEGER"),
    ("obs_keys", "INTEGER"),
    ("obs_fbp", "TEXT"),
    ("obs_fbc_age", "INTEGER"),
    ("obs_preview", "TEXT"),
    ("origin", "TEXT"),  # version 4
)


def install(conn: sqlite3.Connection) -> None:
    """Create every table and index, adding the columns older versions lack; inside the
    caller's write transaction."""
    for script in (TABLES, OBSERVATION_TABLES):
        for statement in script.split(";\n"):
            if statement.strip():
                conn.execute(statement)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
    if "hold_key" not in columns:  # version 1
        conn.execute("ALTER TABLE outbox ADD COLUMN hold_key TEXT")
    for column, kind in _LATER_COLUMNS:  # versions 1 to 3
        if column not in columns:
            conn.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")
    for index in LATE_INDEXES:
        conn.execute(index)
