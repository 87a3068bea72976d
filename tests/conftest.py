"""Fixtures for every test; puts tests/ on sys.path so test files can `from support import ...`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import make_token_dataset  # noqa: E402


@pytest.fixture
def token_dataset(tmp_path) -> Path:
    return make_token_dataset(tmp_path / "tokens")


@pytest.fixture
def python() -> str:
    return sys.executable
