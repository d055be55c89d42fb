"""``capi-bridge fake-graph``, ``demo``, ``check`` and ``test-link``: getting a site going.

Kept out of :mod:`capi_bridge.cli` (the root command and the outbox's commands) so each module
stays a short list of small commands; like the others, these import what they need only when
run, so ``capi-bridge --help`` stays instant.
"""

from __future__ import annotations

import argparse

from capi_bridge.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Subparsers,
    add_command,
    secret_from_env,
)


def add_commands(sub: Subparsers) -> None:
    _add_demo(sub)
    _add_fake_graph(sub)
    _add_check(sub)
    _add_test_link(sub)


# --- fake-graph -----------------------------------------------------------------------------


def _add_fake_graph(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "fake-graph",
        summary="run the fake Graph API server (validates like Meta, never calls Meta)",
        description="Serve a fake of Meta's Graph API on this machine. It checks events as Meta "
        "does (limits, error codes,\nmessages), keeps what it received at /_fake/events, serves "
        "a stand-in fbevents.js at /fbevents.js,\nand never calls Meta. Point "
        "CAPI_BRIDGE_GRAPH_URL (and CAPI_BRIDGE_PIXEL_SCRIPT_URL) at it for local work.",
        examples=[
            "capi-bridge fake-graph                   # http://127.0.0.1:8765, any token",
            "capi-bridge fake-graph --port 0 --token test-token --pixel 1234567890",
        ],
        exits=[(EXIT_OK, "stopped with Ctrl-C"), (EXIT_FAILED, "cannot listen on the port")],
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=8765, help="port to listen on (default 8765; 0: any free port)"
    )
    p.add_argument("--token", default=None, help="the only access token accepted (default: any)")
    p.add_argument(
        "--pixel", action="append", default=None, help="a known pixel id (repeatable; default: any)"
    )
    p.set_defaults(func=_cmd_fake_graph)


def _cmd_fake_graph(args: argparse.Namespace) -> int:
    from capi_bridge.testing import serve_forever

    return serve_forever(host=args.host, port=args.port, token=args.token, pixels=args.pixel)


# --- demo -----------------------------------------------------------------------------------


def _add_demo(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "demo",
        summary="run the example shop against a local fake of Meta (no account, no internet)",
        description="Run the example shop (examples/) with the pixel and the Conversions API "
        "wired in, against a fake of\nMeta's Graph API, with the inspector on: browse it and "
        "watch each event's two copies. Needs no\nMeta account and sends nothing off this "
        "machine; the outbox is a temporary file, deleted on exit.",
        examples=[
            "capi-bridge demo                         # http://127.0.0.1:8000",
            "capi-bridge demo --framework starlette --port 0",
            "capi-bridge demo --framework django",
        ],
        exits=[
            (EXIT_OK, "stopped with Ctrl-C"),
            (EXIT_FAILED, "the shop or the fake could not start (the message says why)"),
        ],
    )
    p.add_argument(
        "--port",
        type=int,
        default=8000,
        help="the shop's port on 127.0.0.1 (default 8000; 0: any free port)",
    )
    p.add_argument(
        "--framework",
        choices=("flask", "starlette", "django"),
        default="flask",
        help="which example shop to serve (default flask; starlette runs on uvicorn, django on "
        "Django's own threaded server)",
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    started = time.perf_counter()
    from capi_bridge.demo import run

    return run(args.port, args.framework, started=started)


# --- check ----------------------------------------------------------------------------------


def _add_check(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "check",
        summary="send one test event to Meta with your settings and explain the answer",
        description="Check the real configuration end to end: read the settings as the app "
        "does (CAPI_BRIDGE_*;\nthe flags below override them), send one PageView per pixel "
        "to Events Manager's Test events\ntab, and print Meta's answer, or the failure "
        "explained with its fix. Refuses to run without a\ntest event code. The access token "
        "never appears in the output.",
        examples=[
            "capi-bridge check --test-event-code TEST12345",
            "capi-bridge check --test-event-code TEST12345 --url https://shop.example/",
        ],
        exits=[
            (EXIT_OK, "Meta received the event"),
            (EXIT_FAILED, "Meta refused it or could not be reached"),
            (EXIT_USAGE, "nothing was sent: no test event code, or a bad setting"),
        ],
    )
    p.add_argument("--pixel-id", metavar="ID", help="(default: $CAPI_BRIDGE_PIXEL_ID)")
    p.add_argument(
        "--access-token",
        metavar="TOKEN",
        help="(default: $CAPI_BRIDGE_ACCESS_TOKEN; the environment is safer than a flag)",
    )
    p.add_argument(
        "--test-event-code",
        metavar="CODE",
        help="from Events Manager > Test events (default: $CAPI_BRIDGE_TEST_EVENT_CODE; "
        "one of them is required)",
    )
    p.add_argument(
        "--graph-url", metavar="URL", help="(default: $CAPI_BRIDGE_GRAPH_URL, else Meta's)"
    )
    p.add_argument(
        "--url",
        help="the event_source_url to send (default: a page of the first "
        "CAPI_BRIDGE_ALLOWED_HOSTS, else https://capi-bridge.invalid/check)",
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


def _add_test_link(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "test-link",
        summary="print a signed link that sends one browser's events to a test event code",
        description="Print a link to URL, signed with CAPI_BRIDGE_SECRET_KEY, that routes the "
        "events of the browser\nopening it to a test event code (Events Manager > Test "
        "events) for an hour, on a live site.\nThe link works for a day; the site needs "
        "CAPI_BRIDGE_SCOPED_TEST_EVENTS=true.",
        examples=["capi-bridge test-link https://shop.example/ --code TEST12345"],
        exits=[
            (EXIT_OK, "the link was printed"),
            (EXIT_FAILED, "no usable CAPI_BRIDGE_SECRET_KEY, or URL is not http(s)"),
        ],
    )
    p.add_argument("url", metavar="URL", help="a page of your site, e.g. https://shop.example/")
    p.add_argument("--code", required=True, help="the test event code from Events Manager")
    p.set_defaults(func=_cmd_test_link)


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
