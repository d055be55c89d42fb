"""``delivery="process"`` (the default for a SQLite outbox): the app's own processes start one
delivery process per outbox per host, share it, and let it go when the last of them leaves.

Why a process: a dispatcher thread shares its process's GIL with the request threads, and
CPython hands the GIL over only every 5 ms, so a process that stores events as fast as it can
starves the thread that sends them (``benchmarks/delivery.py``, the same day: ``enqueue_many``
3.05x Meta's SDK at its best with the thread, 4.26x with a process of its own; ``enqueue``
1.96x and 3.06x). ``capi-bridge worker`` already did that, but someone had to run it; here
nobody has to.

Two lock files beside the outbox (``flock``, so the kernel drops a lock when its process dies,
however it dies) say who is there:

* ``<outbox>-worker.lock``: held exclusively by the delivering process. An app process that can
  take it finds no worker running, and starts one (``python -m capi_bridge.cli worker
  --managed``, its settings handed over on a pipe, never on the command line or in the
  environment, where ``ps`` shows them), handing it the lock it took: at no moment is the lock
  free, so app processes that start together start one delivery process between them.
* ``<outbox>-clients.lock``: held shared by every app process using the outbox. The worker
  tries to take it exclusively every :data:`CHECK_EVERY` seconds; once it can, no app process
  is left: it lets the worker lock go *before* the clients lock, so an app process that arrives
  meanwhile (it waits on the clients lock) finds the worker lock free and starts a new one. It
  then delivers what the last ones left, for up to ``close_timeout``, and exits. An app
  process's exit still waits up to ``close_timeout`` for its own events, as with a thread: a
  container that stops with the app takes the delivery process with it.

An app process looks for the worker every :data:`CHECK_EVERY` seconds (its dispatcher's idle
pass), so a worker that crashed is replaced within a second; a worker that cannot start at
all (:data:`MAX_FAILED_STARTS` in a row) makes the app process deliver in a thread of its
own, with a warning that says why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from capi_bridge.settings import Settings

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: Settings never resolves "process" there
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("capi_bridge.delivery")

#: What ``sys.executable`` is called when it is an interpreter (python3.13t, pypy3, python.exe).
_PYTHON = re.compile(r"(python|pypy)[0-9.]*[dmt]?(\.exe)?", re.IGNORECASE)

#: How often an app process looks for its worker, and a worker for app processes.
CHECK_EVERY = 1.0
#: Worker starts that failed in a row before an app process delivers in a thread instead.
MAX_FAILED_STARTS = 3


def lock_paths(outbox_path: str) -> tuple[str, str]:
    """The worker's and the app processes' lock files of the outbox at ``outbox_path``."""
    base = os.path.abspath(outbox_path)
    return base + "-worker.lock", base + "-clients.lock"


def _open(path: str) -> IO[bytes]:
    return open(path, "a+b")  # held open as long as the lock


def _try_lock(handle: IO[bytes], exclusive: bool) -> bool:
    assert fcntl is not None
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def delivery_pid(outbox_path: str) -> int | None:
    """The pid of the process delivering from the SQLite outbox at ``outbox_path`` on this
    host (a delivery process, or a ``capi-bridge worker``: it writes its pid into the worker
    lock), or None when none runs. Reads only: creates no lock file (``outbox stats``)."""
    try:
        handle = open(lock_paths(outbox_path)[0], "rb")  # noqa: SIM115 - closed below
    except OSError:
        return None
    with handle:
        if _try_lock(handle, exclusive=True):
            return None
        text = handle.read(32).strip()
    return int(text) if text.isdigit() else 0


def worker_running(outbox_path: str) -> bool:
    """Whether a process holds the outbox's worker lock (a worker delivers from it now)."""
    return delivery_pid(outbox_path) is not None


# --- the app process's side ---------------------------------------------------------------------


def tender_for(settings: Settings) -> WorkerTender | None:
    """With ``delivery="process"``: this process's presence beside the outbox, and a delivery
    process started if none runs; None otherwise, or where the outbox's folder refuses the
    lock files (a warning says so: this process delivers in a thread)."""
    if settings.delivery_mode != "process":
        return None
    try:
        tender = WorkerTender(settings)
    except OSError as exc:
        logger.warning("capi-bridge: %s; this process delivers in a thread instead", exc)
        return None
    tender.tend()  # at once: the first events should not wait for the first idle pass
    return tender


class WorkerTender:
    """An app process's part: say "I am here" (the shared clients lock, held until
    :meth:`close` or the process's end) and keep a worker running (:meth:`tend`)."""

    def __init__(self, settings: Settings) -> None:
        assert settings.outbox_path is not None
        self.settings = settings
        self._path = settings.outbox_path
        self._child: Child | None = None
        self._failed = 0
        self._why = ""
        self._lock = threading.Lock()
        self._clients: IO[bytes] | None = _open(lock_paths(self._path)[1])
        assert fcntl is not None
        # Blocks only while a worker that found no app process swaps its locks: an instant.
        fcntl.flock(self._clients.fileno(), fcntl.LOCK_SH)

    def tend(self) -> bool:
        """Start a worker if none runs; False once starting one failed
        :data:`MAX_FAILED_STARTS` times in a row (deliver in a thread instead)."""
        try:
            return self._tend()
        except FileNotFoundError:  # the outbox's folder is gone: the store says so itself
            return True
        except OSError as exc:  # the worker lock refused (its permissions): never a 5xx
            logger.warning(
                "capi-bridge: %s; this process delivers in a thread instead (%s=thread says so)",
                exc,
                self.settings.name_of("delivery"),
            )
            return False

    def _tend(self) -> bool:
        with self._lock:
            if self._clients is None:  # closed: this process no longer uses the outbox
                return True
            child = self._child
            if child is not None:
                code = child.poll()  # reaps it once it has ended
                if code is None:  # ours runs, holding the worker lock it was handed
                    self._failed = 0
                    return True
                self._child = None
                if code:  # 0: it found another one delivering, or it was done
                    self._failed += 1
                    self._why = f"it exited with status {code} {self._failed} times in a row"
                else:
                    self._failed = 0
            lock = _open(lock_paths(self._path)[0])
            with lock:  # closed once the child holds it too: the lock is then the child's
                if not _try_lock(lock, exclusive=True):  # a worker runs, or is starting
                    self._failed = 0
                    return True
                if self._failed < MAX_FAILED_STARTS:
                    try:
                        self._child = spawn(self.settings, lock.fileno())
                        return True
                    except OSError as exc:
                        self._failed, self._why = MAX_FAILED_STARTS, str(exc)
            logger.warning(
                "capi-bridge: the delivery process could not start (%s; its log, if any, is "
                "above); this process delivers in a thread instead (%s=thread says so)",
                self._why,
                self.settings.name_of("delivery"),
            )
            return False

    def close(self) -> None:
        """Let the worker know this process is gone (it exits once every app process is)."""
        with self._lock:
            if self._clients is not None:
                self._clients.close()
                self._clients = None


class Child:
    """A delivery process this process started: its pid, and its exit status once reaped.

    Not a ``subprocess.Popen``: the delivery process outlives the Bridge that started it by
    design, and a Popen collected (or left at interpreter exit) while its process runs warns
    with a ResourceWarning."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """Its exit status (negative: the signal that ended it), or None while it runs."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere, or we are a forked copy
                self.returncode = 0
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        """:meth:`poll` until it has ended or ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.returncode


#: The descriptor a delivery process this package starts finds the worker lock on, held.
LOCK_FD = 3


def spawn(settings: Settings, lock_fd: int) -> Child:
    """Start ``capi-bridge worker --managed`` with ``settings`` on its standard input and the
    worker lock, which ``lock_fd`` holds, on descriptor :data:`LOCK_FD`.

    Handing the lock over (a flock belongs to the open file, which both then share) leaves no
    moment when it is free, so app processes that start at once (gunicorn's workers) start one
    delivery process, not one each. The child runs the same interpreter and imports this very
    package (its folder goes first on ``PYTHONPATH``), starts a session of its own so that the
    Ctrl-C meant for a development server does not cut delivery short, and writes its log to
    the app's standard error. It inherits no other descriptor (Python opens files
    non-inheritable): above all not this process's hold on the clients lock."""
    if getattr(sys, "frozen", False) or not _PYTHON.fullmatch(os.path.basename(sys.executable)):
        # uWSGI, mod_wsgi or a frozen app: sys.executable is not an interpreter to run -m with
        raise OSError(f"sys.executable ({sys.executable or 'empty'}) is not a Python to start")
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", "capi_bridge.cli", "worker", "--managed"]
    read, write = os.pipe()
    # Above the descriptors the child gets, so no dup2 is a no-op that keeps close-on-exec.
    sources = [_above(read, LOCK_FD), _above(lock_fd, LOCK_FD)]
    os.close(read)
    try:
        pid = os.posix_spawn(
            sys.executable,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, sources[0], 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, sources[1], LOCK_FD),
            ],
            setsid=True,
        )
    except NotImplementedError as exc:  # a platform without POSIX_SPAWN_SETSID
        os.close(write)
        raise OSError(f"cannot start a process in a session of its own here ({exc})") from exc
    except OSError:
        os.close(write)
        raise
    finally:
        for fd in sources:
            os.close(fd)
    with contextlib.suppress(OSError), open(write, "wb") as pipe:  # OSError: it died at once,
        pipe.write(pickle.dumps((settings_values(settings), os.getpid())))  # tend() says why
    logger.debug("capi-bridge: started the delivery process %d", pid)
    return Child(pid)


def _above(fd: int, floor: int) -> int:
    """A close-on-exec duplicate of ``fd`` numbered above ``floor`` (same open file)."""
    assert fcntl is not None
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor + 1)


def settings_values(settings: Settings) -> dict[str, Any]:
    """What rebuilds ``settings`` in the worker (its outbox path resolved; it delivers)."""
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.init}
    values["delivery"] = "thread"
    return values


def read_handover(stream: IO[bytes]) -> tuple[Settings, int]:
    """The worker's side of :func:`spawn`: the settings, and the pid of the app process that
    started it (it wrote the pipe, so it is trusted)."""
    values, starter = pickle.loads(stream.read())  # written by the parent process
    return Settings(**values), int(starter)


# --- the worker's side --------------------------------------------------------------------------


class WorkerPresence:
    """The worker's part: hold the worker lock while delivering; learn when no app process
    is left."""

    def __init__(self, outbox_path: str) -> None:
        self._paths = lock_paths(outbox_path)
        self._worker: IO[bytes] | None = None

    def claim(self) -> bool:
        """Take the worker lock; False when another worker holds it."""
        handle = _open(self._paths[0])
        if not _try_lock(handle, exclusive=True):
            handle.close()
            return False
        self._hold(handle)
        return True

    def adopt(self) -> bool:
        """The worker lock :func:`spawn` handed over on :data:`LOCK_FD`, already held; or, if
        that descriptor is not this outbox's worker lock, :meth:`claim`."""
        try:
            handed, ours = os.fstat(LOCK_FD), os.stat(self._paths[0])
        except OSError:
            return self.claim()
        if (handed.st_dev, handed.st_ino) != (ours.st_dev, ours.st_ino):
            return self.claim()
        self._hold(open(LOCK_FD, "r+b"))  # noqa: SIM115 - held until release()
        return True

    def _hold(self, handle: IO[bytes]) -> None:
        handle.truncate(0)  # who holds it, for `capi-bridge outbox stats`
        handle.seek(0)
        handle.write(str(os.getpid()).encode())
        handle.flush()
        self._worker = handle

    def clients_gone(self) -> bool:
        """True (and the worker lock let go) once no app process holds the clients lock."""
        try:
            clients = _open(self._paths[1])
        except FileNotFoundError:  # the outbox's folder is gone (a demo's): nobody uses it
            self.release()
            return True
        with clients:
            if not _try_lock(clients, exclusive=True):
                return False
            self.release()  # before the clients lock: see the module's docstring
            return True

    def release(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None


def watch_app_processes(
    presence: WorkerPresence,
    stop: threading.Event,
    drained: Callable[[], bool],
    linger: float,
    starter: int,
) -> None:
    """Until ``stop``, every :data:`CHECK_EVERY` seconds: once no app process is left, wait up
    to ``linger`` seconds for ``drained()`` (what they stored is sent), then set ``stop``.

    Also once the app process that started this one (``starter``) is gone, even while others
    remain: the worker lock goes at once and the next app process to look starts a delivery
    process with *its* settings. Without this, a rolling restart (gunicorn's HUP, a recycled
    worker) that never leaves the outbox without an app process would keep the first
    deploy's settings (its token, its Graph URL) for ever."""
    try:
        while not stop.wait(CHECK_EVERY):
            starter_gone = os.getppid() != starter
            if starter_gone:
                presence.release()
            if presence.clients_gone():
                deadline = time.monotonic() + linger
                while not drained() and time.monotonic() < deadline and not stop.wait(0.05):
                    pass
                break
            if starter_gone:  # app processes remain: theirs is the next delivery process
                break
    except Exception:  # a bug: say so, and stop rather than stay without anyone to serve
        logger.warning("capi-bridge: the delivery process stops", exc_info=True)
    finally:
        stop.set()
