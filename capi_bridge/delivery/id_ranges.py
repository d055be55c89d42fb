"""Selecting a set of outbox ids in few statements: id ranges, then ``IN`` lists.

Shared by the SQLite store's leases, fast path and admin; kept apart so each can import it
without importing the others.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

_CHUNK = 500  # ids per "IN (...)" statement, well under SQLite's variable limit
_MIN_RUN = 3  # consecutive ids worth a range of their own rather than places in an IN list


def chunks(ids: Sequence[int]) -> Iterator[tuple[str, Sequence[int]]]:
    """``(placeholders, ids)`` slices for ``WHERE id IN (...)`` statements."""
    for start in range(0, len(ids), _CHUNK):
        part = ids[start : start + _CHUNK]
        yield ",".join("?" * len(part)), part


def id_sets(ids: Sequence[int]) -> Iterator[tuple[str, list[int]]]:
    """``(condition, params)`` pairs that together select exactly ``ids`` from ``outbox``.

    A claim takes rows in (due, id) order, and rows stored one after another have consecutive
    ids, so a batch is nearly always one run of consecutive ids or a few. Each run of at least
    ``_MIN_RUN`` ids becomes one ``id BETWEEN ? AND ?`` (one seek and a scan of the rowid
    tree, two parameters, whatever its length); the ids left over go in ``id IN (...)`` lists.
    A run is consecutive integers all in ``ids``, so a range never selects a row not asked for;
    the owner check the statements add keeps them to rows the caller still holds.
    """
    ordered = sorted(set(ids))
    singles: list[int] = []
    start = 0
    for end in range(1, len(ordered) + 1):
        if end < len(ordered) and ordered[end] == ordered[end - 1] + 1:
            continue
        if end - start >= _MIN_RUN:
            yield "id BETWEEN ? AND ?", [ordered[start], ordered[end - 1]]
        else:
            singles.extend(ordered[start:end])
        start = end
    for marks, part in chunks(singles):
        yield f"id IN ({marks})", list(part)
