"""What inputs/export_co2.py and inputs/export_elnino.py share: the one argument (the CSV to
write), loading one of the series that statsmodels ships (no download), and writing the CSV from
the script's own rows.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path


def export_csv(doc: str, script: str, dataset: str, header: str, rows) -> tuple[Path, object]:
    """Parse `out`, load statsmodels.datasets.<dataset> as a pandas frame and write `header`, then
    one line per string that `rows(frame)` yields, to out (its folder made where missing).
    Returns (out, frame) for the script's closing line."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the CSV to write")
    args = parser.parse_args()
    try:
        module = importlib.import_module(f"statsmodels.datasets.{dataset}")
    except ImportError:
        raise SystemExit(f"{script}: needs statsmodels: pip install 'mpirnn[examples]'") from None
    frame = module.load_pandas().data
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as out:
        out.write(f"{header}\n")
        for line in rows(frame):
            out.write(f"{line}\n")
    return args.out, frame
