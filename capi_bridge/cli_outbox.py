"""Which outbox a command reads: ``--url``/``--path``, the app's ``CAPI_BRIDGE_*`` variables,
else the app's default location, found the way the app finds it.

The commands run in a process of their own, so they must find the very file the app writes,
and say which one they read when they cannot: an app without a folder of its own keeps its
outbox in the user's data directory under its pixel ids (``CAPI_BRIDGE_PIXEL_ID`` picks it, or
the only one there); a Flask app keeps it in its instance folder and a Django project next to
``BASE_DIR``, which only the app knows, so the message points at the line the app logs at
start-up. The commands never create an outbox.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from capi_bridge.outbox_location import FILE_NAME, default_outbox_path, user_data_dir

logger = logging.getLogger("capi_bridge.cli")

if TYPE_CHECKING:
    from capi_bridge.delivery.store import Store

_FRAMEWORKS = (
    f"A Flask app keeps its outbox in its instance folder (instance/{FILE_NAME}), a Django "
    f"project next to BASE_DIR ({FILE_NAME}); the app logs the path at start-up "
    '("capi-bridge: the outbox is ...").'
)


_PASS = (
    "Pass --url (or --path for a SQLite file), or set CAPI_BRIDGE_OUTBOX_URL / "
    "CAPI_BRIDGE_OUTBOX_PATH, to the app's outbox."
)


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """``--url``/``--path``/``--schema``: which outbox a command reads (the app's settings)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--url",
        default=None,
        help="the outbox URL, sqlite:///file or postgresql://user:pass@host/db "
        "(default: $CAPI_BRIDGE_OUTBOX_URL)",
    )
    where.add_argument(
        "--path",
        default=None,
        help="the SQLite outbox file (default: $CAPI_BRIDGE_OUTBOX_PATH, else the default "
        f"location of an app without a folder of its own: {user_data_dir()}/"
        "outbox-<CAPI_BRIDGE_PIXEL_ID>.sqlite3)",
    )
    parser.add_argument(
        "--schema",
        default=None,
        help="the PostgreSQL schema (default: $CAPI_BRIDGE_OUTBOX_SCHEMA or capi_bridge)",
    )


def default_path(environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The default location the app would use (None when it cannot be known here), and a
    sentence saying how it was chosen, or why it is unknown."""
    from capi_bridge.settings import ENV_PREFIX

    pixels = [p.strip() for p in environ.get(ENV_PREFIX + "PIXEL_ID", "").split(",") if p.strip()]
    if pixels:
        return (
            default_outbox_path(pixels),
            "the default location of an app without a folder of its own, for "
            f"{ENV_PREFIX}PIXEL_ID={','.join(pixels)}",
        )
    folder = user_data_dir(environ)
    found = sorted(glob.glob(os.path.join(folder, "outbox-*.sqlite3")))
    if len(found) == 1:
        return found[0], f"the only outbox in the default location ({ENV_PREFIX}PIXEL_ID unset)"
    there = f"it holds {len(found)}: {', '.join(found)}" if found else "it holds none"
    return None, (
        f"no outbox was named, and without {ENV_PREFIX}PIXEL_ID the default one in {folder} "
        f"is unknown ({there})"
    )


def open_outbox(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Store | None:
    """The outbox named by --url/--path, the environment or the defaults, or None (and a
    message saying which it tried and how to name another) if there is none there."""
    from capi_bridge.delivery import open_store
    from capi_bridge.delivery.store import StoreError
    from capi_bridge.settings import ENV_PREFIX

    env = os.environ if environ is None else environ
    url = args.url or (None if args.path else env.get(ENV_PREFIX + "OUTBOX_URL"))
    chosen = ""
    if not url:
        path = args.path or env.get(ENV_PREFIX + "OUTBOX_PATH")
        if not path:
            path, chosen = default_path(env)
            if path is None:
                print(f"capi-bridge: {chosen}. {_FRAMEWORKS}\n{_PASS}")
                return None
        url = f"sqlite:///{path}"
    schema = args.schema or env.get(ENV_PREFIX + "OUTBOX_SCHEMA") or "capi_bridge"
    try:
        store = open_store(url, schema=schema, create=False)
    except StoreError as exc:
        print(f"capi-bridge: {exc}")
        if chosen:
            print(f"That path is {chosen}. {_FRAMEWORKS}")
        print(_PASS)
        return None
    # Every event accepted on this host, journaled by its app process or already moved in; a
    # locked outbox, or journals this user cannot read: what is in is what is shown.
    try:
        store.ingest(wait=1.0)
    except store.errors as exc:
        logger.debug("capi-bridge: showing only what is in %s: %s", store.location, exc)
    return store
