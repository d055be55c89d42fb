"""Phone numbers (``ph``): digits with the country calling code, checked against the
country's numbering plan.

The longest rule by far, with its own tables (``_geo.PHONE_PLANS``) and its own departures from
the Parameter Builder, so it reads best alone.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from capi_bridge import _geo
from capi_bridge.errors import InvalidUserData
from capi_bridge.normalize_places import resolve_country as _resolve_country
from capi_bridge.normalize_text import masked as _show

__all__ = ["phone"]


_EXTENSION = re.compile(r"\s*(?:(?:ext|extn|extension|x)\.?|#)\s*\d{1,7}\s*$", re.IGNORECASE)
_LETTER = re.compile(r"[^\W\d_]")
_TRUNK_IN_PARENS = re.compile(r"\(\s*0\s*\)")
_NON_DIGITS = re.compile(r"[^0-9]+")
_MIN_PHONE_DIGITS = 7
_MAX_PHONE_DIGITS = 15  # E.164


def phone(text: str, country: str | None) -> str:
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
