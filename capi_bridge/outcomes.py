"""Settling a batch after Meta answered: the outbox transition and the one log line it needs.

Each outcome writes to the outbox first (so every process sees it) and then logs once, naming
the pixel, the event's name and id, Meta's code, subcode, message and fbtrace_id, and where to
look next; never a payload or the token. A circuit that opens logs one WARNING with the fix;
the probes that follow log at INFO, so a dead token does not flood the logs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from capi_bridge import leases
from capi_bridge.graph import ErrorKind, GraphError
from capi_bridge.leases import Claimed
from capi_bridge.outbox import Outbox
from capi_bridge.outbox_admin import LastError, encode_last_error
from capi_bridge.retry import Action, RetryPolicy

logger = logging.getLogger("capi_bridge.delivery")

_FIXES = {
    ErrorKind.AUTH: "generate a new access token (Events Manager > Settings > Conversions API)",
    ErrorKind.CONFIG: "check the pixel id and that the access token has access to this pixel",
}
_EXPIRED = "event_time is older than Meta's window (7 days): Meta would reject the batch"


def last_error(pixel_id: str, error: GraphError, now: float) -> str:
    """The ``last_error`` record for ``stats()``: Meta's words and trace id, no payload."""
    return encode_last_error(
        LastError(
            at=now,
            pixel_id=pixel_id,
            kind=error.kind.value,
            message=error.error_user_msg or error.message,
            status=error.status,
            code=error.code,
            subcode=error.error_subcode,
            fbtrace_id=error.fbtrace_id,
        )
    )


def expire(outbox: Outbox, pixel_id: str, rows: Sequence[Claimed], now: float) -> None:
    """Dead-letter events past Meta's window before they make a whole batch fail."""
    leases.dead_letter(outbox, [r.id for r in rows], reason="expired", now=now, message=_EXPIRED)
    logger.warning(
        "pixel %s: %d events dead-lettered as expired before sending (first: %s %s); "
        "see `capi-bridge outbox dead`",
        pixel_id,
        len(rows),
        rows[0].event_name,
        rows[0].event_id,
    )


def reject(outbox: Outbox, pixel_id: str, row: Claimed, error: GraphError, now: float) -> None:
    """One event Meta refuses on its own: set aside with Meta's reason."""
    message = error.error_user_msg or error.message
    leases.dead_letter(
        outbox,
        [row.id],
        reason="rejected",
        now=now,
        message=message,
        code=error.code,
        subcode=error.error_subcode,
        fbtrace_id=error.fbtrace_id,
        error=last_error(pixel_id, error, now),
    )
    logger.warning(
        "pixel %s: Meta rejected %s event %s (code %s/%s, fbtrace_id %s): %s; "
        "dead-lettered, see `capi-bridge outbox dead`",
        pixel_id,
        row.event_name,
        row.event_id,
        error.code,
        error.error_subcode,
        error.fbtrace_id,
        message,
    )


def fail(
    outbox: Outbox,
    policy: RetryPolicy,
    pixel_id: str,
    ids: Sequence[int],
    error: GraphError,
    clock: Callable[[], float],
) -> float:
    """Keep the events and pause the pixel (backoff or open circuit); returns the retry time."""
    pause = policy.action(error, len(ids)) is Action.PAUSE

    def delay(failures: int) -> float:
        if pause:
            return policy.pause_for(failures)
        return policy.backoff(failures, error.retry_after)

    now = clock()
    failures, until = leases.failed(
        outbox,
        ids,
        pixel_id,
        kind=error.kind.value,
        now=now,
        delay=delay,
        error=last_error(pixel_id, error, now),
        burn_attempt=not pause,
    )
    wait = max(0.0, until - clock())
    if pause and failures == 1:
        logger.warning(
            "pixel %s: delivery paused, %s; %d events kept in %s, next try in %.0f s. Fix: %s",
            pixel_id,
            error,
            len(ids),
            outbox.path,
            wait,
            _FIXES.get(error.kind, "see the error above"),
        )
    else:
        logger.log(
            logging.INFO if failures == 1 or pause else logging.DEBUG,
            "pixel %s: %d events not delivered (%s), retry %d in %.1f s",
            pixel_id,
            len(ids),
            error,
            failures,
            wait,
        )
    return until
