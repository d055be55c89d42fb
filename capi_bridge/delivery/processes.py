"""This process's dispatchers, and the ids that name a process in the outbox.

Kept apart from the delivery loop (:mod:`capi_bridge.delivery.dispatcher`) because it is about
processes, not delivery: the interpreter-exit flush of every dispatcher still running here, the
fork bookkeeping that makes a child start afresh, and the ``host:pid:random`` owner id that
leases and ``origin`` carry (a local store reads its pid to reclaim a dead process's leases).
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import uuid
from typing import Protocol

logger = logging.getLogger("capi_bridge.delivery")


class Closable(Protocol):
    """What the exit hook needs of a dispatcher."""

    pid: int

    def close(self, timeout: float) -> bool: ...

    @property
    def close_timeout(self) -> float: ...


class Running:
    """The dispatchers running in this process. The interpreter-exit flush works from here,
    not from the Bridge: an app may drop its Bridge object while its events are on the way."""

    def __init__(self) -> None:
        self._members: set[Closable] = set()
        self._lock = threading.Lock()

    def add(self, dispatcher: Closable) -> None:
        with self._lock:
            self._members.add(dispatcher)

    def discard(self, dispatcher: Closable) -> None:
        with self._lock:
            self._members.discard(dispatcher)

    def close_all(self) -> None:
        """Bounded flush of every dispatcher of this process (``close_timeout`` each)."""
        with self._lock:
            mine = [d for d in self._members if d.pid == os.getpid()]
        for dispatcher in mine:
            try:
                dispatcher.close(dispatcher.close_timeout)
            except Exception:  # never turn an app's clean exit into a traceback
                logger.exception("capi-bridge: closing the dispatcher at exit failed")

    def after_fork(self) -> None:
        self._members = set()  # the parent's threads do not exist in the child
        self._lock = threading.Lock()


running = Running()
atexit.register(running.close_all)
os.register_at_fork(after_in_child=running.after_fork)

_pid = os.getpid()


def _note_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_note_pid)


def current_pid() -> int:
    """``os.getpid()`` without the system call (kernels and libcs no longer cache it): the
    request path asks on every enqueue whether it is still in the process it started in."""
    return _pid


def new_owner_id() -> str:
    """``host:pid:random``: unique per process (and per fork), for leases and ``origin``; a
    local store also reads the pid to reclaim the leases of a process that died."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    """Is a local process with this pid still running (signal 0 checks without killing)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
