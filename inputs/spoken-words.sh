#!/usr/bin/env bash
# Speaker-independent spoken-word recognition, one command, no download: espeak-ng reads 18
# words (the ten digits, yes/no/up/down/left/right/stop/go) in 96 voices (8 English accents x
# 12 voice variants) at seeded speeds and pitches, three times each (inputs/spoken_words_synth.py);
# the 16 voices of variants m7 and f5 are held out whole as the val split. Prepares the WAVs
# as log-mel rows (--audio train/ --val val/), trains a GRU at 2 ranks, prints the val
# accuracy beside the majority-class baselines. Needs espeak-ng (apt-get install -y espeak-ng).
# BIDIRECTIONAL=1 trains a bidirectional LSTM instead (inputs/spoken-words-bilstm.toml, runs in
# runs/spoken-words-bilstm), on the same rows with the same steps and seed.
# Measured numbers: README, "Labelled sequences: two real examples".
#   bash inputs/spoken-words.sh     # PYTHON=.venv/bin/python, NP=2, STEPS=600, RENDITIONS=3, BIDIRECTIONAL=0
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
MPIRUN=${MPIRUN:-$(dirname "$PYTHON")/mpirun}
NP=${NP:-2}
STEPS=${STEPS:-600}
RENDITIONS=${RENDITIONS:-3}
WAVS=data/spoken-words-wav
DATA=data/spoken-words
CONFIG=inputs/spoken-words.toml
OUT=runs/spoken-words
if [ "${BIDIRECTIONAL:-0}" = 1 ]; then
    CONFIG=inputs/spoken-words-bilstm.toml
    OUT=runs/spoken-words-bilstm
fi
START=$(date +%s)

# 1. Synthesize: WAVS/train/<word>/*.wav (80 voices) and WAVS/val/<word>/*.wav (16 voices).
$PYTHON inputs/spoken_words_synth.py $WAVS --renditions "$RENDITIONS"
# 2. Prepare: 40 log-mel features every 20 ms (40 ms windows); the val folder is the val split.
$PYTHON -m mpirnn.data prepare --out $DATA --audio $WAVS/train --val $WAVS/val \
    --mels 40 --hop-ms 20 --win-ms 40 --force
$PYTHON -m mpirnn.data info $DATA
# 3. Train (val_loss every 200 steps; a re-run replaces the previous run's checkpoints).
$MPIRUN -n "$NP" $PYTHON -m mpirnn.train --config $CONFIG \
    --set train.steps="$STEPS" --set checkpoint.overwrite=true --set output.progress=false
# 4. Accuracy on the held-out voices, and the baselines.
$PYTHON inputs/val_accuracy.py $OUT/checkpoints $DATA
echo "spoken-words.sh: $(( $(date +%s) - START )) s"
