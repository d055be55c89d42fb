"""Settings: one frozen object, read and checked once at start-up.

Every adapter builds the same :class:`Settings`, from keyword arguments, from a mapping such as
Flask's ``app.config`` (``CAPI_BRIDGE_*`` keys) or from the environment. A bad value fails here,
at start-up, with the setting's name and the fix, instead of surfacing as a rejected batch at Meta
hours later (the rules: :mod:`capi_bridge.settings_checks`). Secrets are kept out of ``repr()``
so a settings object can be logged safely.

An error names a setting the way the user wrote it, which depends on the source: an environment
variable ``CAPI_BRIDGE_LINGER``, a keyword ``linger``, Flask's own ``SECRET_KEY``, Django's
``CAPI_BRIDGE["LINGER"]``. A :data:`Naming` says which; an adapter passes one to
:meth:`Settings.from_mapping` instead of every check knowing every framework.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from capi_bridge import settings_checks, settings_site_checks
from capi_bridge._version import __version__
from capi_bridge.durations import SYNTAX, parse_duration
from capi_bridge.errors import ConfigError
from capi_bridge.outbox_location import default_outbox_path
from capi_bridge.settings_checks import fail

ENV_PREFIX = "CAPI_BRIDGE_"

#: The Graph API version facebook-business 26.0.3 sends to (``apiconfig.API_VERSION``).
DEFAULT_API_VERSION = "v26.0"

#: Meta asks partners for "[partner_name]_[major]_[minor]", under 23 characters.
DEFAULT_PARTNER_AGENT = "capibridge_" + "_".join(__version__.split(".")[:2])

#: What ``delivery="auto"`` means where a delivery process can run (a SQLite outbox on a POSIX
#: host): "process". The test suite sets "thread" (one process per test's outbox would cost
#: more than the tests); its tests of the process ask for ``delivery="process"`` by name.
AUTO_DELIVERY = "process"

#: How errors name a setting: its field name (``"secret_key"``) to the name the user wrote.
Naming = Callable[[str], str]


def env(name: str) -> str:
    """The environment/config key of a setting (``CAPI_BRIDGE_LINGER``)."""
    return ENV_PREFIX + name.upper()


def keyword_naming(field: str) -> str:
    """``Settings(linger=...)``: a keyword argument is named by its keyword."""
    return field


def prefix_naming(prefix: str = ENV_PREFIX) -> Naming:
    """Keys of a flat mapping: ``prefix_naming("APP_")("linger") == "APP_LINGER"``."""
    return lambda field: prefix + field.upper()


def dict_naming(container: str) -> Naming:
    """Items of one dict setting, as Django's ``settings.CAPI_BRIDGE`` holds them:
    ``dict_naming("CAPI_BRIDGE")("linger") == 'CAPI_BRIDGE["LINGER"]'``."""
    return lambda field: f'{container}["{field.upper()}"]'


# --- reading: what a source gives (a string, or a typed keyword) into the field's type -------

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_MAY_BE_EMPTY = (dataclasses.MISSING, None, "", ())


class _Refused(ValueError):
    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Refused(f"expected text, got {type(value).__name__}", "give it as a string")
    return value.strip()


def _optional_text(value: Any) -> str | None:
    return None if value is None else (_text(value) or None)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise _Refused(f"{value!r} is not true or false", "write true or false (or 1/0, yes/no)")


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    raise _Refused(f"{value!r} is not a whole number", "write digits only, e.g. 500")


def _optional_int(value: Any) -> int | None:
    return None if value is None or (isinstance(value, str) and not value.strip()) else _int(value)


def _duration(value: Any) -> float:
    if isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise _Refused(f"{value!r} is not a duration", f"write it as {SYNTAX}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise _Refused(f"expected seconds, got {type(value).__name__}", f"write it as {SYNTAX}")
    if not math.isfinite(seconds):
        raise _Refused(f"{seconds} is not a finite duration", f"write it as {SYNTAX}")
    return seconds


def _list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return tuple(part.strip() for part in str(value).split(",") if part.strip())
    if isinstance(value, Iterable) and not isinstance(value, (bytes, dict)):
        return tuple(str(part).strip() for part in value if str(part).strip())
    raise _Refused(f"expected a list, got {type(value).__name__}", "separate values with commas")


def _pixel_ids(value: Any) -> str | tuple[str, ...]:
    ids = _list(value)
    return ids[0] if len(ids) == 1 else ids


def _proxies(value: Any) -> int | tuple[str, ...]:
    """A hop count ("1") or a list of proxy CIDRs ("10.0.0.0/8, 2001:db8::/32")."""
    if isinstance(value, bool):
        raise _Refused("a boolean is not a proxy setting", "give a hop count or a list of CIDRs")
    if isinstance(value, int) or (isinstance(value, str) and _INTEGER.fullmatch(value.strip())):
        return _int(value)
    return _list(value)


def _path(value: Any) -> str | None:
    """A file path, or None for the default location (see :mod:`capi_bridge.outbox_location`)."""
    if value is None:
        return None
    path = _text(os.fspath(value) if isinstance(value, os.PathLike) else value)
    if not path:
        raise _Refused("is empty", "remove it to use the default location")
    return path


_READERS: dict[str, Callable[[Any], Any]] = {
    "pixel_id": _pixel_ids,
    "data_processing_options_country": _optional_int,
    "data_processing_options_state": _optional_int,
    "trusted_proxies": _proxies,
    "outbox_path": _path,
    "graph_url": lambda value: _text(value).rstrip("/"),
    "outbox_synchronous": lambda value: _text(value).upper(),
    "delivery": lambda value: _text(value).lower(),
    "forwarded_header": lambda value: _text(value).lower(),
    "consent": lambda value: _text(value).lower(),
}


def _reader(field: dataclasses.Field[Any]) -> Callable[[Any], Any]:
    if field.name in _READERS:
        return _READERS[field.name]
    default = field.default
    if isinstance(default, bool):
        return _bool
    if isinstance(default, int):
        return _int
    if isinstance(default, float):
        return _duration
    if isinstance(default, tuple):
        return _list
    return _optional_text if default is None else _text


def _read(settings: Settings) -> None:
    """Turn each value into its field's type (in place: ``Settings`` is frozen otherwise).

    An empty value is refused for a setting whose default is not empty: ``CAPI_BRIDGE_LINGER=``
    in an env file is a forgotten value, and silently using the default would hide it. Secrets
    are read as text only, whose refusal never repeats the value.
    """
    for field in dataclasses.fields(settings):
        if not field.init:
            continue
        raw = getattr(settings, field.name)
        if isinstance(raw, str) and not raw.strip() and field.default not in _MAY_BE_EMPTY:
            fail(settings, field.name, "is empty", f"remove it to use the default, {field.default}")
        try:
            value = _reader(field)(raw)
        except _Refused as exc:
            fail(settings, field.name, exc.problem, exc.fix)
        object.__setattr__(settings, field.name, value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything capi-bridge needs to know; see README's configuration table.

    ``pixel_id`` takes one id or several (a sequence, or a comma-separated string); the
    normalized tuple is in :attr:`pixel_ids`. Durations take seconds or ``90s``/``15m``/``24h``/
    ``7d``; strings are read as README's configuration table says.

    ``naming`` is not a setting: it says how errors name each setting (a :data:`Naming`; the
    keyword by default). :meth:`from_mapping` passes one; so can a loader of its own format.
    """

    naming: dataclasses.InitVar[Naming | None] = None
    #: Not a setting either: the app's own data folder (Flask's instance folder, Django's
    #: BASE_DIR), where the outbox goes when neither ``outbox_path`` nor ``outbox_url`` is set.
    outbox_folder: dataclasses.InitVar[str | os.PathLike[str] | None] = None
    _names: dict[str, str] = dataclasses.field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    #: True when ``outbox_path`` is the default location, not one the app chose.
    outbox_default: bool = dataclasses.field(init=False, compare=False, default=False)

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
    outbox_path: str | None = None  # the default location: see capi_bridge.outbox_location
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
    #: Who sends what the app's processes store (they only store, durably, unless "thread"):
    #: "process", one delivery process per outbox per host that they start and stop themselves
    #: (:mod:`capi_bridge.delivery.host_worker`); "thread", each app process in a thread of its
    #: own; "worker", a ``capi-bridge worker`` the site runs (:mod:`capi_bridge.cli_worker`);
    #: "auto" (the default), :data:`AUTO_DELIVERY` where it can run, else "thread".
    delivery: str = "auto"

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
    trust_all_proxies: bool = False
    mirror_pixel_calls: bool = True
    #: How long after a page was served its token (or one refreshed from it) may be refreshed.
    token_refresh_window: float = 86400.0
    #: PageView ids one page load may bind (SPA route changes), counted per process.
    page_views_per_load: int = 100
    #: Largest ``value``/``predicted_ltv``/``net_revenue`` a browser may post.
    max_event_value: int = 1_000_000_000
    #: Outbox rows one client may add: held for consent (over ``held_ttl``), queued per hour.
    held_per_client: int = 1000
    pending_per_client: int = 5000
    #: Outbox rows browser events may fill in total, held and waiting for delivery.
    max_held_rows: int = 100_000
    max_pending_rows: int = 1_000_000

    # --- consent, test events, adapters -------------------------------------------------------
    consent: str = "granted"
    consent_cookie: str = "capib_consent"
    held_ttl: float = 86400.0
    scoped_test_events: bool = False
    auto_inject: bool = True
    advanced_matching: bool = False
    #: Data problems (a visitor's malformed e-mail...) raise instead of dropping the field with
    #: a warning: for the app's own tests, never in production.
    strict: bool = False

    # --- inspector and diagnostics ------------------------------------------------------------
    inspector: bool = False
    inspector_path: str = "/capi-bridge/inspector"

    def __post_init__(
        self, naming: Naming | None, outbox_folder: str | os.PathLike[str] | None
    ) -> None:
        name = naming or keyword_naming
        names = {f.name: name(f.name) for f in dataclasses.fields(self) if f.init}
        object.__setattr__(self, "_names", names)
        _read(self)
        if self.outbox_path is None and not self.outbox_url:
            path = default_outbox_path(self.pixel_ids, outbox_folder)
            object.__setattr__(self, "outbox_path", path)
            object.__setattr__(self, "outbox_default", True)
        settings_checks.check(self)
        settings_site_checks.check(self)

    def name_of(self, field: str) -> str:
        """The name the user wrote ``field`` under (``CAPI_BRIDGE_SECRET_KEY``, Flask's
        ``SECRET_KEY``, ``secret_key``...), for messages about a setting after start-up."""
        return self._names.get(field, field)

    @classmethod
    def default_of(cls, field: str) -> Any:
        """A setting's default, for messages and tools that need one without a Settings."""
        return next(f.default for f in dataclasses.fields(cls) if f.name == field)

    @property
    def pixel_ids(self) -> tuple[str, ...]:
        """The configured pixel ids, always as a tuple."""
        pixel_id = self.pixel_id
        return (pixel_id,) if isinstance(pixel_id, str) else tuple(pixel_id)

    @property
    def store_url(self) -> str:
        """Where the outbox is: ``outbox_url``, else ``sqlite:///`` + ``outbox_path``."""
        return self.outbox_url or f"sqlite:///{self.outbox_path}"

    @property
    def delivery_mode(self) -> str:
        """``delivery`` with "auto" resolved: "process" for a SQLite outbox on a POSIX host,
        "thread" otherwise (PostgreSQL: run ``capi-bridge worker`` anywhere, or threads)."""
        if self.delivery != "auto":
            return self.delivery
        return AUTO_DELIVERY if self.outbox_local_posix else "thread"

    @property
    def outbox_local_posix(self) -> bool:
        """A SQLite outbox on a POSIX host: one whose delivery process can be found by the
        ``flock``'ed files beside it (:mod:`capi_bridge.delivery.host_worker`)."""
        return not self.outbox_url and bool(self.outbox_path) and os.name == "posix"

    @property
    def consent_required(self) -> bool:
        """Whether events wait for the visitor's consent (``consent = "required"``)."""
        return self.consent == "required"

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_mapping(
        cls,
        mapping: Mapping[str, Any],
        prefix: str = ENV_PREFIX,
        *,
        naming: Naming | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings from ``PREFIX_NAME`` keys (Flask's ``app.config``, ``os.environ``).

        String values are read as README's table says (numbers, booleans, durations such as
        ``24h``, comma-separated lists). A key that starts with the prefix but names no setting
        is an error: a typo would otherwise be ignored. Errors name a value read from the
        mapping by its key and an override by its keyword, unless ``naming`` names them all:
        Django's adapter passes ``prefix=""`` and ``naming=dict_naming("CAPI_BRIDGE")``.
        """
        known = sorted(f.name for f in dataclasses.fields(cls) if f.init)
        keys: dict[str, str] = {}
        for key in mapping:
            if key.startswith(prefix):
                keys[key[len(prefix) :].lower()] = key
        for field, key in keys.items():
            if field not in known:
                close = difflib.get_close_matches(field, known, n=1)
                name = naming or prefix_naming(prefix)
                hint = f"did you mean {name(close[0])}?" if close else "remove it"
                raise ConfigError(
                    name(field) if naming else key, "is not a capi-bridge setting", hint
                )
        values: dict[str, Any] = {"pixel_id": "", "access_token": ""}
        values.update((field, mapping[key]) for field, key in keys.items())
        values.update(overrides)

        def written(field: str) -> str:
            return field if field in overrides else keys.get(field) or prefix + field.upper()

        return cls(**values, naming=naming or written)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``CAPI_BRIDGE_*`` environment variables."""
        return cls.from_mapping(os.environ if environ is None else environ, **overrides)
