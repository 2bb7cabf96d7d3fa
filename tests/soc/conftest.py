"""Fixtures for the soc tests: the session's search servers are stopped when the session ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.soc import search_servers


@pytest.fixture(scope="session", autouse=True)
def _search_servers() -> Iterator[None]:
    """Started on first use by the stores' set-up (tests/soc/backends), stopped here."""
    yield
    search_servers.stop()
