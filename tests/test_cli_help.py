"""The ``capi-bridge`` command explains itself: help, examples, defaults, exit codes, durations."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator

import pytest

from capi_bridge.cli import build_parser, main
from capi_bridge.durations import format_duration, parse_duration
from capi_bridge.inspector import LINK_MAX_AGE
from capi_bridge.settings import Settings


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub-)command's parser, with the words that reach it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from commands(sub, (*path, name))


ALL = list(commands(build_parser()))


def test_every_command_is_covered() -> None:
    names = {" ".join(path) for path, _ in ALL}
    assert {"demo", "fake-graph", "check", "test-link", "inspector-link", "diagnostics"} <= names
    assert {f"outbox {a}" for a in ("stats", "dead", "retry-dead", "purge")} <= names


@pytest.mark.parametrize(("path", "parser"), ALL, ids=[" ".join(p) for p, _ in ALL])
def test_each_command_has_a_description_examples_defaults_and_exit_codes(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    text = parser.format_help()
    assert parser.description and len(parser.description) > 60
    examples = text.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert examples and all(e.strip().startswith("capi-bridge " + path[0]) for e in examples)
    exits = text.split("exit status:\n", 1)[1].splitlines()
    assert exits[0].strip().startswith("0  ") and len(exits) >= 2
    for action in parser._actions:
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction))
        if action.option_strings and not (
            flag or action.required or action.help == argparse.SUPPRESS
        ):
            assert "default" in (action.help or ""), f"{action.option_strings} says no default"


def help_of(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capi_bridge.cli", *argv], capture_output=True, text=True
    )


@pytest.mark.parametrize("argv", [(), ("outbox",)])
def test_a_bare_command_prints_its_help_and_exits_2(argv: tuple[str, ...]) -> None:
    done = help_of(*argv)
    assert done.returncode == 2  # nothing was done: a script must not take it for success
    assert done.stdout.startswith("usage: capi-bridge") and "exit status:" in done.stdout
    assert done.stderr == ""


def test_help_figures_follow_the_code() -> None:
    """Numbers a help text states are the ones the code applies."""
    by_path = {" ".join(path): parser for path, parser in ALL}
    link = by_path["inspector-link"].format_help()
    assert f"at most {format_duration(LINK_MAX_AGE)})" in link
    window = format_duration(Settings.default_of("dedup_window"))
    assert f"CAPI_BRIDGE_DEDUP_WINDOW, default {window})" in by_path["outbox purge"].format_help()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        *[("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("24h", 86400.0), ("7d", 604800.0)],
        *[("1.5h", 5400.0), (" 2 H ", 7200.0), (".5s", 0.5), ("0", 0.0)],
    ],
)
def test_one_duration_syntax(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "inf", "nan", "1e9", "-5", "+5", "5w", "5 min", "١٢", "h"])
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="90s, 15m, 24h or 7d"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        *[(172800.0, "48h"), (604800.0, "7d"), (86400.0, "24h"), (90.0, "90s"), (900.0, "15m")],
        *[(0.1, "0.1s"), (1e9, "1000000000s")],  # never 1e+09s, which would not read back
    ],
)
def test_durations_are_shown_as_they_are_written(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-6)


def test_diagnostics_window_takes_a_duration(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["diagnostics", "--window", "a day"])
    assert exit_.value.code == 2 and "'a day' is not a duration" in capsys.readouterr().err
