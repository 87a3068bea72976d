"""The lines of a text input file (.ts, FASTA), or one clear line saying why not.

Exercised by: python -m pytest -q tests/test_data_labelled_ts.py tests/test_data_labelled_fasta.py
"""

from __future__ import annotations

import pathlib

from mpirnn.errors import DataError


def read_lines(path: str | pathlib.Path, what: str) -> list[str]:
    """The file's lines (UTF-8, a byte-order mark dropped); `what` names the format."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist: check the path")
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): is it a "
                        f"{what} file?") from None
