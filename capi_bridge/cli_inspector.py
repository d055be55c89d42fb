"""``capi-bridge inspector-link`` and ``capi-bridge diagnostics``: the inspector's commands.

Kept out of :mod:`capi_bridge.cli` so that module stays a list of small commands; like the
others, these import what they need only when run, so ``capi-bridge --help`` stays instant.
"""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    link = sub.add_parser(
        "inspector-link",
        help="print a signed, expiring link to the inspector that works from any address",
    )
    link.add_argument("url", help="the site, e.g. https://shop.example/ (or the inspector's URL)")
    link.add_argument(
        "--hours", type=float, default=1.0, help="how long the link works (default 1, at most 168)"
    )
    link.set_defaults(func=_cmd_inspector_link)

    diag = sub.add_parser(
        "diagnostics",
        help="dedup coverage, match keys and estimated match quality per event name",
    )
    from capi_bridge.cli import add_store_arguments

    add_store_arguments(diag)
    diag.add_argument(
        "--window", type=float, default=86400.0, help="seconds to look back (default 86400)"
    )
    diag.add_argument("--json", action="store_true", help="print one JSON object")
    diag.set_defaults(func=_cmd_diagnostics)


def _cmd_inspector_link(args: argparse.Namespace) -> int:
    import dataclasses
    import os

    from capi_bridge.cli import secret_from_env
    from capi_bridge.inspector import LINK_MAX_AGE, make_inspector_link
    from capi_bridge.settings import ENV_PREFIX, Settings

    secret = secret_from_env()
    if secret is None:
        return 1
    if not 0 < args.hours * 3600 <= LINK_MAX_AGE:
        print(f"capi-bridge: --hours must be more than 0 and at most {LINK_MAX_AGE // 3600}.")
        return 1
    default = next(f.default for f in dataclasses.fields(Settings) if f.name == "inspector_path")
    path = os.environ.get(ENV_PREFIX + "INSPECTOR_PATH") or str(default)
    try:
        link = make_inspector_link(secret, args.url, path=path, seconds=args.hours * 3600)
    except ValueError as exc:
        print(f"capi-bridge: {exc}; give the site's address, e.g. https://shop.example/")
        return 1
    print(link)
    print(
        f"It works for {args.hours:g} h from any address, on this host only (the site needs "
        "CAPI_BRIDGE_INSPECTOR=true). Anyone holding it sees masked identifiers and what "
        "visitors do: share it as you would a password."
    )
    return 0


def _cmd_diagnostics(args: argparse.Namespace) -> int:
    import json
    import time

    from capi_bridge.cli import _open_outbox
    from capi_bridge.diagnostics import compute, format_text

    if args.window <= 0:
        print("capi-bridge: --window must be a number of seconds above 0, e.g. 86400.")
        return 1
    outbox = _open_outbox(args)
    if outbox is None:
        return 1
    try:
        outbox.prepare()  # the observations of events no dispatcher has picked up yet
        result = compute(outbox, time.time(), args.window)
    except outbox.errors as exc:
        print(f"capi-bridge: cannot read the outbox at {outbox.location}: {exc}")
        print("Pass --url or --path (or set CAPI_BRIDGE_OUTBOX_URL) to the app's outbox.")
        return 1
    print(json.dumps(result.as_dict(), sort_keys=True) if args.json else format_text(result))
    return 0
