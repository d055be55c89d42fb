"""Fixtures for the browser tests: the sites of sites.py, Chromium, fresh pages per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import chromium
from sites import Site, serve_site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with serve_site(tmp_path_factory.mktemp("site")) as made:
        yield made


@pytest.fixture(scope="module")
def consent_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A site with a consent banner: events wait, held in the outbox, for the visitor's yes."""
    with serve_site(tmp_path_factory.mktemp("consent"), consent="required") as made:
        yield made


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from chromium.launch()


def _fresh(site: Site) -> None:
    assert site.core.bridge.flush(10)  # the previous test's events are all in
    site.graph.clear()
    site.log.reset()


@pytest.fixture
def new_page(browser: Any, site: Site) -> Iterator[Callable[..., Any]]:
    """``new_page(block_pixel=False, **context_options)``: a page in a fresh browser profile (a
    new visitor, no cookies), with a desktop user agent unless ``user_agent`` says otherwise."""
    _fresh(site)
    yield from chromium.contexts(browser, user_agent=chromium.DESKTOP_UA)


@pytest.fixture
def consent_page(browser: Any, consent_site: Site) -> Iterator[Callable[..., Any]]:
    """``new_page`` for ``consent_site``."""
    _fresh(consent_site)
    yield from chromium.contexts(browser, user_agent=chromium.DESKTOP_UA)
