"""Waiting for something that must happen, without turning the clock into an assertion.

A test that needs another thread, process or browser to reach a state polls for that state;
the deadline only bounds the wait (a hung test fails, naming what never happened), it is
never what the test asserts: on a loaded machine the wait is longer, the outcome the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def until(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    step: Callable[[], object] = lambda: time.sleep(0.02),
) -> T:
    """``condition()``'s first truthy value; between tries ``step()`` (a short sleep, or a
    bounded wait on the thing itself). Fails the test with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what} (waited {timeout:g} s)")
        step()
