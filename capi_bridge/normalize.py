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
import functools
import hashlib
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from capi_bridge import _geo
from capi_bridge.errors import InvalidUserData

__all__ = [
    "HASHED_FIELDS",
    "PLAIN_FIELDS",
    "hash_user_data",
    "is_hashed",
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

# The whitespace JavaScript's ``\s`` and ``trim()`` know. The pixel normalizes with these, so using
# the same set (rather than Python's, which adds \x1c-\x1f and \x85 and lacks \ufeff) keeps browser
# and server hashes equal.
_JS_SPACE_CHARS = (
    "\t\n\v\f\r \u00a0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_JS_SPACE = re.compile(f"[{_JS_SPACE_CHARS}]+")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_HAS_CONTENT = re.compile(r"[^\W_]")  # a letter or digit in any script
_ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_MAX_SHOWN = 60


def is_hashed(value: str) -> bool:
    """Whether ``value`` is already a SHA-256 hex digest (64 hex digits, any case, any padding).

    A 32-hex (MD5) string is *not* taken as hashed, unlike in the Business SDK: Meta matches only
    SHA-256, so an MD5 passed through unchanged can never match.
    """
    return _SHA256.fullmatch(value.strip(_JS_SPACE_CHARS)) is not None


def sha256_hex(text: str) -> str:
    """The lowercase hex SHA-256 of ``text`` encoded as UTF-8, as Meta documents."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    if not text or (field != "external_id" and not _HAS_CONTENT.search(text)):
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
    if isinstance(value, datetime.date) and field == "db":
        value = value.strftime("%Y%m%d")
    if not isinstance(value, str):
        raise InvalidUserData(
            field,
            f"expected a string (or a list of strings), got {type(value).__name__}: pass it as "
            "text, since numbers lose leading zeros",
        )
    text = value.strip(_JS_SPACE_CHARS)
    if _SHA256.fullmatch(text):
        return text.lower()
    normalized = normalize(field, text, country=hint)
    return sha256_hex(normalized) if normalized else None


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


# --------------------------------------------------------------------------------------------
# Shared helpers


def masked(text: str) -> str:
    """``text`` for an error message, masked: its shape, never its value (letters become
    ``x``, digits ``9``; spaces and punctuation stay, so ``'xxxx xxx@xxxxx.xx'`` still shows
    why it is no e-mail address), quoted and cut short. An error about a visitor's value ends
    up in the app's tracebacks and logs, where raw personal data must never be."""
    shape = "".join(
        "x" if ch.isalpha() else "9" if ch.isdigit() else ch if ch.isprintable() else "?"
        for ch in text[:_MAX_SHOWN]
    )
    return repr(shape + ("..." if len(text) > _MAX_SHOWN else ""))


_show = masked


def _fold(text: str) -> str:
    """Lowercase ASCII letters only, accents removed: the key the place-name tables use."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return _NOT_A_TO_Z.sub("", decomposed)


_NOT_A_TO_Z = re.compile(r"[^a-z]+")


@functools.lru_cache(maxsize=1024)
def _resolve_country(text: str) -> str | None:
    """The alpha-2 code a country name or code certainly means; None if it is only a guess.

    Unlike the ``country`` field's own rule this refuses the Parameter Builder's "first two
    letters" fallback: ``"America"`` would become ``am`` (Armenia) and give every phone number
    Armenia's calling code.
    """
    folded = _fold(text)
    if len(folded) == 2:
        code = "gb" if folded == "uk" else folded
        return code if code in _geo.PHONE_PLANS else None
    return _COUNTRY_LOOKUP.exact_or_contained(folded)


class _NameLookup:
    """Place name -> two-letter code: exact name, exact alias, or the longest name inside.

    The Parameter Builder takes the *first* name found inside the value, in table order, so
    ``"Republic of Indonesia"`` hits its ``ind`` alias (India) first. The longest match fixes that
    and changes none of its test vectors.
    """

    def __init__(self, names: Mapping[str, str], aliases: Mapping[str, str], short: set[str]):
        self._names = dict(names)
        self._aliases = dict(aliases)
        eligible = [key for key in self._names if len(key) >= 4 or key in short]
        self._by_length = sorted(eligible, key=lambda key: (-len(key), key))

    def exact_or_contained(self, folded: str) -> str | None:
        code = self._names.get(folded) or self._aliases.get(folded)
        if code is not None:
            return code
        return next((self._names[key] for key in self._by_length if key in folded), None)


_COUNTRY_LOOKUP = _NameLookup(_geo.COUNTRY_NAMES, _geo.COUNTRY_EXACT_ALIASES, {"usa", "ind"})
_STATE_LOOKUP = _NameLookup({**_geo.CA_PROVINCES, **_geo.US_STATES}, {}, set())


# --------------------------------------------------------------------------------------------
# em

# Dot-atom local part and dot-separated hostname labels (RFC 5321/5322 without quoted strings or
# comments, which no real sign-up form produces). \w admits non-ASCII letters for internationalized
# addresses. Rejects "a", "a@b", "@b.c", "a..b@c.d", "324342@@@@bar.com" and any space.
_ATEXT = r"[\w!#$%&'*+/=?^`{|}~-]"
_LABEL = r"[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?"
_EMAIL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+{_LABEL}")


def _email(text: str, _country: str | None) -> str:
    """Trim and lowercase (Meta's rule), then check the shape, or the hash matches no one."""
    email = text.lower()
    local, _, _domain = email.rpartition("@")
    if len(email) > 254 or len(local) > 64 or not _EMAIL.fullmatch(email):
        raise InvalidUserData("em", f"{_show(text)} is not an email address")
    return email


# --------------------------------------------------------------------------------------------
# ph

_EXTENSION = re.compile(r"\s*(?:(?:ext|extn|extension|x)\.?|#)\s*\d{1,7}\s*$", re.IGNORECASE)
_LETTER = re.compile(r"[^\W\d_]")
_TRUNK_IN_PARENS = re.compile(r"\(\s*0\s*\)")
_NON_DIGITS = re.compile(r"[^0-9]+")
_MIN_PHONE_DIGITS = 7
_MAX_PHONE_DIGITS = 15  # E.164


def _phone(text: str, country: str | None) -> str:
    """Digits only, with the country calling code and without leading zeros.

    A leading ``+`` or ``00`` (or the country's own international prefix, such as ``011`` in the
    NANP) marks an international number. Otherwise a known country turns a national number into an
    international one (see :func:`_add_calling_code`); without a country, leading zeros are
    stripped as the Parameter Builder does, and the number is taken to carry its calling code.

    Departures from the Parameter Builder, which keeps every digit of anything: a trailing
    extension (``ext. 123``, ``x123``, ``#123``) is dropped rather than glued onto the number;
    letters are refused (``1-800-FLOWERS`` would become ``1800``, a number nobody has, and
    ``Tel: ...`` is not a phone number), and so are results shorter than 7 or longer than 15
    digits (``911``, two numbers run together). Digits from other scripts (Arabic-Indic, full
    width) are read as digits.
    """
    text = _EXTENSION.sub("", text)
    if _LETTER.search(text):
        raise InvalidUserData(
            "ph",
            f"{_show(text)} contains letters: pass the digits only (vanity numbers such as "
            "1-800-FLOWERS are not converted)",
        )
    international = text.startswith("+")
    if international:
        text = _TRUNK_IN_PARENS.sub("", text)  # "+44 (0)20 ..." writes the trunk 0 it drops
    if text.isascii():
        digits = _NON_DIGITS.sub("", text)
    else:  # Arabic-Indic, full-width... digits read as their values
        digits = "".join(str(unicodedata.decimal(char)) for char in text if char.isdecimal())
    if not digits.strip("0"):
        return ""  # "0000": nothing left, as in the Parameter Builder
    region, plan = _phone_plan(country) if country is not None else ("", None)
    idd = plan.international_prefix if plan is not None else None
    if not international and idd and digits.startswith(idd):
        digits, international = digits[len(idd) :], True
    elif not international and digits.startswith("00"):
        international = True
    if international:
        number = _international(digits.lstrip("0"), text)
    elif plan is None:
        number = digits.lstrip("0")
    else:
        number = _add_calling_code(digits, plan, region, text)
    if not _MIN_PHONE_DIGITS <= len(number) <= _MAX_PHONE_DIGITS:
        raise InvalidUserData(
            "ph",
            f"{_show(text)} has {len(number)} digits; a phone number with its country code has "
            f"{_MIN_PHONE_DIGITS} to {_MAX_PHONE_DIGITS}",
        )
    return number


def _phone_plan(country: str) -> tuple[str, _geo.PhonePlan]:
    code = _resolve_country(country)
    if code is None:
        raise InvalidUserData(
            "ph",
            f"country hint {_show(country)} is not a country this library knows: pass an ISO "
            "3166-1 alpha-2 code such as 'us'",
        )
    return code, _geo.PHONE_PLANS[code]


def _international(number: str, text: str) -> str:
    if not any(number[:size] in _geo.CALLING_CODES for size in (1, 2, 3)):
        raise InvalidUserData("ph", f"{_show(text)} does not start with a country calling code")
    return number


def _add_calling_code(digits: str, plan: _geo.PhonePlan, region: str, text: str) -> str:
    """Prefix a national number with its calling code; keep one that already has it.

    A trunk prefix (the ``0`` of ``020 7946 0958``, the ``1`` of ``1 650 555 1212``, Russia's
    ``8``) marks a national number: strip it once. Otherwise a number that starts with the calling
    code and whose rest is a valid national number for that country is already international
    (``442079460958`` for ``gb``); this also makes normalizing twice harmless. Anything else is a
    national number written without its trunk prefix; its length must fit the country's plan.
    """
    for trunk in plan.trunk_prefixes:
        if digits.startswith(trunk):
            return _national(digits[len(trunk) :], plan, region, text)
    rest = digits[len(plan.calling_code) :]
    if digits.startswith(plan.calling_code) and _is_national(rest, plan):
        return digits
    return _national(digits, plan, region, text)


def _national(nsn: str, plan: _geo.PhonePlan, region: str, text: str) -> str:
    """``nsn`` with its calling code, if it is a possible national number of ``region``.

    Checking it against the plan (libphonenumber's possible lengths and general pattern) keeps a
    7-digit US number without its area code from being sent as 1 + 7 digits, and guarantees the
    result reads back as international, so normalizing it again changes nothing.
    """
    if not _is_national(nsn, plan):
        lengths = ", ".join(str(n) for n in plan.national_lengths)
        raise InvalidUserData(
            "ph",
            f"{_show(text)} is not a valid phone number for {region.upper()} (a national number "
            f"there has {lengths} digits); write a foreign number with a leading +",
        )
    return plan.calling_code + nsn


def _is_national(nsn: str, plan: _geo.PhonePlan) -> bool:
    pattern = _compiled(plan.national_pattern)
    return len(nsn) in plan.national_lengths and pattern.fullmatch(nsn) is not None


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


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
# ct

_NOT_LATIN_ALNUM = re.compile(r"[^a-zA-Z0-9]+")


def _city(text: str, _country: str | None) -> str:
    """Keep ``a-z0-9`` only (``San José`` -> ``sanjos``), starting with a letter.

    This is the Parameter Builder's and the pixel's rule, kept to the letter because the pixel's
    hash is the one Meta already holds for the same visitor. A city written without any Latin
    letter (``Москва``) or starting with a digit cannot be expressed and raises.
    """
    city = _NOT_LATIN_ALNUM.sub("", text).lower()
    if not city:
        raise InvalidUserData(
            "ct", f"{_show(text)} has no Latin letters (Meta's pixel drops all others)"
        )
    if not city[0].isalpha():
        raise InvalidUserData("ct", f"{_show(text)} does not start with a letter")
    return city


# --------------------------------------------------------------------------------------------
# st, country


def _state(text: str, _country: str | None) -> str:
    """Two-letter code: US state and Canadian province names mapped, anything else cut to two.

    ``California`` -> ``ca``, ``N.Y.`` -> ``ny``, ``British Columbia`` -> ``bc``; a name found
    inside a longer value counts (``NewYorkCity`` -> ``ny``). Other values keep their first two
    letters, the Parameter Builder's rule, which Meta's matching follows for states outside the US
    (``Tex.`` -> ``te``, ``Carolina`` -> ``ca``). Accents are folded before lookup (``Québec`` ->
    ``qc``; the Parameter Builder drops the letter and gives ``qu``).
    """
    return _two_letters("st", text, _STATE_LOOKUP)


def _country(text: str, _country: str | None) -> str:
    """ISO 3166-1 alpha-2 code from a code, a name or an alias (``United States``, ``USA`` -> us).

    Kept exactly as the Parameter Builder has it where its tests pin it down, odd cases included:
    a two-letter value is taken as is (``U.K.`` -> ``uk``, not ``gb``), and an unknown name keeps
    its first two letters (``xyz`` -> ``xy``, ``Ger.`` -> ``ge``). Beyond it: alpha-3 codes
    (``DEU`` -> ``de``), the ISO official and common names, a few colloquial names (``England``
    -> ``gb``), and accent folding (``Côte d'Ivoire`` -> ``ci``).
    """
    return _two_letters("country", text, _COUNTRY_LOOKUP)


def _two_letters(field: str, text: str, lookup: _NameLookup) -> str:
    folded = _fold(text)
    if not folded:
        raise InvalidUserData(field, f"{_show(text)} has no Latin letters")
    if len(folded) <= 2:
        return folded
    return (lookup.exact_or_contained(folded) or folded)[:2]


# --------------------------------------------------------------------------------------------
# zp

_NINE_DIGITS = re.compile(r"[0-9]{9}")
# Countries and territories that use US ZIP codes, where a bare 9-digit code is ZIP+4.
_US_ZIP_COUNTRIES = frozenset({"us", "pr", "vi", "gu", "as", "mp", "um", "fm", "mh", "pw"})


def _zip(text: str, country: str | None) -> str:
    """Lowercase, the part before the first ``-``, no whitespace; a US ZIP+4 cut to 5 digits.

    Meta asks for "no spaces" (``SW1A 1AA`` -> ``sw1a1aa``); the Parameter Builder keeps inner
    spaces (``A1 B2`` -> ``a1 b2``), so here Meta's documentation wins. Nine bare digits are a
    ZIP+4 without its dash (``940251234`` -> ``94025``) unless the country is known to be one
    without US ZIP codes.
    """
    code = _JS_SPACE.sub("", text.lower().split("-", 1)[0])
    if len(code) < 2:
        raise InvalidUserData(
            "zp", f"{_show(text)} is not a postal code (nothing usable before the first '-')"
        )
    if _NINE_DIGITS.fullmatch(code) and _uses_us_zip(country):
        return code[:5]
    return code


def _uses_us_zip(country: str | None) -> bool:
    code = _resolve_country(country) if country is not None else None
    return code is None or code in _US_ZIP_COUNTRIES


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
# db

_DIGIT_GROUP = re.compile(r"[0-9]+")
_WORD = re.compile(r"[^\W\d_]+")
_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_MIN_BIRTH_YEAR = 1800


def _date_of_birth(text: str, _country: str | None) -> str:
    """``YYYYMMDD`` from the usual ways of writing a date.

    Numeric dates follow the Parameter Builder: the first three digit groups are read as a date,
    a group above 31 being the year and one above 12 the day, and ambiguous ones month first
    (``02-01-1990`` -> ``19900201``); a lone 8-digit group is ``YYYYMMDD``. Beyond it, a date
    with an English month name (``December 31, 1990``, ``31 Dec 1990``) is read too, and the
    result must be a real calendar date (the Parameter Builder passes ``02-29-1900`` and any
    8 digits). Years run from 1800 to next year, as in the Parameter Builder.
    """
    groups = _DIGIT_GROUP.findall(text)
    if len(groups) >= 3:
        year, month, day = _year_month_day(int(groups[0]), int(groups[1]), int(groups[2]))
    elif len(groups) == 2:
        year, month, day = _with_month_name(text, groups)
    elif len(groups) == 1 and len(groups[0]) == 8:
        year, month, day = int(groups[0][:4]), int(groups[0][4:6]), int(groups[0][6:])
    else:
        raise InvalidUserData("db", f"{_show(text)} is not a date of birth")
    return _checked_date(text, year, month, day)


def _year_month_day(n1: int, n2: int, n3: int) -> tuple[int, int, int]:
    """The Parameter Builder's inference, kept identical so both read a date the same way."""
    if n1 > 31:
        return (n1, n3, n2) if n2 > 12 else (n1, n2, n3)
    if n2 > 31:
        return (n2, n1, n3) if n3 > 12 else (n2, n3, n1)
    return (n3, n2, n1) if n1 > 12 else (n3, n1, n2)


def _with_month_name(text: str, groups: list[str]) -> tuple[int, int, int]:
    months = {_MONTHS[word] for word in _WORD.findall(text.lower()) if word in _MONTHS}
    years = [group for group in groups if len(group) == 4]
    if len(months) != 1 or len(years) != 1:
        raise InvalidUserData(
            "db", f"{_show(text)} is not a date of birth (expected a day, a month and a year)"
        )
    day = groups[1] if groups[0] == years[0] else groups[0]
    return int(years[0]), months.pop(), int(day)


def _checked_date(text: str, year: int, month: int, day: int) -> str:
    last_year = datetime.date.today().year + 1
    if not _MIN_BIRTH_YEAR <= year <= last_year:
        raise InvalidUserData(
            "db",
            f"{_show(text)}: its year is outside {_MIN_BIRTH_YEAR}..{last_year} (write the "
            "year with four digits)",
        )
    try:
        datetime.date(year, month, day)
    except ValueError:
        raise InvalidUserData(
            "db", f"{_show(text)} is not a real date (no such day in the month it was read as)"
        ) from None
    return f"{year:04d}{month:02d}{day:02d}"


# --------------------------------------------------------------------------------------------
# external_id


def _external_id(text: str, _country: str | None) -> str:
    """Lowercase with every whitespace character removed: exactly what the pixel hashes.

    The pixel hashes ``external_id`` after this transformation, so the server must too, or the
    same visitor carries two different ids. (The Business SDK sends it raw.)
    """
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
