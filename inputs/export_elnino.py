"""Export the monthly El Niño sea surface temperatures that statsmodels ships (no download) as a CSV.

    pip install 'mpirnn[examples]'                    # statsmodels
    python inputs/export_elnino.py data/elnino.csv    # 732 months, 1950-01 to 2010-12

statsmodels stores the series as one row per year with a column per month (degrees Celsius,
the Niño 1+2 region); this writes it as one row per month, `date,sst` (the month's first day),
so prepare --time-column date finds a monthly frequency (season 12) by itself. The forecasting
example that uses it: docs/forecasting.md, "A second series".
"""

from __future__ import annotations

from statsmodels_csv import export_csv

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def rows(frame):
    for _, row in frame.iterrows():
        for month, name in enumerate(MONTHS, start=1):
            yield f"{int(row['YEAR'])}-{month:02d}-01,{float(row[name])!r}"


def main() -> None:
    out, frame = export_csv(__doc__, "export_elnino", "elnino", "date,sst", rows)
    print(f"wrote {out}: {len(frame) * 12} months")


if __name__ == "__main__":
    main()
