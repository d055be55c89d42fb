"""README runs as written: every code block is run here (against the fake Graph API, with a
real outbox), type-checked with ``mypy --strict``, parsed (shell commands), or exercised by the
browser tests (the HTML button, in js/tests/test_browser_bridge.py; the example shops'
commands, in test_e2e_shops.py). A block no test knows fails :func:`test_every_block_is_covered`,
so a new one cannot slip in untested."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers.readme import README, Block, block_starting, blocks

from capi_bridge.cli import build_parser
from capi_bridge.settings import Settings
from capi_bridge.testing import FakeGraph

ROOT = README.parent
PIXEL = "1234567890"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari"
SECRET = "readme-secret-key-0123456789abcdefghij"

#: How each block is covered: its first line, and the test (or test file) that runs it.
COVERED = {
    "# 1. The main job": "test_the_set_up_commands_use_their_own_virtualenvs",
    "pip install 'capi-bridge[flask]'": "test_the_install_lines_name_real_extras",
    "from capi_bridge import Bridge": "test_quick_start_sends_the_purchase",
    "<button onclick=": "js/tests/test_browser_bridge.py::test_readme_s_button",
    "from flask import Flask": "test_flask_block_serves_the_checkout",
    "from starlette.applications": "test_starlette_block_serves_the_checkout",
    "from fastapi import FastAPI": "test_fastapi_block_tracks_a_lead",
    "# settings.py": "test_django_blocks_make_a_project",
    "# views.py": "test_django_blocks_make_a_project",
    "export CAPI_BRIDGE_PIXEL_ID=...": "test_cli_lines_parse",
    "export CAPI_BRIDGE_PIXEL_ID=1234567890": "test_e2e_shops.py (the shops as README starts them)",
    "pip install 'capi-bridge[postgres]'": "test_postgresql_lines_are_settings_the_app_takes",
    "capi-bridge outbox stats": "test_cli_lines_parse",
    "capi-bridge diagnostics [": "test_cli_lines_parse (a synopsis: its options)",
    "export CAPI_BRIDGE_DELIVERY=worker": "test_worker_lines_are_a_setting_and_a_command",
}


def test_every_block_is_covered() -> None:
    found = blocks()
    assert found, "no code block found in README"
    for block in found:
        assert any(block.code.startswith(start) for start in COVERED), (
            f"README line {block.line}: a code block no test runs; add one to test_readme.py"
        )
    for start in COVERED:  # and every entry here still names a block
        assert sum(b.code.startswith(start) for b in found) == 1, start


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph(token=None) as fake:  # README's own tokens are placeholders
        yield fake


@pytest.fixture
def app_env(
    graph: FakeGraph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """What the app's operator exports: the account, the fake Graph API, an outbox file."""
    for key in [k for k in os.environ if k.startswith(("CAPI_BRIDGE_", "FLASK_"))]:
        monkeypatch.delenv(key)
    env = {
        "CAPI_BRIDGE_PIXEL_ID": PIXEL,
        "CAPI_BRIDGE_ACCESS_TOKEN": "test-token",
        "CAPI_BRIDGE_GRAPH_URL": graph.url,
        "CAPI_BRIDGE_OUTBOX_PATH": str(tmp_path / "outbox.sqlite3"),
        "CAPI_BRIDGE_SECRET_KEY": SECRET,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def load(block: Block, tmp_path: Path) -> ModuleType:
    """The block as a module of its own, imported from a file as an app would be."""
    name = f"readme_line_{block.line}"
    path = tmp_path / f"{name}.py"
    path.write_text(block.code)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def received(graph: FakeGraph, name: str) -> dict[str, Any]:
    assert graph.wait_for_events(1, timeout=15), "nothing reached the fake Graph API"
    [event] = [e for e in graph.events if e["event_name"] == name]
    return event


# --- Python: run ---------------------------------------------------------------------------


def test_quick_start_sends_the_purchase(
    app_env: dict[str, str], graph: FakeGraph, tmp_path: Path
) -> None:
    block = block_starting("from capi_bridge import Bridge", "python")
    script = tmp_path / "quick_start.py"
    script.write_text(block.code + "\nprint(event_id)\n")
    done = subprocess.run(
        [sys.executable, str(script)], env={**os.environ, **app_env}, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    event = received(graph, "Purchase")  # delivered by the flush at interpreter exit
    assert event["event_id"] == done.stdout.strip()
    assert event["custom_data"] == {"value": 49.9, "currency": "EUR"}
    em = event["user_data"]["em"]
    assert re.fullmatch(r"[0-9a-f]{64}", em if isinstance(em, str) else em[0])  # hashed


def test_flask_block_serves_the_checkout(
    app_env: dict[str, str], graph: FakeGraph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAPI_BRIDGE_SECRET_KEY")
    monkeypatch.setenv("FLASK_SECRET_KEY", SECRET)  # from_prefixed_env, as its comment says
    module = load(block_starting("from flask import Flask", "python"), tmp_path)
    core = module.app.extensions["capi_bridge"]
    try:
        client = module.app.test_client()
        form = {"email": "Jane@Example.com"}
        reply = client.post("/checkout", data=form, environ_base={"HTTP_USER_AGENT": UA})
        assert (reply.status_code, reply.headers["Location"]) == (303, "/thank-you")
        assert core.bridge.flush(10)
    finally:
        core.close(timeout=0)
    event = received(graph, "Purchase")
    assert event["custom_data"] == {"value": 49.9, "currency": "EUR"}
    assert event["user_data"]["em"]  # identify()'d, hashed


def test_starlette_block_serves_the_checkout(
    app_env: dict[str, str], graph: FakeGraph, tmp_path: Path
) -> None:
    from starlette.testclient import TestClient

    module = load(block_starting("from starlette.applications", "python"), tmp_path)
    with TestClient(module.app, headers={"User-Agent": UA}) as client:  # runs the lifespan
        reply = client.post("/checkout", data={"email": "jane@example.com"}, follow_redirects=False)
        assert (reply.status_code, reply.headers["location"]) == (303, "/thank-you")
    event = received(graph, "Purchase")  # the lifespan's shutdown flushed the outbox
    assert event["custom_data"] == {"value": 49.9, "currency": "EUR"}
    assert event["user_data"]["em"]


def test_fastapi_block_tracks_a_lead(
    app_env: dict[str, str], graph: FakeGraph, tmp_path: Path
) -> None:
    from starlette.testclient import TestClient

    module = load(block_starting("from fastapi import FastAPI", "python"), tmp_path)
    with TestClient(module.app, headers={"User-Agent": UA}) as client:
        reply = client.post("/api/lead")
        assert reply.status_code == 200
    assert received(graph, "Lead")["event_id"] == reply.json()["event_id"]


DJANGO_RUN = """
import json, os, sys
sys.path.insert(0, os.getcwd())
os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
import django
django.setup()
from django.core.management import call_command
from django.test import Client
call_command("check", fail_level="WARNING")
reply = Client().post("/checkout", {"email": "jane@example.com"}, HTTP_USER_AGENT=sys.argv[1])
from capi_bridge.django import get_bridge
print(json.dumps({"status": reply.status_code, "flushed": get_bridge().flush(10)}))
"""


def test_django_blocks_make_a_project(
    app_env: dict[str, str], graph: FakeGraph, tmp_path: Path
) -> None:
    """README's settings.py and views.py lines in the smallest project that can serve them:
    Django's system checks pass (capi-bridge's own included) and the view sends a Purchase."""
    settings = block_starting("# settings.py", "python").code
    (tmp_path / "settings.py").write_text(
        settings + f'\nSECRET_KEY = "{SECRET}"\nROOT_URLCONF = "urls"\n'
        'ALLOWED_HOSTS = ["testserver"]\nSTATIC_URL = "static/"\n'
    )
    (tmp_path / "views.py").write_text(block_starting("# views.py", "python").code)
    (tmp_path / "urls.py").write_text(
        "from django.urls import path\n\nimport views\n\n"
        'urlpatterns = [path("checkout", views.checkout)]\n'
    )
    env = {**os.environ, **app_env}
    del env["CAPI_BRIDGE_SECRET_KEY"]  # Django's SECRET_KEY, as README says
    done = subprocess.run(
        [sys.executable, "-c", DJANGO_RUN, UA], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"status": 302, "flushed": True}
    event = received(graph, "Purchase")
    assert event["custom_data"] == {"value": 49.9, "currency": "EUR"} and event["user_data"]["em"]


# --- Python: type-check --------------------------------------------------------------------


def test_python_blocks_type_check_strictly(tmp_path: Path) -> None:
    """``mypy --strict``, with the project's configuration (and cache), on each block as a file
    of its own: what a typed app copying it would run."""
    files = []
    for block in blocks("python"):
        path = tmp_path / f"readme_line_{block.line}.py"
        path.write_text(block.code)
        files.append(str(path))
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", *files], cwd=ROOT, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


# --- shell ---------------------------------------------------------------------------------


def commands(block: Block) -> Iterator[list[str]]:
    """Each command line of a shell block, as words (continuations joined, comments dropped)."""
    text = block.code.replace("\\\n", " ")
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            yield words


def extras() -> set[str]:
    """The extras the installed capi-bridge declares (pyproject's, for an editable install)."""
    return set(importlib.metadata.metadata("capi-bridge").get_all("Provides-Extra") or ())


def test_the_set_up_commands_use_their_own_virtualenvs() -> None:
    block = block_starting("# 1. The main job", "bash")
    lines = [line for line in block.code.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 2
    venvs = []
    for line in lines:
        steps = [shlex.split(step) for step in line.split(" && ")]
        assert steps[0][:3] == ["python3", "-m", "venv"]
        venv = steps[0][3]
        assert steps[1] == [".", f"{venv}/bin/activate"]  # the one it just made
        assert steps[2][:3] == ["pip", "install", "-e"]
        assert steps[2][3].strip(".[]") in extras()
        venvs.append(venv)
    assert len(set(venvs)) == 2  # each fresh: the second command does not reuse the first's
    assert lines[0].endswith("capi-bridge demo") and lines[1].endswith("bash tests/run")
    ignored = (ROOT / ".gitignore").read_text()
    assert ".venv-*/" in ignored


def test_the_install_lines_name_real_extras() -> None:
    block = block_starting("pip install 'capi-bridge[flask]'", "bash")
    for words in commands(block):
        assert words[:2] == ["pip", "install"]
        wanted = re.fullmatch(r".*capi-bridge\[([a-z,]+)\]", words[2])
        assert wanted, words
        assert set(wanted.group(1).split(",")) <= extras()


def test_postgresql_lines_are_settings_the_app_takes() -> None:
    block = block_starting("pip install 'capi-bridge[postgres]'", "bash")
    exported = {}
    for words in commands(block):
        if words[0] == "export":
            name, _, value = words[1].partition("=")
            exported[name] = value
        else:
            assert words[:2] == ["pip", "install"] and words[2] == "capi-bridge[postgres]"
            assert "postgres" in extras()
    account = {"CAPI_BRIDGE_PIXEL_ID": PIXEL, "CAPI_BRIDGE_ACCESS_TOKEN": "t"}
    settings = Settings.from_env(account | exported)  # parsed and checked; nothing connects
    assert settings.store_url.startswith("postgresql://")
    assert settings.outbox_schema == "capi_bridge"


def test_worker_lines_are_a_setting_and_a_command() -> None:
    """The app's setting and the command; test_worker.py runs that command beside an app."""
    block = block_starting("export CAPI_BRIDGE_DELIVERY=worker", "bash")
    lines = list(commands(block))
    assert [words[0] for words in lines] == ["export", "capi-bridge"]
    name, _, value = lines[0][1].partition("=")
    account = {"CAPI_BRIDGE_PIXEL_ID": PIXEL, "CAPI_BRIDGE_ACCESS_TOKEN": "t"}
    assert Settings.from_env(account | {name: value}).delivery == "worker"
    assert build_parser().parse_args(lines[1][1:]).command == "worker"


def test_cli_lines_parse() -> None:
    """Every ``capi-bridge`` command README shows is one the CLI takes (placeholders filled);
    a synopsis (``[--url URL | ...]``) is checked option by option."""
    parser = build_parser()
    checked = 0
    for block in blocks("bash"):
        for words in commands(block):
            if words[0] != "capi-bridge":
                continue
            if any(w.startswith("[") for w in words):  # a synopsis: each option alone
                options = re.findall(r"(--[a-z-]+)(?: ([A-Z]+))?", " ".join(words))
                samples = {"URL": "sqlite:///x", "OUTBOX": "x", "DURATION": "7d"}
                for option, meta in options:
                    parser.parse_args([*words[1:2], option, *([samples[meta]] if meta else [])])
                checked += 1
                continue
            parser.parse_args(words[1:])
            checked += 1
    assert checked >= 7


def test_the_example_commands_name_files_that_exist() -> None:
    """The shops' commands themselves run in test_e2e_shops.py; here, that they still point
    at the examples."""
    block = block_starting("export CAPI_BRIDGE_PIXEL_ID=1234567890", "bash")
    assert "flask --app examples/flask_app run" in block.code
    assert "uvicorn examples.starlette_app:app" in block.code
    assert "python examples/django_shop/manage.py runserver" in block.code
    for path in ("examples/flask_app.py", "examples/starlette_app.py"):
        assert (ROOT / path).is_file()
    assert (ROOT / "examples/django_shop/manage.py").is_file()
