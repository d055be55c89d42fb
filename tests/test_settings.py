from __future__ import annotations

import importlib.metadata

import pytest

from capi_bridge.errors import ConfigError
from capi_bridge.settings import Settings, dict_naming


def make(**kw: object) -> Settings:
    base: dict[str, object] = {"pixel_id": "1234567890", "access_token": "EAAB-secret-token"}
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


def test_defaults_fit_meta() -> None:
    s = make()
    assert s.pixel_ids == ("1234567890",)
    assert s.graph_url == "https://graph.facebook.com"
    assert s.api_version == "v26.0"  # what facebook-business 26.0.3 sends to
    assert len(s.partner_agent) < 23
    assert sum(c.isalpha() for c in s.partner_agent) >= 2
    # Meta's "[partner_name]_[major]_[minor]", from the version the package is installed as
    major, minor = importlib.metadata.version("capi-bridge").split(".")[:2]
    assert s.partner_agent == f"capibridge_{major}_{minor}"


def test_api_version_matches_facebook_business() -> None:
    from facebook_business import apiconfig  # the [test] extra pins facebook-business

    assert make().api_version == apiconfig.ads_api_config["API_VERSION"]


def test_several_pixels() -> None:
    assert make(pixel_id="111, 222").pixel_ids == ("111", "222")
    assert make(pixel_id=["111", "222"]).pixel_ids == ("111", "222")


def test_repr_hides_secrets() -> None:
    s = make(app_secret="app-secret-xyz", secret_key="signing-key-xyz-0123456789abcdefghij")
    text = repr(s) + str(s)
    for secret in ("EAAB-secret-token", "app-secret-xyz", "signing-key-xyz-0123456789abcdefghij"):
        assert secret not in text
    assert "1234567890" in text


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"pixel_id": ""}, "pixel_id"),
        ({"pixel_id": "abc"}, "pixel_id"),
        ({"access_token": " "}, "access_token"),
        ({"graph_url": "graph.facebook.com"}, "graph_url"),
        ({"api_version": "26"}, "api_version"),
        ({"partner_agent": "x" * 23}, "partner_agent"),
        ({"partner_agent": "1_2"}, "partner_agent"),
        ({"data_processing_options": ("GDPR",)}, "data_processing_options"),
        (
            {"data_processing_options": ("LDU",), "data_processing_options_country": 1},
            "data_processing_options_state",
        ),
        ({"trusted_proxies": ("not-a-network",)}, "trusted_proxies"),
        ({"trusted_proxies": -1}, "trusted_proxies"),
        ({"batch_size": 1001}, "batch_size"),
        ({"endpoint_path": "events"}, "endpoint_path"),
    ],
)
def test_bad_setting_names_itself_and_the_fix(kwargs: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        make(**kwargs)
    assert info.value.setting == setting  # Settings(x=...): named by its keyword
    assert str(info.value).startswith(setting)
    assert "Fix:" in str(info.value)


def test_from_env_parses_types() -> None:
    env = {
        "CAPI_BRIDGE_PIXEL_ID": "111,222",
        "CAPI_BRIDGE_ACCESS_TOKEN": "tok",
        "CAPI_BRIDGE_GRAPH_URL": "http://127.0.0.1:9999/",
        "CAPI_BRIDGE_TEST_EVENT_CODE": "TEST123",
        "CAPI_BRIDGE_OUTBOX_PATH": "/tmp/x.sqlite3",
        "CAPI_BRIDGE_TRUSTED_PROXIES": "2",
        "CAPI_BRIDGE_BATCH_SIZE": "500",
        "CAPI_BRIDGE_LINGER": "0.25",
        "CAPI_BRIDGE_DATA_PROCESSING_OPTIONS": "LDU",
        "CAPI_BRIDGE_DATA_PROCESSING_OPTIONS_COUNTRY": "1",
        "CAPI_BRIDGE_DATA_PROCESSING_OPTIONS_STATE": "1000",
        "UNRELATED": "ignored",
    }
    s = Settings.from_env(env)
    assert s.pixel_ids == ("111", "222")
    assert s.graph_url == "http://127.0.0.1:9999"
    assert s.test_event_code == "TEST123"
    assert s.trusted_proxies == 2
    assert s.batch_size == 500
    assert s.linger == 0.25
    assert s.data_processing_options == ("LDU",)
    assert s.data_processing_options_state == 1000


def test_trusted_proxies_as_cidrs() -> None:
    s = Settings.from_env(
        {
            "CAPI_BRIDGE_PIXEL_ID": "1",
            "CAPI_BRIDGE_ACCESS_TOKEN": "t",
            "CAPI_BRIDGE_TRUSTED_PROXIES": "10.0.0.0/8, 2001:db8::/32",
        }
    )
    assert s.trusted_proxies == ("10.0.0.0/8", "2001:db8::/32")


def test_from_mapping_flask_config_style() -> None:
    config = {"CAPI_BRIDGE_PIXEL_ID": 42, "CAPI_BRIDGE_ACCESS_TOKEN": "t", "SECRET_KEY": "x"}
    assert Settings.from_mapping(config).pixel_ids == ("42",)


def test_missing_required_setting_names_it() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"CAPI_BRIDGE_PIXEL_ID": "1"})
    assert info.value.setting == "CAPI_BRIDGE_ACCESS_TOKEN"
    assert "no Conversions API access token" in info.value.problem


def test_typo_suggests_the_right_name() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(
            {
                "CAPI_BRIDGE_PIXEL_ID": "1",
                "CAPI_BRIDGE_ACCESS_TOKEN": "t",
                "CAPI_BRIDGE_PIXELID": "2",
            }
        )
    assert "CAPI_BRIDGE_PIXEL_ID" in str(info.value)


def test_unreadable_value_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(
            {
                "CAPI_BRIDGE_PIXEL_ID": "1",
                "CAPI_BRIDGE_ACCESS_TOKEN": "t",
                "CAPI_BRIDGE_LINGER": "soon",
            }
        )
    assert info.value.setting == "CAPI_BRIDGE_LINGER" and info.value.field == "linger"
    assert "24h" in info.value.fix  # how to write a duration


# --- an error names the setting the way the user wrote it ---------------------------------------

ENV = {"CAPI_BRIDGE_PIXEL_ID": "1", "CAPI_BRIDGE_ACCESS_TOKEN": "t"}


def test_each_source_names_the_setting_its_own_way() -> None:
    sources = {
        "CAPI_BRIDGE_LINGER": lambda: Settings.from_env({**ENV, "CAPI_BRIDGE_LINGER": "inf"}),
        "linger": lambda: Settings(pixel_id="1", access_token="t", linger="inf"),
        # an override of from_mapping is a keyword argument (ASGI middleware options)
        "linger ": lambda: Settings.from_env(ENV, linger="inf"),
        'CAPI_BRIDGE["LINGER"]': lambda: Settings.from_mapping(
            {"PIXEL_ID": "1", "ACCESS_TOKEN": "t", "LINGER": "inf"},
            prefix="",
            naming=dict_naming("CAPI_BRIDGE"),
        ),
        "MYAPP_LINGER": lambda: Settings.from_mapping(
            {"MYAPP_PIXEL_ID": "1", "MYAPP_ACCESS_TOKEN": "t", "MYAPP_LINGER": "inf"},
            prefix="MYAPP_",
        ),
    }
    for name, build in sources.items():
        with pytest.raises(ConfigError) as info:
            build()
        assert info.value.setting == name.strip()
        assert str(info.value).startswith(name.strip() + ": ")
        assert info.value.field == "linger"  # the same field whatever the source


def test_a_fix_names_other_settings_the_same_way() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**ENV, "CAPI_BRIDGE_TRUSTED_PROXIES": "0.0.0.0/0"})
    assert "CAPI_BRIDGE_TRUST_ALL_PROXIES=true" in info.value.fix
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping(
            {"PIXEL_ID": "1", "ACCESS_TOKEN": "t", "TRUSTED_PROXIES": "::/0"},
            prefix="",
            naming=dict_naming("CAPI_BRIDGE"),
        )
    assert info.value.setting == 'CAPI_BRIDGE["TRUSTED_PROXIES"]'
    assert 'CAPI_BRIDGE["TRUST_ALL_PROXIES"]=true' in info.value.fix
    opted_in = {**ENV, "CAPI_BRIDGE_TRUSTED_PROXIES": "::/0, 0.0.0.0/0"}
    opted_in["CAPI_BRIDGE_TRUST_ALL_PROXIES"] = "true"
    assert Settings.from_env(opted_in).trust_all_proxies is True


def test_a_dict_setting_names_a_typo_and_a_missing_value_inside_it() -> None:
    naming = dict_naming("CAPI_BRIDGE")
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({"PIXELID": "1", "ACCESS_TOKEN": "t"}, prefix="", naming=naming)
    assert info.value.setting == 'CAPI_BRIDGE["PIXELID"]'
    assert 'did you mean CAPI_BRIDGE["PIXEL_ID"]?' in info.value.fix
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({"PIXEL_ID": "1"}, prefix="", naming=naming)
    assert info.value.setting == 'CAPI_BRIDGE["ACCESS_TOKEN"]'


def test_settings_remember_the_names_for_later_messages() -> None:
    key = "0123456789abcdef" * 2
    s = Settings.from_env({**ENV, "CAPI_BRIDGE_SECRET_KEY": key})
    assert s.name_of("secret_key") == "CAPI_BRIDGE_SECRET_KEY"
    same = Settings(pixel_id="1", access_token="t", secret_key=key)
    assert same.name_of("secret_key") == "secret_key"
    assert same == s  # names are not compared: the same values are the same settings


def test_one_rule_for_the_secret_key() -> None:
    for key in ("dev", "x" * 31):
        with pytest.raises(ConfigError) as info:
            make(secret_key=key)
        assert f"{len(key)} characters, fewer than 32" in info.value.problem
        assert "at least 32 characters" in info.value.fix  # one minimum, said once
    assert make(secret_key="x" * 24 + "01234567").secret_key


def test_settings_are_frozen() -> None:
    s = make()
    with pytest.raises(AttributeError):
        s.pixel_id = "2"  # type: ignore[misc]


def test_readme_table_lists_every_setting_with_its_default() -> None:
    import dataclasses
    import pathlib

    from capi_bridge.durations import format_duration

    readme = pathlib.Path(__file__).parents[1] / "README.md"
    rows = {}
    for line in readme.read_text().split("## Configuration", 1)[1].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `CAPI_BRIDGE_") and len(cells) == 4:
            for name in cells[0].split(" / "):
                rows[name.strip("`")] = cells[1]
    for field in dataclasses.fields(Settings):
        if not field.init:
            continue
        assert f"CAPI_BRIDGE_{field.name.upper()}" in rows, f"{field.name} is not in README"
        if isinstance(field.default, float):  # durations, written as one would set them
            shown = rows[f"CAPI_BRIDGE_{field.name.upper()}"]
            assert shown == f"`{format_duration(field.default)}`", field.name
