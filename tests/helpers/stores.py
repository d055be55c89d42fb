"""Where the store tests find PostgreSQL: ``tests/run`` makes sure a server answers there.

The variable is taken out of the environment once read: it starts with ``CAPI_BRIDGE_`` like
the settings, and ``Settings.from_env`` rightly refuses a ``CAPI_BRIDGE_*`` name it does not know
(in this process and in the app processes the tests start).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

POSTGRES_URL = os.environ.pop(
    "CAPI_BRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@contextlib.contextmanager
def read_only(path: str) -> Iterator[None]:
    """A SQLite outbox file and its WAL made immutable (``chattr +i``): every write fails,
    through connections already open too, as on a read-only or failed disk; even root (the
    tests run as root in CI) cannot write. Writable again on exit."""
    files = [path, path + "-wal"]
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
