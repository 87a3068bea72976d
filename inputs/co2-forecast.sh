#!/usr/bin/env bash
# Forecast weekly Mauna Loa CO2 one year (52 weeks) ahead and compare with the held-out weeks
# and with the seasonal-naive and last-value baselines. Needs statsmodels for the data
# (pip install -e '.[examples,plots]'); no download. About 70 s on a 2-core machine; numbers in docs/inference.md and the README.
#   bash inputs/co2-forecast.sh            # PYTHON=.venv/bin/python by default; NP=2 ranks
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
MPIRUN=${MPIRUN:-$(dirname "$PYTHON")/mpirun}
NP=${NP:-2}
OUT=runs/co2-forecast

# 1. The series as CSV: the week's date and CO2, with its 59 missing weeks. No hand-made features.
$PYTHON inputs/export_co2.py data/co2.csv
# 2. Prepare: read the dates (weekly, so season 52), fill the gaps by straight lines, hold out the
#    last 10% (228 weeks) as the val split. Training adds the time of year and the value 52 weeks back.
$PYTHON -m mpirnn.data prepare --out data/co2 --csv data/co2.csv --columns co2 --time-column date \
    --fill interpolate --force
# 3. Train (val_loss every 50 steps; a re-run replaces the previous run's checkpoints).
$MPIRUN -n "$NP" $PYTHON -m mpirnn.train --config inputs/co2-forecast.toml \
    --set checkpoint.overwrite=true --set output.progress=false
# 4. Forecast the 52 weeks after the train split, compare with the val split and the baselines.
$PYTHON -m mpirnn.forecast --checkpoint $OUT/checkpoints --horizon 52 --season 52 \
    --out $OUT/forecast.csv --plot $OUT/forecast.png
