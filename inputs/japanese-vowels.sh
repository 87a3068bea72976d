#!/usr/bin/env bash
# Classify the UEA/UCR JapaneseVowels archive: which of 9 speakers uttered the vowel /ae/
# (12 LPC cepstrum coefficients per frame, 7 to 29 frames per utterance; 270 train and 370
# test utterances). The real .ts files ship inside aeon's wheel, which `make setup` installs
# (--no-deps, no download at run time). Prepares the archive's TEST file as the val split,
# trains an LSTM at 2 ranks (each row with its own length), and prints the test accuracy
# beside the majority-class baselines. Measured numbers: README, "Labelled sequences".
#   bash inputs/japanese-vowels.sh      # PYTHON=.venv/bin/python, NP=2, STEPS=400 by default
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
MPIRUN=${MPIRUN:-$(dirname "$PYTHON")/mpirun}
NP=${NP:-2}
STEPS=${STEPS:-400}
DATA=data/japanese-vowels
OUT=runs/japanese-vowels
START=$(date +%s)

read -r TRAIN TEST < <($PYTHON -c "from mpirnn.data.bundled import aeon_ts; \
print(aeon_ts('JapaneseVowels'), aeon_ts('JapaneseVowels', 'TEST'))")
if [ "$TRAIN" = None ] || [ "$TEST" = None ]; then
    echo "japanese-vowels.sh: aeon's wheel is not installed: run make setup" >&2
    exit 2
fi
# 1. Prepare: the archive's TEST file is the val split (270 train rows, 370 val rows).
$PYTHON -m mpirnn.data prepare --out $DATA --ts "$TRAIN" --val "$TEST" --force
$PYTHON -m mpirnn.data info $DATA
# 2. Train (val_loss every 100 steps; a re-run replaces the previous run's checkpoints).
$MPIRUN -n "$NP" $PYTHON -m mpirnn.train --config inputs/japanese-vowels.toml \
    --set train.steps="$STEPS" --set checkpoint.overwrite=true --set output.progress=false
# 3. Test accuracy of the last checkpoint on the 370 TEST rows, and the baselines.
$PYTHON inputs/val_accuracy.py $OUT/checkpoints $DATA
echo "published UEA archive result (Bagnall et al. 2018, arXiv:1811.00075), test accuracy on JapaneseVowels: 1-NN DTW_I 0.959, 1-NN DTW_D 0.949, 1-NN Euclidean 0.924"
echo "japanese-vowels.sh: $(( $(date +%s) - START )) s"
