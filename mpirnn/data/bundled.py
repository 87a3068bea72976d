"""Example files that ship inside an installed package, found without importing it.

`make setup` installs aeon's wheel with --no-deps (Makefile, AEON): its UEA/UCR `.ts`
files (JapaneseVowels, BasicMotions, Covid3Month, ...) then lie on disk, so the `.ts` tests
and examples read a real archive file with no download at run time. aeon itself is never
imported (its dependencies are not installed); only its data files are used.

    python -c "from mpirnn.data.bundled import aeon_ts; print(aeon_ts('JapaneseVowels'))"
Exercised by: python -m pytest -q tests/test_data_labelled_ts.py
"""

from __future__ import annotations

import pathlib
from importlib import metadata

AEON_DATA = "aeon/datasets/data"


def aeon_ts(problem: str, split: str = "TRAIN") -> pathlib.Path | None:
    """The path of `problem`'s TRAIN or TEST .ts file inside the installed aeon, or None
    when aeon is not installed (make setup installs it) or does not ship that problem."""
    try:
        dist = metadata.distribution("aeon")
    except metadata.PackageNotFoundError:
        return None
    path = pathlib.Path(str(dist.locate_file(f"{AEON_DATA}/{problem}/{problem}_{split}.ts")))
    return path if path.is_file() else None
