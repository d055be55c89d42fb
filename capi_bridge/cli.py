"""The ``capi-bridge`` command: operator and developer tools.

Each sub-command lives in a small ``_cmd_*`` function registered in :func:`build_parser`; heavy
modules are imported inside the command that needs them so ``capi-bridge --help`` stays instant.
Every command prints what it did and where to look next, and exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from capi_bridge._version import __version__

if TYPE_CHECKING:
    from capi_bridge.delivery.store import Store


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capi-bridge",
        description="Meta Pixel + Conversions API redundant setup: developer and operator tools.",
    )
    parser.add_argument("--version", action="version", version=f"capi-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_fake_graph(sub)
    _add_outbox(sub)
    _add_test_link(sub)
    _add_demo(sub)
    _add_check(sub)
    from capi_bridge.cli_inspector import add_commands  # inspector-link, diagnostics

    add_commands(sub)
    return parser


# --- fake-graph -----------------------------------------------------------------------------


def _add_fake_graph(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fake-graph",
        help="run the fake Graph API server (validates like Meta, never calls Meta)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on (0 = any free port)")
    p.add_argument("--token", default=None, help="the only access token accepted (default: any)")
    p.add_argument(
        "--pixel", action="append", default=None, help="a known pixel id (repeatable; default: any)"
    )
    p.set_defaults(func=_cmd_fake_graph)


def _cmd_fake_graph(args: argparse.Namespace) -> int:
    from capi_bridge.testing import serve_forever

    return serve_forever(host=args.host, port=args.port, token=args.token, pixels=args.pixel)


# --- demo -----------------------------------------------------------------------------------


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the example shop against a local fake of Meta (no account, no internet)",
    )
    p.add_argument(
        "--port", type=int, default=8000, help="the shop's port on 127.0.0.1 (0 = any free port)"
    )
    p.add_argument(
        "--framework",
        choices=("flask", "starlette"),
        default="flask",
        help="which example shop to serve (default flask; starlette runs on uvicorn)",
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    started = time.perf_counter()
    from capi_bridge.demo import run

    return run(args.port, args.framework, started=started)


# --- check ----------------------------------------------------------------------------------


def _add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="send one test event to Meta with your settings and explain the answer",
    )
    p.add_argument("--pixel-id", help="overrides CAPI_BRIDGE_PIXEL_ID")
    p.add_argument(
        "--access-token", help="overrides CAPI_BRIDGE_ACCESS_TOKEN (the environment is safer)"
    )
    p.add_argument(
        "--test-event-code", help="overrides CAPI_BRIDGE_TEST_EVENT_CODE (required, one of them)"
    )
    p.add_argument("--graph-url", help="overrides CAPI_BRIDGE_GRAPH_URL")
    p.add_argument(
        "--url", help="the event_source_url to send (default: a page of CAPI_BRIDGE_ALLOWED_HOSTS)"
    )
    p.set_defaults(func=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    from capi_bridge.check import run

    return run(
        pixel_id=args.pixel_id,
        access_token=args.access_token,
        test_event_code=args.test_event_code,
        graph_url=args.graph_url,
        url=args.url,
    )


# --- test-link ------------------------------------------------------------------------------


def _add_test_link(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "test-link",
        help="print a signed link that sends one browser's events to a test event code",
    )
    p.add_argument("url", help="a page of your site, e.g. https://shop.example/")
    p.add_argument("--code", required=True, help="the test event code from Events Manager")
    p.set_defaults(func=_cmd_test_link)


def secret_from_env() -> str | None:
    """The site's secret key for commands that sign links; says what to do when it is unset."""
    import os

    from capi_bridge.settings import ENV_PREFIX

    secret = os.environ.get(ENV_PREFIX + "SECRET_KEY")
    if not secret:
        print("capi-bridge: CAPI_BRIDGE_SECRET_KEY is not set; export the site's secret key.")
        return None
    return secret


def _cmd_test_link(args: argparse.Namespace) -> int:

    from capi_bridge.pages import TEST_COOKIE_MAX_AGE, TEST_LINK_MAX_AGE, make_test_link

    secret = secret_from_env()
    if secret is None:
        return 1
    if not args.url.startswith(("http://", "https://")):
        print(f"capi-bridge: {args.url!r} is not an http(s) URL; give a page of your site.")
        return 1
    print(make_test_link(secret, args.url, args.code))
    print(
        f"Open it within {TEST_LINK_MAX_AGE // 3600} h: that browser's events then go to test "
        f"code {args.code} for {TEST_COOKIE_MAX_AGE // 60} min "
        "(the site needs CAPI_BRIDGE_SCOPED_TEST_EVENTS=true). Watch Events Manager > Test events."
    )
    return 0


# --- outbox ---------------------------------------------------------------------------------


def _add_outbox(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "outbox", help="inspect and repair the delivery outbox (stats, dead letters, purge)"
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    stats = actions.add_parser(
        "stats", help="pending, in flight, delivered, dead, held, last error"
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=_cmd_outbox_stats)

    dead = actions.add_parser("dead", help="list dead-lettered events with Meta's reason")
    dead.add_argument("--limit", type=int, default=50, help="how many, newest first (default 50)")
    dead.add_argument("--json", action="store_true", help="print a JSON array")
    dead.set_defaults(func=_cmd_outbox_dead)

    retry = actions.add_parser("retry-dead", help="put dead-lettered events back in the outbox")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, nargs="+", dest="ids", help="dead-letter ids to retry")
    which.add_argument("--all", action="store_true", help="retry every dead letter")
    retry.set_defaults(func=_cmd_outbox_retry_dead)

    purge = actions.add_parser("purge", help="delete delivered keys and/or dead letters")
    purge.add_argument("--delivered", action="store_true", help="delivered events' keys")
    purge.add_argument("--dead", action="store_true", help="dead letters")
    purge.add_argument(
        "--older-than", type=float, metavar="HOURS", help="only entries older than HOURS"
    )
    purge.set_defaults(func=_cmd_outbox_purge)
    for action in (stats, dead, retry, purge):
        add_store_arguments(action)


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
        help="the SQLite outbox file (default: $CAPI_BRIDGE_OUTBOX_PATH or the settings default)",
    )
    parser.add_argument(
        "--schema",
        default=None,
        help="the PostgreSQL schema (default: $CAPI_BRIDGE_OUTBOX_SCHEMA or capi_bridge)",
    )


def _open_outbox(args: argparse.Namespace) -> Store | None:
    """The outbox named by --url/--path, the environment or the defaults, or None (and a
    message) if there is none: the CLI never creates an outbox."""
    import dataclasses
    import os

    from capi_bridge.delivery import open_store
    from capi_bridge.delivery.store import StoreError
    from capi_bridge.settings import ENV_PREFIX, Settings

    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    url = args.url or (None if args.path else os.environ.get(ENV_PREFIX + "OUTBOX_URL"))
    if not url:
        path = args.path or os.environ.get(ENV_PREFIX + "OUTBOX_PATH") or defaults["outbox_path"]
        url = f"sqlite:///{path}"
    schema = args.schema or os.environ.get(ENV_PREFIX + "OUTBOX_SCHEMA") or "capi_bridge"
    try:
        return open_store(url, schema=schema, create=False)
    except StoreError as exc:
        print(f"capi-bridge: {exc}")
        print(
            "Pass --url (or --path for a SQLite file), or set CAPI_BRIDGE_OUTBOX_URL / "
            "CAPI_BRIDGE_OUTBOX_PATH, to the app's outbox."
        )
        return None


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _cmd_outbox_stats(args: argparse.Namespace) -> int:
    import json
    import time

    outbox = _open_outbox(args)
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
    if stats.dead:
        print("Dead letters: `capi-bridge outbox dead`; requeue after a fix with `retry-dead`.")
    return 0


def _cmd_outbox_dead(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    outbox = _open_outbox(args)
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

    outbox = _open_outbox(args)
    if outbox is None:
        return 1
    moved = outbox.retry_dead(None if args.all else args.ids, time.time())
    print(f"requeued {moved} dead letters in {outbox.location}")
    print("The app's dispatchers send them within a second; watch `capi-bridge outbox stats`.")
    return 0 if moved or args.all else 1


def _cmd_outbox_purge(args: argparse.Namespace) -> int:
    import time

    outbox = _open_outbox(args)
    if outbox is None:
        return 1
    both = not (args.delivered or args.dead)
    older = None if args.older_than is None else args.older_than * 3600
    removed = outbox.purge(
        delivered=args.delivered or both,
        dead=args.dead or both,
        older_than=older,
        now=time.time(),
    )
    age = "" if args.older_than is None else f" older than {args.older_than:g} h"
    print(
        f"deleted {removed['delivered']} delivered keys and {removed['dead']} dead letters{age}"
        f" from {outbox.location}; pending events are never purged"
    )
    if removed["delivered"]:
        print("Deleted keys no longer deduplicate: those events would be sent again if re-sent.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
