"""What to do after a failed send: the retry policy, apart from any I/O so tests never sleep.

The Graph client already classifies every failure (:class:`~capi_bridge.graph.ErrorKind`); this
module turns that class into an action for the dispatcher and computes backoffs:

* ``RETRY`` (network, 5xx, 429, throttling codes): back off exponentially with *full jitter*
  (``uniform(0, min(probe, base * 2**n))``, so many workers that failed together do not come
  back together). The ceiling stops growing at ``probe_interval`` (30 s): however long the
  outage, a failing pixel is probed about every 30 s, so the backlog starts draining within
  30 s of Meta answering again (a 300 s ceiling once left 3,000 events waiting two minutes
  after recovery). Meta's ``Retry-After`` is a floor, clamped to ``max_backoff`` so a hostile
  or buggy header cannot park delivery for days (PostHog's rule).
* ``REJECTED``: Meta refuses a whole batch when one event is bad, so a batch of several events is
  bisected until the bad ones are alone; a single rejected event is dead-lettered.
* ``AUTH`` (190) and ``CONFIG`` (wrong pixel, missing permission): retrying cannot help until a
  human fixes the setup, so the pixel's circuit opens for ``auth_pause`` and the events wait.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from capi_bridge.graph import ErrorKind, GraphError


class Action(str, enum.Enum):
    """The dispatcher's next step for a failed batch."""

    BACKOFF = "backoff"  # keep the events, retry the pixel after a jittered delay
    BISECT = "bisect"  # split the batch and send the halves
    DEAD_LETTER = "dead_letter"  # one event Meta refuses: keep it aside with Meta's reason
    PAUSE = "pause"  # credentials or setup are wrong: keep the events, open the circuit


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff arithmetic; ``rng`` is injectable (returns a float in [0, 1))."""

    base: float = 1.0
    cap: float = 300.0  # the most a Retry-After header may make us wait
    pause: float = 300.0
    probe: float = 30.0  # the exponential backoff's ceiling: probe at least this often
    rng: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def action(self, error: GraphError, batch_size: int) -> Action:
        """Map the client's classification (and the batch size) to an :class:`Action`."""
        if error.kind is ErrorKind.REJECTED:
            return Action.BISECT if batch_size > 1 else Action.DEAD_LETTER
        if error.kind in (ErrorKind.AUTH, ErrorKind.CONFIG):
            return Action.PAUSE
        return Action.BACKOFF

    def backoff(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1 = the first)."""
        exponent = max(0, failures - 1)
        top = min(self.cap, self.probe)
        ceiling = top if exponent >= 64 else min(top, self.base * 2.0**exponent)
        delay = self.rng() * ceiling
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.cap))
        return delay

    def pause_for(self, failures: int) -> float:
        """The circuit stays open ``auth_pause`` seconds, probing once per period."""
        del failures  # a fixed period: a human has to act, probing faster would not help
        return self.pause
