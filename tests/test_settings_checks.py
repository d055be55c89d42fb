"""Every setting is checked at start-up: values that used to be accepted and fail later.

Each refused value below was accepted before these checks (or failed with a raw TypeError,
AttributeError or a generic "out of range"), and then broke something at run time: every page a
500 (``token_max_age=inf``), nothing delivered (``request_timeout=inf``, ``graph_url`` that does
not parse), the home page a 403 (``endpoint_path="/"``), no ``_fbp`` cookie (``com``)...
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any

import pytest

from capi_bridge.errors import ConfigError
from capi_bridge.settings import Settings

TOKEN = "EAAB-secret-token"


def make(**kw: Any) -> Settings:
    base: dict[str, Any] = {"pixel_id": "1234567890", "access_token": TOKEN}
    base.update(kw)
    return Settings(**base)


def refused(**kw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        make(**kw)
    return info.value


REFUSED: list[tuple[dict[str, Any], str, str]] = [
    # types: a keyword of the wrong type is named, not a raw TypeError later
    ({"batch_size": True}, "batch_size", "not a whole number"),
    ({"batch_size": 5.5}, "batch_size", "not a whole number"),
    ({"linger": "soon"}, "linger", "not a duration"),
    ({"inspector": "maybe"}, "inspector", "not true or false"),
    ({"access_token": 12345}, "access_token", "expected text"),
    ({"outbox_path": 42}, "outbox_path", "expected text"),  # None: the default location
    ({"trusted_proxies": True}, "trusted_proxies", "boolean"),
    ({"data_processing_options_country": True}, "data_processing_options_country", "whole"),
    # finite ranges
    ({"request_timeout": math.inf}, "request_timeout", "not a finite duration"),
    ({"token_max_age": math.inf}, "token_max_age", "not a finite duration"),
    ({"lease_seconds": math.inf}, "lease_seconds", "not a finite duration"),
    ({"max_backoff": math.inf}, "max_backoff", "not a finite duration"),
    ({"close_timeout": math.inf}, "close_timeout", "not a finite duration"),
    ({"linger": math.nan}, "linger", "not a finite duration"),
    ({"auth_pause": 10 * 86400}, "auth_pause", "out of range"),
    ({"max_backoff": 30 * 86400}, "max_backoff", "out of range"),
    ({"token_max_age": 30}, "token_max_age", "refresh it a minute before"),
    ({"token_max_age": 30 * 86400}, "token_max_age", "out of range"),
    ({"rate_limit": 10**9}, "rate_limit", "out of range"),
    ({"request_timeout": 120.0}, "request_timeout", "not shorter than lease_seconds"),
    ({"close_timeout": 86400.0}, "close_timeout", "out of range"),
    # URLs that parse, http(s) only
    ({"graph_url": "http://[::1"}, "graph_url", "does not parse"),
    ({"graph_url": "http://127.0.0.1:99999"}, "graph_url", "does not parse"),
    ({"graph_url": "https://user:pw@graph.facebook.com"}, "graph_url", "user name or password"),
    ({"graph_url": "https://graph.facebook.com?debug=all"}, "graph_url", "query or fragment"),
    ({"pixel_script_url": "javascript:alert(1)"}, "pixel_script_url", "http(s) URL"),
    ({"pixel_script_url": "//connect.facebook.net/fbevents.js"}, "pixel_script_url", "http(s)"),
    ({"pixel_script_url": "https://cdn.example/fb events.js"}, "pixel_script_url", "whitespace"),
    # paths that make sense and do not collide
    ({"endpoint_path": "/"}, "endpoint_path", "home page"),
    ({"script_path": "/"}, "script_path", "home page"),
    ({"endpoint_path": "/capi bridge"}, "endpoint_path", "not a plain URL path"),
    ({"endpoint_path": "/events?x=1"}, "endpoint_path", "not a plain URL path"),
    ({"endpoint_path": "/events#top"}, "endpoint_path", "not a plain URL path"),
    ({"script_path": "//evil.example/x.js"}, "script_path", "not a plain URL path"),
    ({"endpoint_path": "/a/../b"}, "endpoint_path", "not a plain URL path"),
    ({"script_path": "/capi-bridge/events"}, "script_path", "collides with endpoint_path"),
    (
        {"inspector": True, "inspector_path": "/capi-bridge/events"},
        "inspector_path",
        "collides with endpoint_path",
    ),
    (
        {"inspector": True, "inspector_path": "/capi-bridge/events/x"},
        "inspector_path",
        "collides with endpoint_path",
    ),
    ({"inspector": True, "inspector_path": "/capi-bridge"}, "inspector_path", "collides"),
    (
        {"inspector": True, "inspector_path": "/capi-bridge/capi-bridge.js/"},
        "inspector_path",
        "collides with script_path",
    ),
    # ids, tokens, keys
    ({"pixel_id": "١٢٣"}, "pixel_id", "ASCII digits only"),
    ({"pixel_id": "111,111"}, "pixel_id", "listed twice"),
    ({"api_version": "v٢٦.0"}, "api_version", "not a Graph API version"),
    ({"secret_key": "short"}, "secret_key", "5 characters, fewer than 32"),
    ({"secret_key": "ab" * 20}, "secret_key", "repeats a few characters"),
    ({"access_token": "Bearer " + TOKEN}, "access_token", "starts with 'Bearer '"),
    ({"access_token": "EAAB secret"}, "access_token", "whitespace"),
    ({"access_token": '"EAAB-secret"'}, "access_token", "quote"),
    ({"access_token": "“EAAB-secret”"}, "access_token", "quote"),
    ({"access_token": "EAAB-\x00secret"}, "access_token", "control characters"),
    ({"access_token": "EAAB-\u200bsecret"}, "access_token", "control characters"),
    ({"app_secret": "abc def"}, "app_secret", "whitespace"),
    ({"test_event_code": "TEST 123"}, "test_event_code", "whitespace"),
    ({"partner_agent": "my agent_1_0"}, "partner_agent", "whitespace"),
    # cookie domain, hosts, proxies, events, consent
    ({"cookie_domain": "com"}, "cookie_domain", "public suffix"),
    ({"cookie_domain": ".co.uk"}, "cookie_domain", "public suffix"),
    ({"cookie_domain": "github.io"}, "cookie_domain", "public suffix"),
    ({"cookie_domain": "127.0.0.1"}, "cookie_domain", "IP address"),
    ({"cookie_domain": "shop example.com"}, "cookie_domain", "not a domain name"),
    ({"cookie_domain": "bücher.example"}, "cookie_domain", "xn--"),
    ({"trusted_proxies": "0.0.0.0/0"}, "trusted_proxies", "every IPv4 address"),
    ({"trusted_proxies": "::/0"}, "trusted_proxies", "every IPv6 address"),
    ({"trusted_proxies": "0.0.0.0/1, 128.0.0.0/1"}, "trusted_proxies", "every IPv4"),
    ({"trusted_proxies": 11}, "trusted_proxies", "hop count from 0 to 10"),
    ({"allowed_hosts": "https://shop.example"}, "allowed_hosts", "no scheme, port or path"),
    ({"allowed_hosts": "shop.example:8443"}, "allowed_hosts", "no scheme, port or path"),
    ({"allowed_hosts": "*.example.com"}, "allowed_hosts", ".example.com for every subdomain"),
    ({"custom_events": ["x" * 51]}, "custom_events", "at most 50 characters"),
    ({"consent_cookie": "_fbp"}, "consent_cookie", "the pixel or capi-bridge writes"),
    ({"consent_cookie": "_capib_pv"}, "consent_cookie", "the pixel or capi-bridge writes"),
    # the outbox: a file SQLite can create, not a raw OSError at the first event
    ({"outbox_path": ""}, "outbox_path", "is empty"),
    ({"outbox_path": ":memory:"}, "outbox_path", "not a file path"),
]


@pytest.mark.parametrize(("kwargs", "field", "says"), REFUSED)
def test_a_value_that_would_fail_later_is_refused_at_start_up(
    kwargs: dict[str, Any], field: str, says: str
) -> None:
    error = refused(**kwargs)
    assert (error.field, error.setting) == (field, field)  # a keyword is named by its keyword
    assert says in error.problem + error.fix
    assert str(error).startswith(field + ": ") and "Fix: " in str(error) and error.fix


def test_secrets_are_never_repeated_in_an_error() -> None:
    for kwargs in (
        {"access_token": "Bearer EAAB-secret-token"},
        {"access_token": "EAAB-secret-token x"},
        {"access_token": 987654321},
        {"app_secret": "app-secret-0123 x"},
        {"secret_key": "short-key-0123"},
    ):
        error = refused(**kwargs)
        assert not any(s in str(error) for s in ("EAAB", "987654321", "0123"))


def test_outbox_path_a_folder_or_a_missing_folder(tmp_path: pathlib.Path) -> None:
    error = refused(outbox_path=str(tmp_path))
    assert "is a folder" in error.problem and str(tmp_path / "outbox.sqlite3") in error.fix
    missing = tmp_path / "not-created" / "outbox.sqlite3"
    error = refused(outbox_path=str(missing))
    assert f"in {missing.parent}, which does not exist" in error.problem
    assert "create the folder" in error.fix
    assert "is a folder" in refused(outbox_path=tmp_path).problem  # a PathLike too


def test_outbox_path_in_a_folder_the_app_cannot_write(tmp_path: pathlib.Path) -> None:
    if os.geteuid() == 0:  # root ignores mode bits (CI runs as root); nobody may write in /proc/1
        locked = pathlib.Path("/proc/1")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
    assert "cannot be written" in refused(outbox_path=str(locked / "o.sqlite3")).problem


def test_sensible_values_are_accepted(tmp_path: pathlib.Path) -> None:
    s = make(
        access_token="test-token",  # no vendor prefix or alphabet is required
        secret_key="a-random-string-of-32-characters!",
        outbox_path=tmp_path / "outbox.sqlite3",
        trusted_proxies="10.0.0.0/8, 2001:db8::/32",
        cookie_domain=".Example.co.uk",
        allowed_hosts="shop.example.com, .example.com, 127.0.0.1, *",
        inspector=True,
        inspector_path="/ops/capi",
        endpoint_path="/t/e",
        script_path="/t/s.js",
        graph_url="http://[::1]:8765",
        pixel_script_url="http://127.0.0.1:8765/fbevents.js?v=2",
        linger=0,
        close_timeout=0,
        dedup_window=0,
    )
    assert s.outbox_path == str(tmp_path / "outbox.sqlite3")
    # the inspector's path is only checked against the others when the inspector is on
    assert make(endpoint_path="/capi-bridge").inspector_path == "/capi-bridge/inspector"


def test_trusting_every_address_needs_the_explicit_opt_in() -> None:
    error = refused(trusted_proxies="0.0.0.0/0")
    assert "forge the IP address" in error.problem and "trust_all_proxies=true" in error.fix
    s = make(trusted_proxies="0.0.0.0/0, ::/0", trust_all_proxies=True)
    assert s.trusted_proxies == ("0.0.0.0/0", "::/0")


@pytest.mark.parametrize(
    ("value", "seconds"), [("24h", 86400.0), ("90s", 90.0), ("15m", 900.0), ("2d", 172800.0)]
)
def test_durations_take_units(value: str, seconds: float) -> None:
    environ = {"CAPI_BRIDGE_PIXEL_ID": "1", "CAPI_BRIDGE_ACCESS_TOKEN": "t"}
    environ |= {"CAPI_BRIDGE_HELD_TTL": value, "CAPI_BRIDGE_DEDUP_WINDOW": value}
    s = Settings.from_env(environ)
    assert (s.held_ttl, s.dedup_window) == (seconds, seconds)
    assert make(held_ttl=value).held_ttl == seconds  # a keyword takes the same syntax


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("CAPI_BRIDGE_GRAPH_URL", "", "is empty"),  # was None, then an AttributeError
        ("CAPI_BRIDGE_AUTO_INJECT", "", "is empty"),  # was silently false
        ("CAPI_BRIDGE_TOKEN_MAX_AGE", "inf", "not a duration"),
        ("CAPI_BRIDGE_REQUEST_TIMEOUT", "1e9", "not a duration"),
        ("CAPI_BRIDGE_HELD_TTL", "-5", "not a duration"),
        ("CAPI_BRIDGE_TRUSTED_PROXIES", "١", "not an IP network"),
    ],
)
def test_environment_values_are_read_strictly(key: str, value: str, says: str) -> None:
    environ = {"CAPI_BRIDGE_PIXEL_ID": "1", "CAPI_BRIDGE_ACCESS_TOKEN": "t", key: value}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ)
    assert info.value.setting == key and says in info.value.problem
