"""Fixtures over the framework-free adapter of ``unitree_fake``."""

from __future__ import annotations

import pytest
from unitree_fake import FakeAdapter, Mod, mlp

from unitree import ParamTree


@pytest.fixture
def adapter() -> FakeAdapter:
    return FakeAdapter()


@pytest.fixture
def make(adapter: FakeAdapter):  # type: ignore[no-untyped-def]
    return lambda model: ParamTree(adapter, model)


@pytest.fixture
def model() -> Mod:
    return mlp()


@pytest.fixture
def tied() -> Mod:
    return mlp(shared=True)
