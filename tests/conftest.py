"""Fixtures shared by the whole test suite.

Keep this file to fixtures that several test modules need; one-module helpers live in that module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from capi_bridge.testing import FakeGraph


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
