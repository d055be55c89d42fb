"""The ``capi-bridge`` command: operator and developer tools.

Each sub-command lives in a small ``_cmd_*`` function registered in :func:`build_parser`; its
help says what it does, with examples, defaults and exit statuses (see
:mod:`capi_bridge.cli_common`). Heavy modules are imported inside the command that needs them so
``capi-bridge --help`` stays instant. Every command prints what it did, what it left and where
to look next, and exits non-zero on failure. A bare ``capi-bridge`` (or ``capi-bridge outbox``)
prints its help and exits 2: nothing was done, which a script must not take for success.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from capi_bridge._version import __version__
from capi_bridge.cli_common import (
    DURATIONS,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    HelpFormatter,
    Subparsers,
    add_command,
    duration,
    epilog,
    print_help,
)
from capi_bridge.cli_outbox import add_store_arguments, open_outbox


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capi-bridge",
        description="Meta Pixel + Conversions API redundant setup: developer and operator tools."
        "\n\nThe commands read the app's settings from CAPI_BRIDGE_* environment variables."
        "\n" + DURATIONS,
        epilog=epilog(
            [
                "capi-bridge demo                      # the example shop against a fake Meta",
                "capi-bridge check --test-event-code TEST12345",
                "capi-bridge outbox stats",
                "capi-bridge COMMAND --help            # a command's options and examples",
            ],
            [
                (EXIT_OK, "done"),
                (EXIT_FAILED, "the command failed (it says why)"),
                (EXIT_USAGE, "no command, or a malformed option: nothing was done"),
            ],
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"capi-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.set_defaults(func=print_help(parser))
    from capi_bridge import cli_inspector, cli_setup, cli_worker

    cli_setup.add_commands(sub)  # fake-graph, demo, check, test-link
    _add_outbox(sub)
    cli_inspector.add_commands(sub)  # inspector-link, diagnostics
    cli_worker.add_commands(sub)  # worker
    return parser


# --- outbox ---------------------------------------------------------------------------------


def _add_outbox(sub: Subparsers) -> None:
    no_outbox = (EXIT_FAILED, "no outbox there (nothing is created)")
    p = add_command(
        sub,
        "outbox",
        summary="inspect and repair the delivery outbox (stats, dead letters, purge)",
        description="Look into the outbox every worker process of the app shares (a SQLite "
        "file, or a PostgreSQL\nschema): what waits, what Meta refused and why; requeue "
        "dead letters after a fix; purge old\nkeys. Each action reads the outbox at --url "
        "or --path (default: $CAPI_BRIDGE_OUTBOX_URL, else\n$CAPI_BRIDGE_OUTBOX_PATH, else "
        "the default location the app uses, see --path)\nand never shows customer data.",
        examples=["capi-bridge outbox stats", "capi-bridge outbox ACTION --help"],
        exits=[(EXIT_OK, "done"), no_outbox, (EXIT_USAGE, "no ACTION: this help is printed")],
    )
    p.set_defaults(func=print_help(p))
    actions = p.add_subparsers(dest="action", metavar="ACTION")

    stats = add_command(
        actions,
        "stats",
        summary="pending, in flight, delivered, dead, held, last error, clock",
        description="Counts across every process sharing the outbox: pending, in flight, "
        "retrying, delivered,\ndead, deduplicated, held for consent; paused pixels, "
        "Meta's last error (message, code,\nfbtrace_id) and how far the sending machine's "
        "clock is from Meta's (its last answer's Date).",
        examples=["capi-bridge outbox stats", "capi-bridge outbox stats --json --path app.db"],
        exits=[(EXIT_OK, "printed"), no_outbox],
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=_cmd_outbox_stats)

    dead = add_command(
        actions,
        "dead",
        summary="list dead-lettered events with Meta's reason",
        description="The events set aside, newest first: id, pixel, event name and id, "
        "why (Meta's message,\ncode/subcode, fbtrace_id; or expired after Meta's 7 days). "
        "Requeue them with retry-dead\nonce the cause is fixed.",
        examples=["capi-bridge outbox dead", "capi-bridge outbox dead --limit 5 --json"],
        exits=[(EXIT_OK, "printed (also when there are none)"), no_outbox],
    )
    dead.add_argument("--limit", type=int, default=50, help="how many, newest first (default 50)")
    dead.add_argument("--json", action="store_true", help="print a JSON array")
    dead.set_defaults(func=_cmd_outbox_dead)

    retry = add_command(
        actions,
        "retry-dead",
        summary="put dead-lettered events back in the outbox (--id N ... or --all)",
        description="Requeue dead letters once what Meta refused is fixed: the app's "
        "dispatchers send them again\nwithin a second. Name them with --id (the ids "
        "`capi-bridge outbox dead` shows) or take --all.\nA dead letter whose key is held "
        "for consent is not requeued (it is sent when the visitor\nconsents).",
        examples=[
            "capi-bridge outbox retry-dead --id 12 15",
            "capi-bridge outbox retry-dead --all",
        ],
        exits=[
            (EXIT_OK, "requeued (with --all, also when there was nothing to requeue)"),
            (EXIT_FAILED, "none of the ids was requeued, or no outbox at the path"),
            (EXIT_USAGE, "neither --id nor --all was given: nothing was done"),
        ],
    )
    which = retry.add_mutually_exclusive_group()
    which.add_argument(
        "--id",
        type=int,
        nargs="+",
        dest="ids",
        metavar="N",
        help="dead-letter ids to retry (no default: give --id or --all)",
    )
    which.add_argument("--all", action="store_true", help="retry every dead letter")
    retry.set_defaults(func=_cmd_outbox_retry_dead)

    purge = add_command(
        actions,
        "purge",
        summary="delete delivered keys and/or dead letters",
        description="Delete delivered events' keys and dead letters (both, without --delivered "
        "or --dead).\nDelivered keys inside the dedup window (CAPI_BRIDGE_DEDUP_WINDOW, "
        f"default {_default_window()}) are kept\nunless --older-than says otherwise: a deleted "
        "key no longer stops a repeat of its event from\nbeing sent. Events waiting for "
        "delivery or consent are never purged. It reports what it\ndeleted, what it kept and "
        "why.\n\n" + DURATIONS,
        examples=[
            "capi-bridge outbox purge                        # keys past the dedup window, "
            "every dead letter",
            "capi-bridge outbox purge --dead --older-than 30d",
            "capi-bridge outbox purge --delivered --older-than 1h",
        ],
        exits=[(EXIT_OK, "purged (also when nothing was old enough)"), no_outbox],
    )
    purge.add_argument("--delivered", action="store_true", help="delivered events' keys")
    purge.add_argument("--dead", action="store_true", help="dead letters")
    purge.add_argument(
        "--older-than",
        type=duration(unit_required=True),
        metavar="AGE",
        help="only entries older than AGE, with a unit (bare numbers once meant hours): "
        "30d, 1h (default: delivered keys past the dedup window, every dead letter)",
    )
    purge.set_defaults(func=_cmd_outbox_purge)
    for action in (stats, dead, retry, purge):
        add_store_arguments(action)


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _cmd_outbox_stats(args: argparse.Namespace) -> int:
    import json
    import time

    from capi_bridge.clock import FIX

    outbox = open_outbox(args)
    if outbox is None:
        return 1
    now = time.time()
    stats = outbox.stats(now)
    if args.json:
        print(json.dumps(stats.as_dict(), sort_keys=True))
        return 0
    print(f"outbox {stats.path}")
    print(f"  pending      {stats.pending}")
    print(f"  in flight    {stats.in_flight}")
    print(f"  retrying     {stats.retrying}")
    print(f"  delivered    {stats.delivered}")
    print(f"  dead         {stats.dead}")
    print(f"  deduplicated {stats.deduplicated}")
    print(f"  held         {stats.held} (waiting for consent; {stats.held_expired} expired)")
    print(f"  oldest pending {_when(stats.oldest_pending_age)}")
    for pause in stats.paused:
        print(
            f"  pixel {pause.pixel_id} paused ({pause.kind}, {pause.failures} failures),"
            f" next try in {_when(pause.until - now)}"
        )
    err = stats.last_error
    if err is not None:
        codes = "/".join(str(c) for c in (err.code, err.subcode) if c is not None) or "-"
        print(
            f"  last error   {_when(now - err.at)} ago, pixel {err.pixel_id}, {err.kind},"
            f" code {codes}, fbtrace_id {err.fbtrace_id or '-'}: {err.message}"
        )
    clock = stats.clock
    if clock is not None:
        host = f" of {clock.host}" if clock.host else ""
        print(f"  clock        the clock{host} is {clock.describe()} ({_when(now - clock.at)} ago)")
        if clock.off:
            print(f"  Fix the clock: {FIX}.")
    if outbox.local:
        print(f"  delivery     {_deliverer(outbox.location)}")
    if stats.dead:
        print("Dead letters: `capi-bridge outbox dead`; requeue after a fix with `retry-dead`.")
    return 0


def _deliverer(outbox_path: str) -> str:
    """Who sends this host's SQLite outbox: the process holding its worker lock, if any."""
    from capi_bridge.delivery.host_worker import delivery_pid

    pid = delivery_pid(outbox_path)
    if pid is None:
        return (
            "no delivery process on this host (CAPI_BRIDGE_DELIVERY=auto or process: the app's "
            "next event starts one; thread: each app process sends its own; worker: start "
            "`capi-bridge worker`)"
        )
    return f"by process {pid or '?'} (a delivery process or `capi-bridge worker`)"


def _cmd_outbox_dead(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    outbox = open_outbox(args)
    if outbox is None:
        return 1
    letters = outbox.dead_letters(args.limit)
    if args.json:
        print(json.dumps([dataclasses.asdict(d) for d in letters]))
        return 0
    if not letters:
        print(f"no dead letters in {outbox.location}")
        return 0
    for d in letters:
        codes = "/".join(str(c) for c in (d.code, d.subcode) if c is not None) or "-"
        print(
            f"#{d.id} pixel {d.pixel_id} {d.event_name} {d.event_id}: {d.reason},"
            f" code {codes}, fbtrace_id {d.fbtrace_id or '-'}: {d.message or '-'}"
        )
    print(f"{len(letters)} shown. After fixing the cause: capi-bridge outbox retry-dead --id N")
    return 0


def _cmd_outbox_retry_dead(args: argparse.Namespace) -> int:
    import time

    if not args.ids and not args.all:
        print("capi-bridge outbox retry-dead: say which dead letters to requeue: --id N [N ...]")
        print("(the ids `capi-bridge outbox dead` lists) or --all. Nothing was requeued.")
        return EXIT_USAGE
    outbox = open_outbox(args)
    if outbox is None:
        return EXIT_FAILED
    wanted = None if args.all else args.ids
    found, held = outbox.retry_preview(wanted)
    moved = outbox.retry_dead(wanted, time.time())
    print(f"requeued {moved} dead letters in {outbox.location}")
    if moved:
        print("The app's dispatchers send them within a second; watch `capi-bridge outbox stats`.")
    missing = sorted(set(args.ids or ()) - set(found))
    if missing:
        print(
            f"not requeued: {_ids(missing)}: no such dead letter (already requeued or purged; "
            "`capi-bridge outbox dead` lists them)"
        )
    if held:
        print(
            f"not requeued: {_ids(held)}: an event with the same key is held for consent; it "
            "is sent once the visitor consents (the dead letter is gone)"
        )
    if args.all and not found:
        print("There were no dead letters.")
    return EXIT_OK if moved or args.all else EXIT_FAILED


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(f"#{i}" for i in ids)


def _default_window() -> str:
    from capi_bridge.durations import format_duration
    from capi_bridge.settings import Settings

    return format_duration(Settings.default_of("dedup_window"))


def _dedup_window() -> float | None:
    """The app's dedup window, as ``CAPI_BRIDGE_DEDUP_WINDOW`` (or the default) sets it."""
    import os

    from capi_bridge.durations import parse_duration
    from capi_bridge.settings import Settings, env

    text = os.environ.get(env("dedup_window"))
    try:
        return parse_duration(text) if text else float(Settings.default_of("dedup_window"))
    except ValueError as exc:
        print(f"capi-bridge: {env('dedup_window')}: {exc}. Nothing was purged.")
        return None


def _cmd_outbox_purge(args: argparse.Namespace) -> int:
    import time

    from capi_bridge.durations import format_duration

    window = _dedup_window()
    if window is None:
        return EXIT_USAGE
    outbox = open_outbox(args)
    if outbox is None:
        return EXIT_FAILED
    both = not (args.delivered or args.dead)
    keys_age = window if args.older_than is None else args.older_than
    now = time.time()
    removed = {"delivered": 0, "dead": 0}
    if args.delivered or both:
        done = outbox.purge(delivered=True, dead=False, older_than=keys_age, now=now)
        removed["delivered"] = done["delivered"]
    if args.dead or both:
        done = outbox.purge(delivered=False, dead=True, older_than=args.older_than, now=now)
        removed["dead"] = done["dead"]
    print(
        f"deleted {removed['delivered']} delivered keys and {removed['dead']} dead letters"
        f" from {outbox.location}"
    )
    kept = outbox.kept_by_purge(
        delivered_older_than=keys_age, dead_older_than=args.older_than, now=now
    )
    if (args.delivered or both) and kept.delivered_young:
        why = (
            f"inside the {format_duration(window)} dedup window (CAPI_BRIDGE_DEDUP_WINDOW): "
            "deleting one would let a repeat of its event be sent again; --older-than AGE "
            "deletes those older than AGE anyway"
            if args.older_than is None
            else f"younger than {format_duration(args.older_than)}"
        )
        print(f"kept {kept.delivered_young} delivered keys {why}")
    if (args.delivered or both) and kept.delivered_newest:
        print(
            "kept 1 delivered key, the outbox's newest row: row ids must only grow, so it goes "
            "with a later purge"
        )
    if (args.dead or both) and kept.dead_young and args.older_than is not None:
        age = format_duration(args.older_than)
        print(f"kept {kept.dead_young} dead letters younger than {age}")
    stats = outbox.stats(now)
    if stats.undelivered or stats.held:
        print(
            f"kept {stats.undelivered} events waiting for delivery and {stats.held} held for "
            "consent: they are never purged"
        )
    if removed["delivered"] and keys_age < window:
        print("Deleted keys no longer deduplicate: those events would be sent again if re-sent.")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
