"""Fixtures shared by the whole test suite.

Keep this file to fixtures that several test modules need; one-module helpers live in that module.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.stores import POSTGRES_URL
from hypothesis import settings

from capi_bridge import settings as settings_module
from capi_bridge import visitor_data
from capi_bridge.testing import FakeGraph

# The same examples on every run, and none replayed from an earlier run's database: a property
# test explores widely when written (raise max_examples locally), but the suite is the same
# every time (a random draw that fails once in ten runs is a flake, not a find).
settings.register_profile("suite", derandomize=True, database=None)
settings.load_profile("suite")


@pytest.fixture(autouse=True)
def _data_home_of_the_test(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's data directory, where an app without a folder of its own keeps its default
    outbox, is the test's own: no test writes the developer's home, and no two tests share a
    default outbox (one's leftover events would reach the other's fake Graph API)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))


@pytest.fixture(autouse=True)
def _threads_deliver_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """``delivery="auto"`` means a thread in the suite, not a delivery process: a process per
    test's outbox would cost more than the tests. tests/test_host_worker.py asks for the
    process by name, and scripts the suite runs in subprocesses get the real default."""
    monkeypatch.setattr(settings_module, "AUTO_DELIVERY", "thread")


@pytest.fixture(autouse=True)
def _drop_warnings_of_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process's once-a-minute memory of visitor-data warnings starts empty in each test:
    one test's warning must not silence the same warning another test looks for."""
    monkeypatch.setattr(visitor_data, "DROP_WARNINGS", visitor_data.DropWarnings())


@pytest.fixture
def fake_graph() -> Iterator[FakeGraph]:
    """A started fake Graph API, fresh for each test (no events, requests or faults leak).

    It accepts the token ``"test-token"`` and any numeric pixel id; point a client at
    ``fake_graph.url``. Starting one costs a few milliseconds, so no session-wide server is
    shared: shared state between tests would be the very thing these tests have to rule out.
    """
    with FakeGraph() as fake:
        yield fake


# --- delivery engine (outbox, dispatcher, Bridge) --------------------------------------------


@pytest.fixture
def outbox_path(tmp_path: object) -> str:
    """A fresh outbox file path in the test's own directory (real SQLite, WAL)."""
    import os

    return os.path.join(str(tmp_path), "outbox.sqlite3")


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema name of the test's own on the test server, dropped afterwards (the test's
    bridges and stores are closed before: fixtures tear down in reverse order)."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:16]
    yield name
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, outbox_path: str) -> dict[str, Any]:
    """The settings that choose each store in turn: a SQLite file in the test's directory,
    then a schema of the test's own on the PostgreSQL test server."""
    if request.param == "sqlite":
        return {"outbox_path": outbox_path}
    schema = request.getfixturevalue("pg_schema")
    return {"outbox_url": POSTGRES_URL, "outbox_schema": schema}


@pytest.fixture
def delivery_settings(fake_graph: FakeGraph, outbox_path: str) -> object:
    """``make(**overrides) -> Settings`` for a Bridge delivering to ``fake_graph``, fast retries."""
    from capi_bridge.settings import Settings

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "pixel_id": "1234567890",
            "access_token": "test-token",
            "graph_url": fake_graph.url,
            "outbox_path": outbox_path,
            "linger": 0.02,
            "retry_base": 0.02,
            "max_backoff": 1.0,
            "request_timeout": 5.0,
            "close_timeout": 5.0,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def make_bridge(delivery_settings: object) -> Iterator[object]:
    """``make(**setting_overrides) -> Bridge``; every Bridge made is closed after the test."""
    from capi_bridge.bridge import Bridge

    bridges: list[Bridge] = []

    def make(**overrides: object) -> Bridge:
        bridge = Bridge(delivery_settings(**overrides))  # type: ignore[operator]
        bridges.append(bridge)
        return bridge

    yield make
    for bridge in bridges:
        bridge.close(timeout=0)
