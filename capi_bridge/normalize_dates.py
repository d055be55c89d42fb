"""Dates of birth (``db``): ``YYYYMMDD`` from the usual ways of writing a date.

Kept apart from normalize.py because reading a date (digit groups, month names, the Parameter
Builder's inference, calendar checks) is an idea of its own.
"""

from __future__ import annotations

import datetime
import re

from capi_bridge.errors import InvalidUserData
from capi_bridge.normalize_text import masked as _show

__all__ = ["date_of_birth"]


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


def date_of_birth(text: str, _country: str | None) -> str:
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
