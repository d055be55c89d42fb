"""The ``capi-bridge`` command: operator and developer tools.

Each sub-command lives in a small ``_cmd_*`` function registered in :func:`build_parser`; heavy
modules are imported inside the command that needs them so ``capi-bridge --help`` stays instant.
Every command prints what it did and where to look next, and exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from capi_bridge import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capi-bridge",
        description="Meta Pixel + Conversions API redundant setup: developer and operator tools.",
    )
    parser.add_argument("--version", action="version", version=f"capi-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_fake_graph(sub)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
