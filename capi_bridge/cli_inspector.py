"""``capi-bridge inspector-link`` and ``capi-bridge diagnostics``: the inspector's commands.

Kept out of :mod:`capi_bridge.cli` so that module stays a list of small commands; like the
others, these import what they need only when run, so ``capi-bridge --help`` stays instant.
"""

from __future__ import annotations

import argparse

from capi_bridge.cli_common import (
    DURATIONS,
    EXIT_FAILED,
    EXIT_OK,
    Subparsers,
    add_command,
    duration,
    secret_from_env,
)
from capi_bridge.durations import format_duration


def add_commands(sub: Subparsers) -> None:
    link = add_command(
        sub,
        "inspector-link",
        summary="print a signed, expiring link to the inspector that works from any address",
        description="Print a link to the live inspector of the site at URL, signed with "
        "CAPI_BRIDGE_SECRET_KEY, bound\nto that host and expiring: it opens the inspector "
        "from any address (without it, only loopback\nclients may). The site needs "
        "CAPI_BRIDGE_INSPECTOR=true; the path is CAPI_BRIDGE_INSPECTOR_PATH.\n\n" + DURATIONS,
        examples=[
            "capi-bridge inspector-link https://shop.example/",
            "capi-bridge inspector-link https://shop.example/ --valid-for 2h",
        ],
        exits=[
            (EXIT_OK, "the link was printed"),
            (EXIT_FAILED, "no usable secret key, a URL that is not http(s), or a bad duration"),
        ],
    )
    link.add_argument(
        "url", metavar="URL", help="the site, e.g. https://shop.example/ (or the inspector's URL)"
    )
    valid = link.add_mutually_exclusive_group()
    valid.add_argument(
        "--valid-for",
        type=duration(),
        default=3600.0,
        metavar="DURATION",
        help="how long the link works (default 1h, at most 7d)",
    )
    # the flag README showed before durations took units: still works, as hours
    valid.add_argument("--hours", type=float, default=None, help=argparse.SUPPRESS)
    link.set_defaults(func=_cmd_inspector_link)

    diag = add_command(
        sub,
        "diagnostics",
        summary="dedup coverage, match keys and estimated match quality per event name",
        description="Per event name over a window, from every worker process's records in the "
        "outbox: how many events,\nthe share with both copies (dedup coverage), the share "
        "carrying each match key, fbc ages,\nwhat was refused and why, and an *estimate* of "
        "Meta's Event Match Quality (README explains it).\n\n" + DURATIONS,
        examples=[
            "capi-bridge diagnostics                      # the last 24h",
            "capi-bridge diagnostics --window 7d --json --path /var/lib/app/outbox.sqlite3",
        ],
        exits=[(EXIT_OK, "printed"), (EXIT_FAILED, "no outbox at the path, or a bad --window")],
    )
    from capi_bridge.cli_outbox import add_store_arguments

    add_store_arguments(diag)
    diag.add_argument(
        "--window",
        type=duration(),
        default=86400.0,
        metavar="DURATION",
        help="how far to look back (default 24h)",
    )
    diag.add_argument("--json", action="store_true", help="print one JSON object")
    diag.set_defaults(func=_cmd_diagnostics)


def _cmd_inspector_link(args: argparse.Namespace) -> int:
    import os
    import sys

    from capi_bridge.inspector import LINK_MAX_AGE, make_inspector_link
    from capi_bridge.settings import Settings, env

    secret = secret_from_env()
    if secret is None:
        return 1
    seconds = args.valid_for
    if args.hours is not None:
        seconds = args.hours * 3600
        print(
            f"capi-bridge: --hours is --valid-for {format_duration(seconds)} now", file=sys.stderr
        )
    if not 0 < seconds <= LINK_MAX_AGE:
        print(
            f"capi-bridge: --valid-for must be more than 0 and at most "
            f"{format_duration(LINK_MAX_AGE)}, e.g. 2h."
        )
        return 1
    path = os.environ.get(env("inspector_path")) or str(Settings.default_of("inspector_path"))
    try:
        link = make_inspector_link(secret, args.url, path=path, seconds=seconds)
    except ValueError as exc:
        print(f"capi-bridge: {exc}; give the site's address, e.g. https://shop.example/")
        return 1
    print(link)
    print(
        f"It works for {format_duration(seconds)} from any address, on this host only (the site "
        "needs CAPI_BRIDGE_INSPECTOR=true). Anyone holding it sees masked identifiers and what "
        "visitors do: share it as you would a password."
    )
    return 0


def _cmd_diagnostics(args: argparse.Namespace) -> int:
    import json
    import time

    from capi_bridge.cli_outbox import open_outbox
    from capi_bridge.diagnostics import compute, format_text

    if args.window <= 0:
        print("capi-bridge: --window must be above 0, e.g. 24h or 7d.")
        return 1
    outbox = open_outbox(args)
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
