"""Catching ERROR log lines: bad input must never produce one (anyone could fill the log)."""

from __future__ import annotations

import logging
from types import TracebackType


class ErrorRecords(logging.Handler):
    """The ERROR (and worse) records any logger emits while the ``with`` block runs."""

    def __init__(self, logger: str = "") -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self._logger = logging.getLogger(logger)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def messages(self) -> list[str]:
        return [record.getMessage() for record in self.records]

    def __enter__(self) -> ErrorRecords:
        self._logger.addHandler(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._logger.removeHandler(self)
