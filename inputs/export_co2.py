"""Export the weekly Mauna Loa CO2 series that statsmodels ships (no download) as a CSV.

    pip install 'mpirnn[examples]'                 # statsmodels
    python inputs/export_co2.py data/co2.csv       # 2284 weeks, 1958-03-29 to 2001-12-29

Columns `date,co2`: the week's date and CO2 in ppm (the 59 missing weeks left empty, for
prepare --fill). No hand-made features: prepare --time-column date records the weekly
frequency, and training adds the time of year and the value one season back by itself
(docs/data.md). The whole example (prepare, train, forecast with a plot) is inputs/co2-forecast.sh.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the CSV to write")
    args = parser.parse_args()
    try:
        from statsmodels.datasets import co2
    except ImportError:
        raise SystemExit("export_co2: needs statsmodels: pip install 'mpirnn[examples]'") from None
    frame = co2.load_pandas().data
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as out:
        out.write("date,co2\n")
        for week, value in zip(frame.index, frame["co2"]):
            out.write(f"{week.date()},{'' if math.isnan(value) else value}\n")
    print(f"wrote {args.out}: {len(frame)} weeks, {int(frame['co2'].isna().sum())} missing")


if __name__ == "__main__":
    main()
