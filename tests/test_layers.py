"""The layer contracts of pyproject.toml hold (docs/design.md, "Layers"), and they do bite: a copy of
the package with one upward import fails `lint-imports`, naming the import.

    .venv/bin/python -m pytest -q tests/test_layers.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT

pytestmark = pytest.mark.timeout(300)
LINT = Path(sys.executable).with_name("lint-imports")


def lint(folder: Path) -> subprocess.CompletedProcess:
    # The copy's mpirnn comes first on the path (the editable install's finder comes after it).
    env = {**os.environ, "PYTHONPATH": str(folder)}
    return subprocess.run([LINT, "--no-cache", "--config", folder / "pyproject.toml"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=240)


def test_the_layers_hold_and_an_upward_import_breaks_them(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "mpirnn", copy / "mpirnn", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    kept = lint(copy)
    assert kept.returncode == 0 and "0 broken" in kept.stdout, kept.stdout + kept.stderr

    reads = copy / "mpirnn" / "data" / "reads.py"
    reads.write_text(reads.read_text() + "\nfrom mpirnn.parallel.plan import Plan  # upward: data is below parallel\n")
    broken = lint(copy)
    assert broken.returncode != 0, broken.stdout
    assert "Layers import downward only BROKEN" in broken.stdout
    assert "mpirnn.data.reads -> mpirnn.parallel.plan" in broken.stdout
