"""Place names: city (``ct``), state (``st``), country and postal code (``zp``) rules.

They share one idea, a place name folded to ASCII and looked up in the tables of ``_geo``
(exact name, alias, or the longest name found inside), and ``resolve_country`` is also the
country hint the phone and ZIP rules take, so it lives here rather than in normalize.py.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Mapping

from capi_bridge import _geo
from capi_bridge.errors import InvalidUserData
from capi_bridge.normalize_text import JS_SPACE as _JS_SPACE
from capi_bridge.normalize_text import masked as _show

__all__ = ["city", "country", "resolve_country", "state", "zip_code"]


def _fold(text: str) -> str:
    """Lowercase ASCII letters only, accents removed: the key the place-name tables use."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return _NOT_A_TO_Z.sub("", decomposed)


_NOT_A_TO_Z = re.compile(r"[^a-z]+")


@functools.lru_cache(maxsize=1024)
def resolve_country(text: str) -> str | None:
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
# ct

_NOT_LATIN_ALNUM = re.compile(r"[^a-zA-Z0-9]+")


def city(text: str, _country: str | None) -> str:
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


def state(text: str, _country: str | None) -> str:
    """Two-letter code: US state and Canadian province names mapped, anything else cut to two.

    ``California`` -> ``ca``, ``N.Y.`` -> ``ny``, ``British Columbia`` -> ``bc``; a name found
    inside a longer value counts (``NewYorkCity`` -> ``ny``). Other values keep their first two
    letters, the Parameter Builder's rule, which Meta's matching follows for states outside the US
    (``Tex.`` -> ``te``, ``Carolina`` -> ``ca``). Accents are folded before lookup (``Québec`` ->
    ``qc``; the Parameter Builder drops the letter and gives ``qu``).
    """
    return _two_letters("st", text, _STATE_LOOKUP)


def country(text: str, _country: str | None) -> str:
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


def zip_code(text: str, country: str | None) -> str:
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
    code = resolve_country(country) if country is not None else None
    return code is None or code in _US_ZIP_COUNTRIES
