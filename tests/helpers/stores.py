"""Where the store tests find PostgreSQL: ``tests/run`` makes sure a server answers there.

The variable is taken out of the environment once read: it starts with ``CAPI_BRIDGE_`` like
the settings, and ``Settings.from_env`` rightly refuses a ``CAPI_BRIDGE_*`` name it does not know
(in this process and in the app processes the tests start).
"""

from __future__ import annotations

import contextlib
import glob
import os
import subprocess
from collections.abc import Iterator

POSTGRES_URL = os.environ.pop(
    "CAPI_BRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@contextlib.contextmanager
def read_only(path: str) -> Iterator[None]:
    """A SQLite outbox file, its WAL and its journals made immutable (``chattr +i``): every
    write fails, through connections and files already open too, as on a read-only or failed
    disk; even root (the tests run as root in CI) cannot write. Writable again on exit."""
    intake = path + "-intake"  # the journals (capi_bridge.delivery.journal) are on that disk too
    os.makedirs(intake, mode=0o700, exist_ok=True)
    files = [path, path + "-wal", intake, *glob.glob(os.path.join(intake, "*"))]
    subprocess.run(["chattr", "+i", *files], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)


def dead_local_owner() -> str:
    """A lease owner on this host whose process has exited (a pid that was alive once)."""
    import socket
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return f"{socket.gethostname()}:{int(proc.stdout)}:dead"


def outbox_bytes(path: str) -> bytes:
    """Every byte of a SQLite outbox's files: the database, its WAL and shared memory, and its
    journals (``<path>-intake/``)."""
    files = glob.glob(path + "*") + glob.glob(os.path.join(path + "-intake", "*"))
    chunks = []
    for name in sorted(files):
        if os.path.isfile(name):
            with open(name, "rb") as f:
                chunks.append(f.read())
    return b"".join(chunks)
