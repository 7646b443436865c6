"""A whole platform started the way `make run` starts it, on free ports in a temp dir."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import GRAINHOUSE, Stack, make_data_root

__all__ = ["GRAINHOUSE", "Stack", "make_data_root"]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    root = make_data_root()
    s = Stack(root)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_root() -> Iterator[Path]:
    root = make_data_root()
    yield root
    shutil.rmtree(root, ignore_errors=True)
