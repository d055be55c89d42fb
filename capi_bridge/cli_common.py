"""What every ``capi-bridge`` command shares: its help layout, its duration options, its
exit statuses and the secret key of the commands that sign links.

Every command's ``--help`` says what it does, shows examples, gives each option's default and
lists the exit statuses, in the same layout, so :func:`add_command` takes them as arguments
rather than each command formatting its own epilog. Durations use the one syntax of
:mod:`capi_bridge.durations` (``90s``, ``15m``, ``24h``, ``7d``), the same as the settings.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TypeAlias

from capi_bridge.durations import SYNTAX, parse_duration

#: The exit statuses every command shares (argparse itself exits 2 on a usage error).
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: The line every help with a duration option carries.
DURATIONS = f"Durations are written {SYNTAX}."

#: What ``add_subparsers()`` returns (a string: the class is not subscriptable at run time).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and epilogs (examples are laid out by hand)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)


def epilog(examples: Sequence[str], exits: Sequence[tuple[int, str]]) -> str:
    """The ``examples:`` and ``exit status:`` sections closing a command's help."""
    lines = ["examples:", *(f"  {example}" for example in examples), "", "exit status:"]
    lines += [f"  {code}  {meaning}" for code, meaning in exits]
    return "\n".join(lines)


def add_command(
    sub: Subparsers,
    name: str,
    *,
    summary: str,
    description: str,
    examples: Sequence[str],
    exits: Sequence[tuple[int, str]],
) -> argparse.ArgumentParser:
    """A sub-command whose help has a description, examples and exit statuses."""
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog(examples, exits),
        formatter_class=HelpFormatter,
    )


def duration(*, unit_required: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` reading a duration into seconds (see :mod:`capi_bridge.durations`)."""

    def parse(text: str) -> float:
        try:
            return parse_duration(text, unit_required=unit_required)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def print_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A command given no sub-command: its help on stdout, and exit 2 (nothing was done)."""

    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return EXIT_USAGE

    return show


def secret_from_env() -> str | None:
    """The site's secret key for commands that sign links; says what to do when it is unset or
    too weak (the rule the site's own settings apply: a weak key would not run the site)."""
    import os

    from capi_bridge.errors import ConfigError
    from capi_bridge.settings import env
    from capi_bridge.settings_checks import check_secret_key

    name = env("secret_key")
    secret = os.environ.get(name)
    if not secret:
        print(f"capi-bridge: {name} is not set; export the site's secret key.")
        return None
    try:
        check_secret_key(secret, name)
    except ConfigError as exc:
        print(f"capi-bridge: {exc}")
        return None
    return secret
