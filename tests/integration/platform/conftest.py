"""A whole platform started the way `make run` starts it, on free ports in a temp dir."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import GRAINHOUSE, Stack, make_data_root, running_stack

__all__ = ["GRAINHOUSE", "Stack", "make_data_root"]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with running_stack() as s:
        yield s


@pytest.fixture
def fresh_root() -> Iterator[Path]:
    root = make_data_root()
    yield root
    shutil.rmtree(root, ignore_errors=True)
