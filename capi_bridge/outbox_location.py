"""Where the outbox goes when the app does not say: an absolute place that does not depend on
the folder the app was started from.

A relative default (``capi-bridge-outbox.sqlite3``) put a file in whatever folder the server
happened to start in: a second one appeared when it started elsewhere, and the events accepted
into the first waited there for a process that never came back. The default is now:

* the app's own data folder, where the framework has one: Flask's instance folder
  (``app.instance_path``), Django's ``BASE_DIR`` (where ``startproject`` keeps ``db.sqlite3``),
  as ``capi-bridge-outbox.sqlite3``; an adapter passes it as ``Settings(outbox_folder=...)``;
* otherwise the user's data directory (``$XDG_DATA_HOME/capi-bridge``, else
  ``~/.local/share/capi-bridge``; ``~/Library/Application Support/capi-bridge`` on macOS,
  ``%LOCALAPPDATA%\\capi-bridge`` on Windows), one file per set of pixel ids: two apps of one
  user sending to different pixels must not share an outbox (a dispatcher sends every row it
  finds with its own token).

The folder is created when missing (it is ours). A default location is logged once per process
(WARNING, since a server should choose: a home folder may not survive a deploy), naming the
path, which ``capi-bridge outbox --path`` then takes, and the settings that choose another.
``CAPI_BRIDGE_OUTBOX_PATH`` and ``CAPI_BRIDGE_OUTBOX_URL`` always win.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping

logger = logging.getLogger("capi_bridge.outbox")

#: The file's name in an app's own folder.
FILE_NAME = "capi-bridge-outbox.sqlite3"
_announced: set[str] = set()
_announced_lock = threading.Lock()


def user_data_dir(environ: Mapping[str, str] | None = None) -> str:
    """This user's folder for capi-bridge's data (see the module docstring), absolute."""
    env = os.environ if environ is None else environ
    if sys.platform == "win32" and env.get("LOCALAPPDATA"):
        base = env["LOCALAPPDATA"]
    elif sys.platform == "darwin":
        base = os.path.join(os.path.expanduser("~"), "Library", "Application Support")
    else:  # XDG Base Directory: a relative XDG_DATA_HOME is invalid and ignored
        xdg = env.get("XDG_DATA_HOME", "")
        home_share = os.path.join(os.path.expanduser("~"), ".local", "share")
        base = xdg if os.path.isabs(xdg) else home_share
    return os.path.join(os.path.abspath(base), "capi-bridge")


def default_outbox_path(
    pixel_ids: Iterable[str], folder: str | os.PathLike[str] | None = None
) -> str:
    """The outbox file for an app that names none: in ``folder`` (the app's own), else in the
    user's data directory under the pixel ids' name."""
    if folder is not None:
        return os.path.join(os.path.abspath(os.fspath(folder)), FILE_NAME)
    name = "-".join(sorted(set(pixel_ids))) or "none"
    if len(name) > 64:  # many pixels: a short, stable name instead
        name = hashlib.sha256(name.encode()).hexdigest()[:16]
    return os.path.join(user_data_dir(), f"outbox-{name}.sqlite3")


def announce(path: str, settings_names: tuple[str, str]) -> None:
    """Say once per process where a default outbox is, and which settings choose another."""
    with _announced_lock:
        if path in _announced:
            return
        _announced.add(path)
    path_name, url_name = settings_names
    logger.warning(
        "capi-bridge: the outbox is %s (the default location); set %s to another file, or %s "
        "to a PostgreSQL database, to choose it (`capi-bridge outbox stats --path %s` reads it)",
        path,
        path_name,
        url_name,
        path,
    )
