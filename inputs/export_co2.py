"""Export the weekly Mauna Loa CO2 series that statsmodels ships (no download) as a CSV.

    pip install 'mpirnn[examples]'                 # statsmodels
    python inputs/export_co2.py data/co2.csv       # 2284 weeks, 1958-03-29 to 2001-12-29

Columns `date,co2`: the week's date and CO2 in ppm (the 59 missing weeks left empty, for
prepare --fill). No hand-made features: prepare --time-column date records the weekly
frequency, and training adds the time of year and the value one season back by itself
(docs/data.md). The whole example (prepare, train, forecast with a plot) is inputs/co2-forecast.sh.
"""

from __future__ import annotations

import math

from statsmodels_csv import export_csv


def rows(frame):
    for week, value in zip(frame.index, frame["co2"]):
        yield f"{week.date()},{'' if math.isnan(value) else value}"


def main() -> None:
    out, frame = export_csv(__doc__, "export_co2", "co2", "date,co2", rows)
    print(f"wrote {out}: {len(frame)} weeks, {int(frame['co2'].isna().sum())} missing")


if __name__ == "__main__":
    main()
