from __future__ import annotations

import pytest

from capi_bridge.errors import ConfigError
from capi_bridge.settings import DEFAULT_PARTNER_AGENT, Settings


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
    assert s.partner_agent == DEFAULT_PARTNER_AGENT


def test_api_version_matches_facebook_business() -> None:
    apiconfig = pytest.importorskip("facebook_business.apiconfig")
    assert make().api_version == apiconfig.ads_api_config["API_VERSION"]


def test_several_pixels() -> None:
    assert make(pixel_id="111, 222").pixel_ids == ("111", "222")
    assert make(pixel_id=["111", "222"]).pixel_ids == ("111", "222")


def test_repr_hides_secrets() -> None:
    s = make(app_secret="app-secret-xyz", secret_key="signing-key-xyz")
    text = repr(s) + str(s)
    for secret in ("EAAB-secret-token", "app-secret-xyz", "signing-key-xyz"):
        assert secret not in text
    assert "1234567890" in text


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"pixel_id": ""}, "CAPI_BRIDGE_PIXEL_ID"),
        ({"pixel_id": "abc"}, "CAPI_BRIDGE_PIXEL_ID"),
        ({"access_token": " "}, "CAPI_BRIDGE_ACCESS_TOKEN"),
        ({"graph_url": "graph.facebook.com"}, "CAPI_BRIDGE_GRAPH_URL"),
        ({"api_version": "26"}, "CAPI_BRIDGE_API_VERSION"),
        ({"partner_agent": "x" * 23}, "CAPI_BRIDGE_PARTNER_AGENT"),
        ({"partner_agent": "1_2"}, "CAPI_BRIDGE_PARTNER_AGENT"),
        ({"data_processing_options": ("GDPR",)}, "CAPI_BRIDGE_DATA_PROCESSING_OPTIONS"),
        (
            {"data_processing_options": ("LDU",), "data_processing_options_country": 1},
            "CAPI_BRIDGE_DATA_PROCESSING_OPTIONS_STATE",
        ),
        ({"trusted_proxies": ("not-a-network",)}, "CAPI_BRIDGE_TRUSTED_PROXIES"),
        ({"trusted_proxies": -1}, "CAPI_BRIDGE_TRUSTED_PROXIES"),
        ({"batch_size": 1001}, "CAPI_BRIDGE_BATCH_SIZE"),
        ({"endpoint_path": "events"}, "CAPI_BRIDGE_ENDPOINT_PATH"),
    ],
)
def test_bad_setting_names_itself_and_the_fix(kwargs: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        make(**kwargs)
    assert info.value.setting == setting
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
    assert info.value.setting == "CAPI_BRIDGE_LINGER"


def test_settings_are_frozen() -> None:
    s = make()
    with pytest.raises(AttributeError):
        s.pixel_id = "2"  # type: ignore[misc]
