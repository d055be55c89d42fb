"""Normalize and SHA-256 hash customer information exactly the way Meta matches it.

Meta matches a hashed value only if it was normalized the same way before hashing: ``JOHN@x.com``
and ``john@x.com`` hash to different strings, and one of them matches nobody. A wrong hash fails
silently (the event is accepted, it just never matches), so this module would rather raise
:class:`~capi_bridge.errors.InvalidUserData` than guess.

The rules follow, in this order of authority: Meta's customer-information documentation and its
worked examples, then Meta's CAPI Parameter Builder (the newest reference code, which the pixel
also follows), and only then the Python Business SDK, which is wrong in several places (dates are
not reformatted, state and country names are not mapped, ``external_id`` is sent unhashed, MD5
strings pass as "already hashed"). Where this module deliberately departs from the Parameter
Builder, the rule's docstring says so and why.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from capi_bridge.errors import InvalidUserData
from capi_bridge.normalize_dates import date_of_birth as _date_of_birth
from capi_bridge.normalize_phone import phone as _phone
from capi_bridge.normalize_places import city as _city
from capi_bridge.normalize_places import country as _country
from capi_bridge.normalize_places import resolve_country as _resolve_country
from capi_bridge.normalize_places import state as _state
from capi_bridge.normalize_places import zip_code as _zip
from capi_bridge.normalize_text import JS_SPACE as _JS_SPACE
from capi_bridge.normalize_text import JS_SPACE_CHARS as _JS_SPACE_CHARS
from capi_bridge.normalize_text import masked

__all__ = [
    "HASHED_FIELDS",
    "PLAIN_FIELDS",
    "hash_user_data",
    "is_hashed",
    "masked",
    "normalize",
    "sha256_hex",
]

#: Customer-information keys Meta requires (or recommends, for ``external_id``) to be hashed.
HASHED_FIELDS: frozenset[str] = frozenset(
    {"em", "ph", "fn", "ln", "db", "ge", "ct", "st", "zp", "country", "external_id"}
)

#: Customer-information keys Meta says must *not* be hashed; sent as given (only trimmed).
PLAIN_FIELDS: frozenset[str] = frozenset(
    {
        "client_ip_address",
        "client_user_agent",
        "fbc",
        "fbp",
        "subscription_id",
        "fb_login_id",
        "lead_id",
        "anon_id",
        "madid",
        "page_id",
        "page_scoped_user_id",
        "ctwa_clid",
        "ig_account_id",
        "ig_sid",
    }
)

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_HAS_CONTENT = re.compile(r"[^\W_]")  # a letter or digit in any script
_ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def is_hashed(value: str) -> bool:
    """Whether ``value`` is already a SHA-256 hex digest (64 hex digits, any case, any padding).

    A 32-hex (MD5) string is *not* taken as hashed, unlike in the Business SDK: Meta matches only
    SHA-256, so an MD5 passed through unchanged can never match.
    """
    return _SHA256.fullmatch(value.strip(_JS_SPACE_CHARS)) is not None


def sha256_hex(text: str) -> str:
    """The lowercase hex SHA-256 of ``text`` encoded as UTF-8, as Meta documents."""
    return _sha256(text.encode("utf-8")).hexdigest()


_sha256 = hashlib.sha256


def normalize(field: str, value: str, *, country: str | None = None) -> str:
    """The normalized, not yet hashed, form of one customer-information ``value``.

    ``country`` (an ISO alpha-2 code or a country name) tells ``ph`` which calling code a national
    number belongs to, and ``zp`` whether a 9-digit code is a US ZIP+4. An already hashed value is
    returned lowercased; a plain field (``fbc``, ``client_ip_address``...) only trimmed, since Meta
    reads those as given and ``fbc``'s click id is case-sensitive. An empty result means the value
    carried nothing to send (``"!!!"`` as a first name). Raises :class:`InvalidUserData` for an
    unknown field, a value that cannot be normalized, or a ``country`` that names no country
    when a phone number needs it (a wrong calling code would be a silently wrong hash).
    """
    if field in PLAIN_FIELDS:
        return value.strip()
    rule = _RULES.get(field)
    if rule is None:
        known = ", ".join(sorted(HASHED_FIELDS | PLAIN_FIELDS))
        raise InvalidUserData(field, f"is not a customer information parameter (known: {known})")
    text = value.strip(_JS_SPACE_CHARS)
    if _SHA256.fullmatch(text):
        return text.lower()
    return _by_rule(field, rule, text, country)


def _by_rule(
    field: str, rule: Callable[[str, str | None], str], text: str, country: str | None
) -> str:
    """``rule``'s normal form of ``text`` (trimmed, not a hash): :func:`normalize`'s last
    step, apart so :func:`_hash_one` (which has trimmed and checked for a hash already)
    does not do those twice."""
    if not text:
        return ""
    # isalnum() first: a name or a word is letters only, and then holds a letter for sure.
    if field != "external_id" and not (text.isalnum() or _HAS_CONTENT.search(text)):
        return ""
    return rule(text, country)


def hash_user_data(mapping: Mapping[str, Any], *, country: str | None = None) -> dict[str, Any]:
    """The wire ``user_data``: customer information normalized and hashed, the rest as given.

    Hashed fields become lowercase SHA-256 hex (a list stays a list, deduplicated in its original
    order); plain fields are trimmed but otherwise untouched (integers such as ``fb_login_id``
    stay integers); ``None``, empty strings, empty lists and values that normalize to nothing are
    dropped; unknown keys pass through for the schema guard to report. The phone's country comes
    from ``country`` or else from the mapping's own ``country`` value.
    """
    hint = country if country is not None else _hint_from_value(mapping.get("country"))
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if value is None or value == "" or value == [] or value == ():
            continue
        if key in HASHED_FIELDS:
            hashed = _hash_field(key, value, hint)
            if hashed:
                out[key] = hashed
        elif key in PLAIN_FIELDS and isinstance(value, str):
            if value.strip():
                out[key] = value.strip()
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# hash_user_data helpers


def _hash_field(field: str, value: Any, hint: str | None) -> str | list[str] | None:
    """One hashed field's wire value: a hash, a list of distinct hashes, or None to drop it."""
    if isinstance(value, (list, tuple)):
        hashes = (_hash_one(field, item, hint) for item in value if item is not None)
        distinct = list(dict.fromkeys(h for h in hashes if h))
        return distinct or None
    return _hash_one(field, value, hint)


def _hash_one(field: str, value: Any, hint: str | None) -> str | None:
    """One hashed field's value hashed (None: nothing to send). ``field`` is one of
    :data:`HASHED_FIELDS`. Runs for every such value of every event: its steps are
    :func:`normalize`'s, written out once each."""
    if value.__class__ is not str:
        if isinstance(value, datetime.date) and field == "db":
            value = value.strftime("%Y%m%d")
        elif not isinstance(value, str):
            raise InvalidUserData(
                field,
                f"expected a string (or a list of strings), got {type(value).__name__}: pass "
                "it as text, since numbers lose leading zeros",
            )
    text: str = value.strip(_JS_SPACE_CHARS)
    if len(text) == 64 and _SHA256.fullmatch(text):
        return text.lower()
    normalized = _by_rule(field, _RULES[field], text, hint)
    return _sha256(normalized.encode("utf-8")).hexdigest() if normalized else None


def _hint_from_value(value: Any) -> str | None:
    """The country hint a mapping's own ``country`` value gives; None if it gives none.

    Lenient on purpose: a customer's unrecognizable country must not make their phone number
    fail; the number is then read as already carrying its calling code, and the ``country``
    field itself follows its own rule.
    """
    if isinstance(value, (list, tuple)):
        value = next((item for item in value if isinstance(item, str) and item.strip()), None)
    if not isinstance(value, str) or is_hashed(value):
        return None
    return _resolve_country(value)


_show = masked


# --------------------------------------------------------------------------------------------
# em

# Dot-atom local part and dot-separated hostname labels (RFC 5321/5322 without quoted strings or
# comments, which no real sign-up form produces). \w admits non-ASCII letters for internationalized
# addresses. Rejects "a", "a@b", "@b.c", "a..b@c.d", "324342@@@@bar.com" and any space.
_ATEXT = r"[\w!#$%&'*+/=?^`{|}~-]"
_LABEL = r"[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?"
_EMAIL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+{_LABEL}")
# The same pattern for ASCII text, where \w is exactly [A-Za-z0-9_]: written with plain
# character classes it runs in a third of the time (no alternation tried per character).
_ASCII_ATEXT = r"[A-Za-z0-9_!#$%&'*+/=?^`{|}~-]"
_ASCII_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ASCII_EMAIL = re.compile(
    rf"{_ASCII_ATEXT}+(?:\.{_ASCII_ATEXT}+)*@(?:{_ASCII_LABEL}\.)+{_ASCII_LABEL}"
)


def _email(text: str, _country: str | None) -> str:
    """Trim and lowercase (Meta's rule), then check the shape, or the hash matches no one."""
    email = text.lower()
    local, _, _domain = email.rpartition("@")
    shape = _ASCII_EMAIL if email.isascii() else _EMAIL
    if len(email) > 254 or len(local) > 64 or not shape.fullmatch(email):
        raise InvalidUserData("em", f"{_show(text)} is not an email address")
    return email


# --------------------------------------------------------------------------------------------
# fn, ln

# Invisible characters that copy-paste drags into form fields. ZWJ/ZWNJ are kept: they spell
# words in Persian and Indic scripts.
_INVISIBLE = frozenset(
    "\u00ad\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_DROPPED_CATEGORIES = frozenset({"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Zs", "Zl", "Zp", "Cc"})


def _name(text: str, _country: str | None) -> str:
    """Lowercase without whitespace or punctuation; letters of every script kept, composed (NFC).

    Meta's rule is "lowercase, no punctuation, special characters as UTF-8". The Parameter Builder
    removes ASCII punctuation only; this also removes Unicode punctuation, because phones type
    ``O’Connor`` with a typographic apostrophe and it must hash like ``O'Connor`` (so
    ``Mary–Jane`` gives ``maryjane`` where the Parameter Builder keeps the en dash). NFC makes a
    decomposed ``é`` hash like a composed one. Digits and symbols (emoji) are kept, as the
    Parameter Builder keeps them.
    """
    lowered = text.lower()
    if lowered.isascii():  # most names: one C-level pass, same rule (NFC is a no-op on ASCII)
        return lowered.translate(_ASCII_NAME_DROPS)
    kept = "".join(char for char in lowered if not _drops_from_name(char))
    return unicodedata.normalize("NFC", kept)


def _drops_from_name(char: str) -> bool:
    return (
        char in _ASCII_PUNCTUATION
        or char in _JS_SPACE_CHARS
        or char in _INVISIBLE
        or unicodedata.category(char) in _DROPPED_CATEGORIES
    )


#: The same rule as _drops_from_name, precomputed for ASCII text.
_ASCII_NAME_DROPS = {code: None for code in range(128) if _drops_from_name(chr(code))}


# --------------------------------------------------------------------------------------------
# ge

_MALE_WORDS = """
    man male boy gentleman guy sir mister mr son father dad daddy papa uncle nephew brother
    husband boyfriend groom widower king prince duke count emperor god lord lad fellow chap bloke
    dude he him his himself m
"""
_FEMALE_WORDS = """
    woman female girl lady miss ms mrs madam ma'am daughter mother mom mama mommy aunt niece
    sister wife girlfriend bride widow queen princess duchess countess empress goddess maiden lass
    gal chick dame belle she her hers herself f
"""
_MALE = frozenset(_MALE_WORDS.split())
_FEMALE = frozenset(_FEMALE_WORDS.split())


def _gender(text: str, _country: str | None) -> str:
    """``m`` or ``f`` from the Parameter Builder's word lists (``Male``, ``Boy``, ``ma'am``...)."""
    word = text.lower()
    if word in _MALE:
        return "m"
    if word in _FEMALE:
        return "f"
    raise InvalidUserData("ge", f"{_show(text)} is not a gender Meta accepts (m or f)")


# --------------------------------------------------------------------------------------------
# external_id


def _external_id(text: str, _country: str | None) -> str:
    """Lowercase with every whitespace character removed: exactly what the pixel hashes.

    The pixel hashes ``external_id`` after this transformation, so the server must too, or the
    same visitor carries two different ids. (The Business SDK sends it raw.)
    """
    if text.isprintable() and " " not in text:  # no whitespace to remove: every JS_SPACE
        return text.lower()  # character but the space is unprintable (Cc, Cf, Zs, Zl, Zp)
    return _JS_SPACE.sub("", text).lower()


_RULES: dict[str, Callable[[str, str | None], str]] = {
    "em": _email,
    "ph": _phone,
    "fn": _name,
    "ln": _name,
    "db": _date_of_birth,
    "ge": _gender,
    "ct": _city,
    "st": _state,
    "zp": _zip,
    "country": _country,
    "external_id": _external_id,
}
