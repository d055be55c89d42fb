"""The retry policy: pure arithmetic with an injected RNG (and clock), so nothing here sleeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from capi_bridge.delivery.outcomes import Settler
from capi_bridge.delivery.retry import Action, RetryPolicy
from capi_bridge.delivery.sqlite_store import SQLiteStore
from capi_bridge.graph import ErrorKind, GraphError


def error(kind: ErrorKind, retry_after: float | None = None) -> GraphError:
    return GraphError("boom", kind=kind, retry_after=retry_after)


@pytest.mark.parametrize(
    ("kind", "size", "action"),
    [
        (ErrorKind.RETRY, 1000, Action.BACKOFF),
        (ErrorKind.REJECTED, 1000, Action.BISECT),
        (ErrorKind.REJECTED, 2, Action.BISECT),
        (ErrorKind.REJECTED, 1, Action.DEAD_LETTER),
        (ErrorKind.AUTH, 1000, Action.PAUSE),
        (ErrorKind.CONFIG, 1, Action.PAUSE),
    ],
)
def test_action_follows_the_clients_classification(
    kind: ErrorKind, size: int, action: Action
) -> None:
    assert RetryPolicy().action(error(kind), size) is action


def test_real_graph_errors_map_to_actions() -> None:
    policy = RetryPolicy()
    token = GraphError("Invalid OAuth access token", status=401, code=190)
    poison = GraphError("Invalid parameter", status=400, code=100, error_subcode=2804016)
    throttled = GraphError("(#4) Application request limit reached", status=400, code=4)
    assert policy.action(token, 10) is Action.PAUSE
    assert policy.action(poison, 1) is Action.DEAD_LETTER
    assert policy.action(throttled, 10) is Action.BACKOFF


def test_backoff_is_exponential_capped_full_jitter() -> None:
    top = RetryPolicy(base=0.5, cap=10.0, rng=lambda: 0.999999)
    assert [round(top.backoff(n), 3) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert top.backoff(10_000) == pytest.approx(10.0)  # no overflow for long outages
    bottom = RetryPolicy(base=0.5, cap=10.0, rng=lambda: 0.0)
    assert bottom.backoff(5) == 0.0  # full jitter: anywhere from zero to the ceiling
    half = RetryPolicy(base=1.0, cap=100.0, rng=lambda: 0.5)
    assert half.backoff(4) == 4.0


def test_retry_after_is_a_floor_clamped_to_the_cap() -> None:
    policy = RetryPolicy(base=1.0, cap=30.0, rng=lambda: 0.0)
    assert policy.backoff(1, retry_after=7.0) == 7.0
    assert policy.backoff(1, retry_after=86400.0) == 30.0  # a hostile header cannot park us
    high = RetryPolicy(base=1.0, cap=30.0, rng=lambda: 0.999999)
    assert high.backoff(5, retry_after=2.0) == pytest.approx(16.0, rel=1e-3)  # the larger one wins


def test_an_open_circuit_waits_the_pause_after_every_failure(tmp_path: Path) -> None:
    """An auth error pauses the pixel ``pause`` seconds after each failure, never growing
    like a backoff (a person fixes the token; the next probe must not drift hours away),
    and a pause burns no attempt. Settled on a real outbox, with an injected clock."""
    store = SQLiteStore(str(tmp_path / "outbox.sqlite3"))
    now = [1_800_000_000.0]
    policy = RetryPolicy(base=1.0, cap=3600.0, pause=120.0, probe=3600.0, rng=lambda: 0.999999)
    settler = Settler(store, policy, "host:1:a", lambda: now[0])
    store.enqueue([("111", "Lead", "lead-1", "", now[0] + 86400, "{}")], now[0])
    token = GraphError("Invalid OAuth access token", status=401, code=190)
    for failures in range(1, 7):
        store.prepare()
        claim = store.claim("111", "", owner="host:1:a", now=now[0], limit=9, lease=60, linger=0)
        [row] = claim.rows
        assert row.attempts == 0  # a pause is not a try
        decision = settler.settle("111", claim.rows, [], token)
        assert (decision.action, decision.retry_at) == (Action.PAUSE, now[0] + 120.0)
        [pause] = store.stats(now[0]).paused
        assert (pause.kind, pause.until, pause.failures) == ("auth", now[0] + 120.0, failures)
        now[0] = pause.until
    store.close()


def test_a_failing_pixel_is_probed_at_least_every_probe_interval() -> None:
    """However many failures so far, the next try is at most ``probe`` seconds away, unless
    Meta's Retry-After asks for longer (still clamped to ``cap``)."""
    top = RetryPolicy(base=1.0, cap=300.0, probe=30.0, rng=lambda: 0.999999)
    assert [round(top.backoff(n)) for n in (1, 5, 6, 9, 50, 10_000)] == [1, 16, 30, 30, 30, 30]
    assert top.backoff(9, retry_after=120.0) == 120.0  # honoured above the probe interval
    assert top.backoff(9, retry_after=86400.0) == 300.0  # clamped as before
    assert top.backoff(9, retry_after=5.0) == pytest.approx(30.0, rel=1e-3)
