"""The rules behind :class:`~capi_bridge.settings.Settings`: every value makes sense.

A value that would fail later fails here, at start-up: ``REQUEST_TIMEOUT=inf`` would stall
delivery for good, ``TOKEN_MAX_AGE=inf`` would turn every page into a 500, ``ENDPOINT_PATH=/``
would answer the home page with a 403, ``COOKIE_DOMAIN=com`` would keep every ``_fbp`` from
being set. Each rule raises a :class:`~capi_bridge.errors.ConfigError` that names the setting
the way the user wrote it (``Settings.name_of``) and says the fix; a secret's value is never
repeated in a message. The values arrive typed (``Settings`` reads strings first).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import unicodedata
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

from capi_bridge.durations import format_duration
from capi_bridge.errors import ConfigError

if TYPE_CHECKING:
    from capi_bridge.settings import Settings

#: The one rule for ``secret_key`` (the signer relies on it): long enough not to be guessed
#: offline from a signed token, which a key a person typed (``dev``) would allow.
MIN_SECRET_LENGTH = 32
#: ... and not a few characters repeated (``aaaa...``, ``0000...``).
MIN_SECRET_DISTINCT = 8

#: Straight and typographic quotes: a value pasted from a document or a quoted env line.
_QUOTES = frozenset("\"'`‘’‚‛“”„«»")


def fail(settings: Settings, field: str, problem: str, fix: str) -> NoReturn:
    """Raise the error for ``field``, named as the user wrote it."""
    raise ConfigError(settings.name_of(field), problem, fix, field=field)


#: (lowest, highest, lowest allowed, what the setting does) for every number setting.
_RANGES: dict[str, tuple[float, float, bool, str]] = {
    "request_timeout": (0, 300, False, "one Graph request; Meta answers within seconds"),
    "batch_size": (1, 1000, True, "events per Graph request; Meta takes at most 1000"),
    "linger": (0, 10, True, "how long a partial batch waits to fill; Meta wants events now"),
    "max_backoff": (1, 86400, True, "the longest wait between two retries"),
    "lease_seconds": (0, 3600, False, "how long one process holds a claimed batch"),
    "auth_pause": (0, 86400, False, "how long a pixel waits after Meta refused the token"),
    "close_timeout": (0, 3600, True, "how long the app's exit waits for delivery"),
    "retry_base": (0, 86400, False, "the first retry delay"),
    "dedup_window": (0, 30 * 86400, True, "how long a delivered event's key is remembered"),
    "token_max_age": (
        120,
        7 * 86400,
        True,
        "a page token's lifetime; pages refresh it a minute before it expires",
    ),
    "rate_limit": (1, 100_000, True, "events per minute one client may post"),
    "token_refresh_window": (
        120,
        30 * 86400,
        True,
        "how long after a page was served its token may be refreshed",
    ),
    "page_views_per_load": (1, 100_000, True, "PageViews one page load may bind"),
    "max_event_value": (1, 10**15, True, "the largest value a browser may post"),
    "held_per_client": (1, 10**7, True, "rows one client may hold for consent"),
    "pending_per_client": (1, 10**7, True, "rows one client may queue per hour"),
    "max_held_rows": (1, 10**9, True, "rows browser events may hold for consent"),
    "max_pending_rows": (1, 10**9, True, "rows browser events may queue for delivery"),
    "held_ttl": (0, 7 * 86400, False, "how long events wait for a visitor's consent"),
    "probe_interval": (0, 3600, False, "the longest wait between two tries of a failing pixel"),
}


def check(settings: Settings) -> None:
    """The account's and delivery's rules (the site's: :mod:`capi_bridge.settings_site_checks`);
    the first failure raises."""
    for rule in (
        _check_account,
        _check_ldu,
        _check_numbers,
        _check_outbox,
        _check_synchronous,
    ):
        rule(settings)


def _check_account(s: Settings) -> None:
    ids = s.pixel_ids
    if not ids:
        fail(
            s,
            "pixel_id",
            "no pixel id is set",
            "set it to your Meta Pixel (dataset) id, the number shown in Events Manager",
        )
    for pid in ids:
        if not pid.isascii() or not pid.isdigit():
            fail(
                s,
                "pixel_id",
                f"{pid!r} is not a pixel id (ASCII digits only)",
                "use the numeric id from Events Manager (several ids: separate with commas)",
            )
    if len(set(ids)) != len(ids):
        fail(s, "pixel_id", "a pixel id is listed twice", "list each pixel id once")
    if not s.access_token:
        fail(
            s,
            "access_token",
            "no Conversions API access token is set",
            "generate one in Events Manager > your pixel > Settings > Conversions API "
            "(a system-user token does not expire)",
        )
    _check_credential(s, "access_token", "the token alone, as Events Manager shows it")
    _check_credential(s, "app_secret", "the app secret alone, as your Meta app shows it")
    _check_credential(s, "test_event_code", "the code as Events Manager > Test events shows it")
    _check_credential(s, "partner_agent", "Meta's form name_major_minor, e.g. myplatform_1_0")
    if s.secret_key is not None:
        check_secret_key(s.secret_key, s.name_of("secret_key"))
    check_url(
        s,
        "graph_url",
        query=False,
        fix="leave it unset for Meta (https://graph.facebook.com) or point it at a fake",
    )
    if not re.fullmatch(r"v[0-9]+\.[0-9]+", s.api_version, re.ASCII):
        fail(
            s,
            "api_version",
            f"{s.api_version!r} is not a Graph API version",
            "use the form vNN.N, e.g. v26.0",
        )
    agent = s.partner_agent
    if len(agent) >= 23 or sum(ch.isalpha() for ch in agent) < 2:
        fail(
            s,
            "partner_agent",
            f"{agent!r} is not under 23 characters with two letters",
            "use Meta's form name_major_minor, e.g. myplatform_1_0",
        )


def check_secret_key(secret: str, setting: str) -> None:
    """The one rule for the key that signs page tokens and links (the CLI's links too)."""
    if len(secret) < MIN_SECRET_LENGTH:
        problem = f"the secret key has {len(secret)} characters, fewer than {MIN_SECRET_LENGTH}"
    elif len(set(secret)) < MIN_SECRET_DISTINCT:
        problem = "the secret key repeats a few characters"
    else:
        return
    problem += ": anyone who guesses it can sign page tokens and send conversions to your pixel"
    raise ConfigError(setting, problem, secret_key_fix(setting), field="secret_key")


def secret_key_fix(setting: str) -> str:
    """How to make a good key (for a short one here, a missing one in the signer)."""
    return (
        f"set {setting} to a random string of at least {MIN_SECRET_LENGTH} characters, the same "
        "on every server of the site, e.g. the output of "
        "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    )


def odd_characters(value: str) -> str | None:
    """What makes a pasted value unusable; a credential's own alphabet is Meta's business."""
    if any(ch.isspace() for ch in value):
        return "holds whitespace"
    if any(ch in _QUOTES for ch in value):
        return "holds quote characters"
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
        return "holds invisible control characters"
    return None


def _check_credential(s: Settings, field: str, what: str) -> None:
    value = getattr(s, field)
    if not value:
        return
    problem = "starts with 'Bearer '" if value[:7].lower() == "bearer " else odd_characters(value)
    if problem:
        fail(
            s,
            field,
            f"the value {problem}",
            f"set {what}: no 'Bearer ' prefix, quotes, spaces or line breaks (in an env file or "
            "a shell, quotes around a value are not part of it)",
        )


def check_url(s: Settings, field: str, *, query: bool, fix: str) -> None:
    url = getattr(s, field)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        host = parts.hostname or ""
        if parts.netloc.startswith("["):  # older Pythons do not check a bracketed address
            ipaddress.IPv6Address(host)
    except ValueError as exc:
        fail(s, field, f"{url!r} does not parse as a URL ({exc})", fix)
    if odd_characters(url):
        problem = odd_characters(url)
    elif parts.scheme not in ("http", "https") or not host:
        problem = "is not an http(s) URL with a host"
    elif parts.username is not None:
        problem = "holds a user name or password (they would end up in logs)"
    elif not query and (parts.query or parts.fragment):
        problem = "has a query or fragment"
    else:
        return
    fail(s, field, f"{url!r} {problem}", fix)


def _check_ldu(s: Settings) -> None:
    options = s.data_processing_options
    if any(opt != "LDU" for opt in options):
        fail(
            s,
            "data_processing_options",
            f"{list(options)!r} holds an unknown option",
            "use LDU (Limited Data Use) or leave it empty",
        )
    country, state = s.data_processing_options_country, s.data_processing_options_state
    if country is not None and country not in (0, 1):
        fail(
            s,
            "data_processing_options_country",
            f"{country} is not 0 (geolocate) or 1 (USA)",
            "set 0 to let Meta geolocate, or 1 for the USA",
        )
    if state is not None and state not in (0, *range(1000, 1014)):
        fail(
            s,
            "data_processing_options_state",
            f"{state} is not a state code Meta knows",
            "use 0 (geolocate) or 1000 (California) ... 1013 (Rhode Island)",
        )
    if (country is None) != (state is None):
        fail(
            s,
            "data_processing_options_state",
            "country and state must be set together",
            "set both (e.g. 0 and 0 to geolocate) or neither",
        )
    if not options and country is not None:
        fail(
            s,
            "data_processing_options",
            "a country/state is set but LDU is not enabled",
            f"set {s.name_of('data_processing_options')}=LDU or drop the country and state",
        )


def _check_numbers(s: Settings) -> None:
    for field, (low, high, low_ok, what) in _RANGES.items():
        value = getattr(s, field)
        if value < low or value > high or (value == low and not low_ok):
            duration = isinstance(value, float)
            show = format_duration if duration else str
            bounds = f"{'from' if low_ok else 'more than'} {show(low)} to {show(high)}"
            fail(s, field, f"{show(value)} is out of range ({what})", f"use {bounds}")
    if s.retry_base > s.max_backoff:
        fail(
            s,
            "retry_base",
            f"the first retry delay is above {s.name_of('max_backoff')}",
            f"make it at most {format_duration(s.max_backoff)}",
        )
    if s.request_timeout >= s.lease_seconds:
        fail(
            s,
            "request_timeout",
            f"{format_duration(s.request_timeout)} is not shorter than "
            f"{s.name_of('lease_seconds')} ({format_duration(s.lease_seconds)})",
            "a request outliving its lease lets another process send the same batch again: "
            f"keep it under {format_duration(s.lease_seconds)}",
        )
    if s.token_refresh_window < s.token_max_age:
        fail(
            s,
            "token_refresh_window",
            f"{format_duration(s.token_refresh_window)} is shorter than "
            f"{s.name_of('token_max_age')} ({format_duration(s.token_max_age)})",
            "pages refresh their token shortly before it expires: make the window at least "
            f"{format_duration(s.token_max_age)} (and as long as your HTML may stay cached)",
        )


def _check_outbox(s: Settings) -> None:
    """The outbox: ``outbox_url`` when set (SQLite file or PostgreSQL), else ``outbox_path``."""
    if not s.outbox_url:
        path = s.outbox_path or ""
        if s.outbox_default:
            _make_default_folder(s, path)
        _check_sqlite_path(s, "outbox_path", path)
    elif s.outbox_url.startswith("sqlite:///"):
        _check_sqlite_path(s, "outbox_url", s.outbox_url[len("sqlite:///") :])
    elif s.outbox_url.split("://", 1)[0] in ("postgresql", "postgres"):
        missing = [m for m in ("psycopg", "psycopg_pool") if importlib.util.find_spec(m) is None]
        if missing:
            fail(
                s,
                "outbox_url",
                f"a PostgreSQL outbox needs {' and '.join(missing)}, which is not installed",
                "pip install 'capi-bridge[postgres]' (psycopg 3 and psycopg-pool)",
            )
    else:  # never echo the URL: it may hold a password
        fail(
            s,
            "outbox_url",
            "it is neither a sqlite:/// nor a postgresql:// URL",
            "use sqlite:///path/to/outbox.sqlite3 (one host) or "
            "postgresql://user:password@host:5432/database (several hosts)",
        )
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", s.outbox_schema):
        fail(
            s,
            "outbox_schema",
            f"{s.outbox_schema!r} is not a PostgreSQL schema name",
            "use letters, digits and '_', at most 63 (default capi_bridge)",
        )


def _make_default_folder(s: Settings, path: str) -> None:
    """The default location's folder is ours to create (private: the outbox holds events)."""
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    except OSError as exc:
        fail(
            s,
            "outbox_path",
            f"is not set, and the default location {path!r} cannot be created "
            f"({exc.strerror or exc})",
            f"set it to a file in a folder the app's user can write (or {s.name_of('outbox_url')} "
            "to a PostgreSQL database)",
        )


def _check_sqlite_path(s: Settings, field: str, path: str) -> None:
    problem = _outbox_path_problem(path)
    if problem:
        fail(s, field, f"{path!r} {problem[0]}", problem[1])


def _outbox_path_problem(path: str) -> tuple[str, str] | None:
    """What keeps SQLite from using ``path`` as the outbox (checked once: the app opens it
    later, in whichever process sends first, where a raw OSError would say much less)."""
    if "\0" in path or path == ":memory:" or path.startswith("file:"):
        return "is not a file path", "give a file path: the outbox must outlive the process"
    if os.path.isdir(path):
        return "is a folder", f"name a file in it, e.g. {os.path.join(path, 'outbox.sqlite3')}"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"is in {folder}, which does not exist", "create the folder, or choose another"
    if os.path.exists(path) and not os.path.isfile(path):
        return "is not a regular file", "give the path of an SQLite file, or of a new one"
    writable = os.access(folder, os.W_OK | os.X_OK) and (
        not os.path.exists(path) or os.access(path, os.R_OK | os.W_OK)
    )
    if not writable:
        return (
            "cannot be written by the app's user",
            "SQLite writes the file and two companions (-wal, -shm) in its folder: choose a "
            "folder the app's user can write",
        )
    return None


def _check_synchronous(s: Settings) -> None:
    if s.delivery not in ("auto", "process", "thread", "worker"):
        fail(
            s,
            "delivery",
            f"{s.delivery!r} is not auto, process, thread or worker",
            "use auto (the default: process where it can run, else thread), process (the app "
            "starts one delivery process per host), thread (each app process delivers in a "
            "thread) or worker (you run `capi-bridge worker` beside the app)",
        )
    if s.delivery == "process" and not s.outbox_local_posix:
        fail(
            s,
            "delivery",
            "process needs a SQLite outbox on a POSIX host (its locks are files beside it)",
            "use worker (run `capi-bridge worker` on any host) or thread with "
            f"{s.name_of('outbox_url')}, or auto",
        )
    if s.outbox_synchronous not in ("NORMAL", "FULL"):
        fail(
            s,
            "outbox_synchronous",
            f"{s.outbox_synchronous!r} is not NORMAL or FULL",
            "use NORMAL (survives a crash of the app; a power loss may lose the last commits) "
            "or FULL (fsync on every enqueue, several times slower)",
        )
