"""Delivery: the outbox stores, the dispatcher, the retry policy and how a reply is settled.

Everything that touches the outbox's storage is in this package, behind one interface
(:class:`~capi_bridge.delivery.store.Store`): the SQLite store for one host, the PostgreSQL
store for several. Nothing outside it writes SQL for the outbox; :func:`open_store` picks the
store from ``outbox_url``. Imports point inward: this package imports the core (settings,
events, observations, the Graph client) and nothing of the adapters or the tools.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from capi_bridge.delivery.store import Store
    from capi_bridge.settings import Settings


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///path`` URL (``sqlite:////abs/path`` for an absolute one, as
    SQLAlchemy writes them), or None for another scheme."""
    if not url.startswith("sqlite:///"):
        return None
    return url[len("sqlite:///") :]


def open_store(
    url: str,
    *,
    schema: str = "capi_bridge",
    synchronous: str = "NORMAL",
    create: bool = True,
    journal_bulk: bool = False,
) -> Store:
    """The store ``url`` names: ``sqlite:///file`` or ``postgresql://user:pass@host/db``.
    ``journal_bulk``: a worker process delivers (see ``SQLiteStore``).

    ``create=False`` (the CLI) opens an existing outbox only: a mistyped path or schema is an
    error, never a new, empty outbox. The PostgreSQL store is imported only when used, so
    psycopg is needed only by the sites that choose it.
    """
    from capi_bridge.delivery.store import StoreError

    path = sqlite_path(url)
    if path is not None:
        from capi_bridge.delivery.sqlite_store import SQLiteStore

        errors: tuple[type[BaseException], ...] = (OSError, *SQLiteStore.errors)
        try:
            return SQLiteStore(
                path, synchronous=synchronous, create=create, journal_bulk=journal_bulk
            )
        except errors as exc:
            raise StoreError(os.path.abspath(path), exc) from exc
    from capi_bridge.delivery.postgres_store import PostgresStore, redact

    errors = (OSError, *PostgresStore.errors)
    try:
        return PostgresStore(url, schema=schema, synchronous=synchronous, create=create)
    except errors as exc:
        raise StoreError(f"{redact(url)} (schema {schema})", exc) from exc


def store_for(settings: Settings, *, create: bool = True) -> Store:
    """The store ``settings`` configure (``outbox_url``, else ``outbox_path``)."""
    return open_store(
        settings.store_url,
        schema=settings.outbox_schema,
        synchronous=settings.outbox_synchronous,
        create=create,
        journal_bulk=settings.delivery_mode != "thread",
    )
