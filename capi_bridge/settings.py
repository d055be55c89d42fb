"""Settings: one frozen object, validated once at start-up.

Every adapter builds the same :class:`Settings`, from keyword arguments, from a mapping such as
Flask's ``app.config`` (``CAPI_BRIDGE_*`` keys) or from the environment. A bad value fails here,
at start-up, with the setting's name and the fix, instead of surfacing as a rejected batch at Meta
hours later. Secrets are kept out of ``repr()`` so a settings object can be logged safely.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from capi_bridge._version import __version__
from capi_bridge.errors import ConfigError

ENV_PREFIX = "CAPI_BRIDGE_"

#: The Graph API version facebook-business 26.0.3 sends to (``apiconfig.API_VERSION``).
DEFAULT_API_VERSION = "v26.0"

#: Meta asks partners for "[partner_name]_[major]_[minor]", under 23 characters.
DEFAULT_PARTNER_AGENT = "capibridge_" + "_".join(__version__.split(".")[:2])

#: LDU state codes Meta documents (California 1000 ... Rhode Island 1013), plus 0 = geolocate.
_LDU_STATES = frozenset({0, *range(1000, 1014)})


def _str_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, int)):
        return tuple(part.strip() for part in str(value).split(",") if part.strip())
    return tuple(str(part).strip() for part in value if str(part).strip())


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def _parse_optional_int(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return int(value)


def _parse_optional_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _parse_trusted_proxies(value: Any) -> int | tuple[str, ...]:
    """A hop count ("1") or a list of proxy CIDRs ("10.0.0.0/8, 2001:db8::/32")."""
    if isinstance(value, bool):
        raise ValueError("expected a hop count or a list of CIDRs, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return _str_tuple(value)


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "pixel_id": _str_tuple,
    "data_processing_options": _str_tuple,
    "data_processing_options_country": _parse_optional_int,
    "data_processing_options_state": _parse_optional_int,
    "trusted_proxies": _parse_trusted_proxies,
    "allowed_hosts": _str_tuple,
    "custom_events": _str_tuple,
}


def _parser_for(field: dataclasses.Field[Any]) -> Callable[[Any], Any]:
    if field.name in _PARSERS:
        return _PARSERS[field.name]
    default = field.default
    if isinstance(default, bool):
        return _parse_bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, tuple):
        return _str_tuple
    return _parse_optional_str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything capi-bridge needs to know; see README's configuration table.

    ``pixel_id`` takes one id or several (a sequence, or a comma-separated string); the
    normalized tuple is in :attr:`pixel_ids`.
    """

    # --- Meta account -------------------------------------------------------------------------
    pixel_id: str | Sequence[str]
    access_token: str = dataclasses.field(repr=False)
    app_secret: str | None = dataclasses.field(default=None, repr=False)
    secret_key: str | None = dataclasses.field(default=None, repr=False)
    graph_url: str = "https://graph.facebook.com"
    api_version: str = DEFAULT_API_VERSION
    test_event_code: str | None = None
    partner_agent: str = DEFAULT_PARTNER_AGENT
    request_timeout: float = 10.0

    # --- privacy ------------------------------------------------------------------------------
    data_processing_options: tuple[str, ...] = ()
    data_processing_options_country: int | None = None
    data_processing_options_state: int | None = None

    # --- delivery -----------------------------------------------------------------------------
    outbox_path: str = "capi-bridge-outbox.sqlite3"
    batch_size: int = 1000
    linger: float = 0.1
    max_backoff: float = 300.0
    lease_seconds: float = 60.0
    auth_pause: float = 300.0
    close_timeout: float = 5.0
    retry_base: float = 1.0
    dedup_window: float = 172800.0
    outbox_synchronous: str = "NORMAL"
    outbox_url: str | None = dataclasses.field(default=None, repr=False)  # may hold a password
    outbox_schema: str = "capi_bridge"
    probe_interval: float = 30.0

    # --- requests and browser bridge ----------------------------------------------------------
    trusted_proxies: int | tuple[str, ...] = 0
    endpoint_path: str = "/capi-bridge/events"
    script_path: str = "/capi-bridge/capi-bridge.js"
    pixel_script_url: str = "https://connect.facebook.net/en_US/fbevents.js"
    cookie_domain: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    custom_events: tuple[str, ...] = ()
    token_max_age: float = 7200.0
    rate_limit: int = 120
    forwarded_header: str = "x-forwarded-for"

    # --- consent, test events, adapters -------------------------------------------------------
    consent: str = "granted"
    consent_cookie: str = "capib_consent"
    held_ttl: float = 86400.0
    scoped_test_events: bool = False
    auto_inject: bool = True
    advanced_matching: bool = False

    # --- inspector and diagnostics ------------------------------------------------------------
    inspector: bool = False
    inspector_path: str = "/capi-bridge/inspector"

    def __post_init__(self) -> None:
        ids = _str_tuple(self.pixel_id)
        object.__setattr__(self, "pixel_id", ids[0] if len(ids) == 1 else ids)
        object.__setattr__(
            self, "data_processing_options", _str_tuple(self.data_processing_options)
        )
        object.__setattr__(self, "allowed_hosts", _str_tuple(self.allowed_hosts))
        object.__setattr__(self, "custom_events", _str_tuple(self.custom_events))
        proxies = self.trusted_proxies
        if not isinstance(proxies, int):
            object.__setattr__(self, "trusted_proxies", _str_tuple(proxies))
        object.__setattr__(self, "graph_url", self.graph_url.rstrip("/"))
        object.__setattr__(self, "outbox_synchronous", str(self.outbox_synchronous).upper())
        object.__setattr__(self, "forwarded_header", str(self.forwarded_header).lower())
        object.__setattr__(self, "consent", str(self.consent).lower())
        self._validate()

    @property
    def pixel_ids(self) -> tuple[str, ...]:
        """The configured pixel ids, always as a tuple."""
        pixel_id = self.pixel_id
        return (pixel_id,) if isinstance(pixel_id, str) else tuple(pixel_id)

    def _validate(self) -> None:
        ids = self.pixel_ids
        if not ids:
            raise ConfigError(
                env("pixel_id"),
                "no pixel id is set",
                "set it to your Meta Pixel (dataset) id, the number shown in Events Manager",
            )
        for pid in ids:
            if not pid.isdigit():
                raise ConfigError(
                    env("pixel_id"),
                    f"{pid!r} is not a pixel id",
                    "use the numeric id from Events Manager (several ids: separate with commas)",
                )
        if not self.access_token or not self.access_token.strip():
            raise ConfigError(
                env("access_token"),
                "no Conversions API access token is set",
                "generate one in Events Manager > your pixel > Settings > Conversions API "
                "(a system-user token does not expire)",
            )
        if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", self.graph_url):
            raise ConfigError(
                env("graph_url"),
                f"{self.graph_url!r} is not an http(s) URL",
                "leave it unset for Meta (https://graph.facebook.com) or point it at a fake server",
            )
        if not re.fullmatch(r"v\d+\.\d+", self.api_version):
            raise ConfigError(
                env("api_version"),
                f"{self.api_version!r} is not a Graph API version",
                f"use the form vNN.N, e.g. {DEFAULT_API_VERSION}",
            )
        agent = self.partner_agent
        if len(agent) >= 23 or sum(ch.isalpha() for ch in agent) < 2:
            raise ConfigError(
                env("partner_agent"),
                f"{agent!r} must be under 23 characters with at least two letters",
                "use Meta's form name_major_minor, e.g. myplatform_1_0",
            )
        self._validate_ldu()
        self._validate_numbers()
        self._validate_proxies()
        self._validate_choices()
        self._validate_outbox()
        for name in ("endpoint_path", "script_path", "inspector_path"):
            value = getattr(self, name)
            if not value.startswith("/"):
                raise ConfigError(env(name), f"{value!r} is not a path", "start it with '/'")

    def _validate_ldu(self) -> None:
        options = self.data_processing_options
        if any(opt != "LDU" for opt in options):
            raise ConfigError(
                env("data_processing_options"),
                f"{list(options)!r} holds an unknown option",
                "use LDU (Limited Data Use) or leave it empty",
            )
        country, state = self.data_processing_options_country, self.data_processing_options_state
        if country is not None and country not in (0, 1):
            raise ConfigError(
                env("data_processing_options_country"),
                f"{country} is not 0 (geolocate) or 1 (USA)",
                "set 0 to let Meta geolocate, or 1 for the USA",
            )
        if state is not None and state not in _LDU_STATES:
            raise ConfigError(
                env("data_processing_options_state"),
                f"{state} is not a state code Meta knows",
                "use 0 (geolocate) or 1000 (California) ... 1013 (Rhode Island)",
            )
        if (country is None) != (state is None):
            raise ConfigError(
                env("data_processing_options_state"),
                "country and state must be set together",
                "set both (e.g. 0 and 0 to geolocate) or neither",
            )
        if not options and country is not None:
            raise ConfigError(
                env("data_processing_options"),
                "a country/state is set but LDU is not enabled",
                "set CAPI_BRIDGE_DATA_PROCESSING_OPTIONS=LDU or drop the country and state",
            )

    def _validate_numbers(self) -> None:
        if not 1 <= self.batch_size <= 1000:
            raise ConfigError(
                env("batch_size"), f"{self.batch_size} is out of range", "use 1 to 1000"
            )
        checks = {
            "request_timeout": self.request_timeout > 0,
            "linger": 0 <= self.linger <= 10,
            "max_backoff": self.max_backoff >= 1,
            "lease_seconds": self.lease_seconds > 0,
            "auth_pause": self.auth_pause > 0,
            "close_timeout": self.close_timeout >= 0,
            "retry_base": 0 < self.retry_base <= self.max_backoff,
            "dedup_window": 0 <= self.dedup_window <= 30 * 86400,
            "token_max_age": self.token_max_age > 0,
            "rate_limit": self.rate_limit > 0,
            "held_ttl": 0 < self.held_ttl <= 7 * 86400,
            "probe_interval": self.probe_interval > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(
                    env(name),
                    f"{getattr(self, name)!r} is out of range",
                    "see the configuration table in README.md for sensible values",
                )
        if self.lease_seconds <= self.request_timeout:
            raise ConfigError(
                env("lease_seconds"),
                f"{self.lease_seconds!r} is not longer than request_timeout "
                f"({self.request_timeout!r}): another process could take over a batch still "
                "on its way to Meta and send it twice",
                "keep lease_seconds well above request_timeout (defaults: 60 and 10)",
            )
        if self.outbox_synchronous not in ("NORMAL", "FULL"):
            raise ConfigError(
                env("outbox_synchronous"),
                f"{self.outbox_synchronous!r} is not NORMAL or FULL",
                "use NORMAL (survives a crash of the app; a power loss may lose the last "
                "commits) or FULL (fsync on every enqueue, several times slower)",
            )

    @property
    def store_url(self) -> str:
        """Where the outbox is: ``outbox_url``, else ``sqlite:///`` + ``outbox_path``."""
        return self.outbox_url or "sqlite:///" + self.outbox_path

    def _validate_outbox(self) -> None:
        url = self.store_url
        scheme, _, rest = url.partition("://")
        if scheme == "sqlite":
            if not rest.startswith("/") or len(rest) < 2:
                raise ConfigError(
                    env("outbox_url"),
                    "a SQLite outbox URL needs a file path",
                    "use sqlite:///relative/file.sqlite3 or sqlite:////absolute/file.sqlite3",
                )
        elif scheme in ("postgresql", "postgres"):
            missing = [
                m for m in ("psycopg", "psycopg_pool") if importlib.util.find_spec(m) is None
            ]
            if missing:
                raise ConfigError(
                    env("outbox_url"),
                    f"a PostgreSQL outbox needs {' and '.join(missing)}, which is not installed",
                    "pip install 'capi-bridge[postgres]' (psycopg 3 and psycopg-pool)",
                )
        else:
            raise ConfigError(
                env("outbox_url"),
                f"{scheme or url!r} is not an outbox URL scheme",
                "use sqlite:///path/to/outbox.sqlite3 (one host) or "
                "postgresql://user:password@host:5432/database (several hosts)",
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", self.outbox_schema or ""):
            raise ConfigError(
                env("outbox_schema"),
                f"{self.outbox_schema!r} is not a PostgreSQL schema name",
                "use letters, digits and '_' (default capi_bridge)",
            )

    @property
    def consent_required(self) -> bool:
        """Whether events wait for the visitor's consent (``consent = "required"``)."""
        return self.consent == "required"

    def _validate_choices(self) -> None:
        if self.forwarded_header not in ("x-forwarded-for", "forwarded"):
            raise ConfigError(
                env("forwarded_header"),
                f"{self.forwarded_header!r} is not x-forwarded-for or forwarded",
                "name the one header your proxies write (nginx, ALB, Cloudflare: x-forwarded-for)",
            )
        if self.consent not in ("granted", "required"):
            raise ConfigError(
                env("consent"),
                f"{self.consent!r} is not granted or required",
                "use required when the site asks visitors for consent (a CMP banner), "
                "granted otherwise",
            )
        if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", self.consent_cookie):
            raise ConfigError(
                env("consent_cookie"),
                f"{self.consent_cookie!r} is not a cookie name",
                "use letters, digits, '_' or '-' (the cookie your consent banner sets)",
            )

    def _validate_proxies(self) -> None:
        proxies = self.trusted_proxies
        if isinstance(proxies, int):
            if proxies < 0:
                raise ConfigError(
                    env("trusted_proxies"), "a hop count cannot be negative", "use 0, 1, 2 ..."
                )
            return
        for cidr in proxies:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(
                    env("trusted_proxies"),
                    f"{cidr!r} is not an IP network",
                    "give a hop count (e.g. 1 behind one nginx) or CIDRs such as 10.0.0.0/8",
                ) from None

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[str, Any], prefix: str = ENV_PREFIX, **overrides: Any
    ) -> Settings:
        """Build settings from ``PREFIX_NAME`` keys (Flask's ``app.config``, ``os.environ``).

        String values are parsed (numbers, booleans, comma-separated lists). A key that starts
        with the prefix but names no setting is an error: a typo would otherwise be ignored.
        """
        known = {f.name: f for f in dataclasses.fields(cls) if f.init}
        values: dict[str, Any] = {}
        for key, raw in mapping.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :].lower()
            if name not in known:
                close = difflib.get_close_matches(name, list(known), n=1)
                hint = f"did you mean {prefix}{close[0].upper()}?" if close else "remove it"
                raise ConfigError(key, "is not a capi-bridge setting", hint)
            try:
                values[name] = _parser_for(known[name])(raw)
            except (TypeError, ValueError) as exc:
                raise ConfigError(key, f"{raw!r} cannot be read ({exc})", "see README") from None
        values.update(overrides)
        for required in ("pixel_id", "access_token"):
            if required not in values or values[required] in (None, "", ()):
                fix = (
                    "set it to your Meta Pixel id"
                    if required == "pixel_id"
                    else "set it to a Conversions API access token from Events Manager"
                )
                raise ConfigError(prefix + required.upper(), "is not set", fix)
        return cls(**values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``CAPI_BRIDGE_*`` environment variables."""
        return cls.from_mapping(os.environ if environ is None else environ, **overrides)


def env(name: str) -> str:
    """The environment/config key of a setting, as error messages name it."""
    return ENV_PREFIX + name.upper()
