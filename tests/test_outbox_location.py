"""The default outbox: an absolute place that does not depend on the folder the app starts from
(the app's instance folder in Flask, else the user's data directory), said once at start-up,
overridden by ``CAPI_BRIDGE_OUTBOX_PATH``/``_URL``, and found by the CLI the way the app finds
it. (The test's data directory is its own: see conftest.)"""

from __future__ import annotations

import json
import logging
import os
import pathlib

import pytest
from flask import Flask

from capi_bridge.bridge import Bridge
from capi_bridge.cli import main
from capi_bridge.errors import ConfigError
from capi_bridge.flask import CapiBridge
from capi_bridge.outbox_location import FILE_NAME, user_data_dir
from capi_bridge.settings import Settings

ACCOUNT = {"CAPI_BRIDGE_PIXEL_ID": "1234567890", "CAPI_BRIDGE_ACCESS_TOKEN": "test-token"}


def data_home() -> pathlib.Path:
    return pathlib.Path(os.environ["XDG_DATA_HOME"])


def test_without_a_folder_of_its_own_the_outbox_is_in_the_user_s_data_directory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = set()
    for cwd in (tmp_path / "one", tmp_path / "two"):  # started from two folders: one file
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        settings = Settings.from_env(ACCOUNT)
        assert settings.outbox_default and os.path.isabs(settings.outbox_path or "")
        paths.add(settings.outbox_path)
    assert paths == {str(data_home() / "capi-bridge" / "outbox-1234567890.sqlite3")}
    assert (data_home() / "capi-bridge").is_dir()  # created: the default is ours to make
    assert not list(tmp_path.glob("*/*.sqlite3"))  # nothing in the working folders
    other = Settings.from_env({**ACCOUNT, "CAPI_BRIDGE_PIXEL_ID": "222,111"})
    assert other.outbox_path == str(data_home() / "capi-bridge" / "outbox-111-222.sqlite3")


def test_without_xdg_data_home_it_is_under_the_home_folder(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_data_dir() == str(tmp_path / ".local" / "share" / "capi-bridge")
    assert user_data_dir({"XDG_DATA_HOME": "relative/dir"}).startswith(str(tmp_path))


def test_the_settings_choose_over_the_default(tmp_path: pathlib.Path) -> None:
    chosen = Settings.from_env({**ACCOUNT, "CAPI_BRIDGE_OUTBOX_PATH": str(tmp_path / "o.db")})
    assert (chosen.outbox_path, chosen.outbox_default) == (str(tmp_path / "o.db"), False)
    url = f"sqlite:///{tmp_path}/u.db"
    by_url = Settings.from_env({**ACCOUNT, "CAPI_BRIDGE_OUTBOX_URL": url}, outbox_folder=tmp_path)
    assert (by_url.outbox_path, by_url.store_url, by_url.outbox_default) == (None, url, False)
    assert not (data_home() / "capi-bridge").exists() and not (tmp_path / FILE_NAME).exists()


def test_a_default_folder_that_cannot_be_made_names_the_setting(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(ConfigError) as info:
        Settings.from_env(ACCOUNT, outbox_folder=blocker / "instance")
    assert info.value.setting == "CAPI_BRIDGE_OUTBOX_PATH"
    assert "cannot be created" in info.value.problem and "CAPI_BRIDGE_OUTBOX_URL" in info.value.fix


def test_flask_keeps_it_in_the_instance_folder_and_says_so_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="capi_bridge")
    for key, value in ACCOUNT.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CAPI_BRIDGE_OUTBOX_PATH", raising=False)
    monkeypatch.delenv("CAPI_BRIDGE_OUTBOX_URL", raising=False)
    instance = tmp_path / "instance"
    apps = [Flask("shop", instance_path=str(instance)) for _ in range(2)]
    for app in apps:
        app.config["CAPI_BRIDGE_SECRET_KEY"] = "k" * 16 + "0123456789abcdef"
        CapiBridge(app)
    path = str(instance / FILE_NAME)
    assert [app.extensions["capi_bridge"].settings.outbox_path for app in apps] == [path, path]
    lines = [r.getMessage() for r in caplog.records if "the outbox is" in r.getMessage()]
    assert len(lines) == 1  # two bridges on one file: said once
    assert lines[0].startswith(f"capi-bridge: the outbox is {path} (the default location)")
    assert "CAPI_BRIDGE_OUTBOX_PATH" in lines[0] and "CAPI_BRIDGE_OUTBOX_URL" in lines[0]
    for app in apps:
        app.extensions["capi_bridge"].close(timeout=0)


def test_the_cli_reads_the_file_the_app_uses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in [k for k in os.environ if k.startswith("CAPI_BRIDGE_")]:
        monkeypatch.delenv(key)
    # nothing there yet: the CLI says which file it tried and where else it could be
    assert main(["outbox", "stats"]) == 1
    said = capsys.readouterr().out
    assert "without CAPI_BRIDGE_PIXEL_ID the default one in" in said and "holds none" in said
    assert "instance folder" in said and "--path" in said
    monkeypatch.setenv("CAPI_BRIDGE_PIXEL_ID", "1234567890")
    assert main(["outbox", "stats"]) == 1
    said = capsys.readouterr().out
    assert "outbox-1234567890.sqlite3" in said and "CAPI_BRIDGE_PIXEL_ID=1234567890" in said
    bridge = Bridge(Settings.from_env(ACCOUNT))  # the app's process creates its outbox
    try:
        assert main(["outbox", "stats", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["path"] == bridge.outbox.location
        monkeypatch.delenv("CAPI_BRIDGE_PIXEL_ID")  # the only outbox there: found as well
        assert main(["outbox", "stats"]) == 0
        assert f"outbox {bridge.outbox.location}" in capsys.readouterr().out
    finally:
        bridge.close(timeout=0)


def test_django_keeps_it_next_to_base_dir(tmp_path: pathlib.Path) -> None:
    from helpers import django_app

    django_app.setup()
    from django.test import override_settings

    from capi_bridge.django import conf

    with override_settings(CAPI_BRIDGE={"PIXEL_ID": "1234567890", "ACCESS_TOKEN": "t"}):
        assert conf.read_settings({})[0].outbox_path == str(
            data_home() / "capi-bridge" / "outbox-1234567890.sqlite3"
        )
        with override_settings(BASE_DIR=tmp_path):
            settings = conf.read_settings({})[0]
    assert settings.outbox_path == str(tmp_path / FILE_NAME) and settings.outbox_default
