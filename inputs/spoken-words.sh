#!/usr/bin/env bash
# Speaker-independent spoken-word recognition, one command, no download: espeak-ng reads 18
# words (the ten digits, yes/no/up/down/left/right/stop/go) in 96 voices (8 English accents x
# 12 voice variants) at seeded speeds and pitches, three times each (inputs/spoken_words_synth.py);
# the 16 voices of variants m7 and f5 are held out whole as the val split. Prepares the WAVs
# as log-mel rows (--audio train/ --val val/), trains a bidirectional GRU at 2 ranks
# (inputs/spoken-words.toml), prints the val accuracy beside the majority-class baselines.
# Needs espeak-ng (apt-get install -y espeak-ng).
# BIDIRECTIONAL=0 trains the same GRU in one direction (runs/spoken-words-forward); CELL=lstm
# trains a bidirectional LSTM (inputs/spoken-words-bilstm.toml, runs/spoken-words-bilstm), and
# with BIDIRECTIONAL=0 the one-direction LSTM (runs/spoken-words-lstm-forward): the same rows,
# steps and seed. SEED=S is train.seed.
# Measured numbers: README, "Labelled sequences: two real examples".
#   bash inputs/spoken-words.sh     # PYTHON=.venv/bin/python, NP=2, STEPS=600, RENDITIONS=3, BIDIRECTIONAL=1, CELL=gru, SEED=0
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
MPIRUN=${MPIRUN:-$(dirname "$PYTHON")/mpirun}
NP=${NP:-2}
STEPS=${STEPS:-600}
RENDITIONS=${RENDITIONS:-3}
WAVS=data/spoken-words-wav
DATA=data/spoken-words
SEED=${SEED:-0}
CONFIG=inputs/spoken-words.toml
OUT=runs/spoken-words
RUN=()
if [ "${CELL:-gru}" = lstm ]; then
    CONFIG=inputs/spoken-words-bilstm.toml
    OUT=runs/spoken-words-bilstm
fi
if [ "${BIDIRECTIONAL:-1}" = 0 ]; then
    OUT=runs/spoken-words-forward
    if [ "${CELL:-gru}" = lstm ]; then OUT=runs/spoken-words-lstm-forward; fi
    RUN=(--set model.bidirectional=false --set checkpoint.dir=$OUT/checkpoints
         --set output.metrics=$OUT/metrics.jsonl)
fi
START=$(date +%s)

# 1. Synthesize: WAVS/train/<word>/*.wav (80 voices) and WAVS/val/<word>/*.wav (16 voices).
$PYTHON inputs/spoken_words_synth.py $WAVS --renditions "$RENDITIONS"
# 2. Prepare: 40 log-mel features every 20 ms (40 ms windows); the val folder is the val split.
$PYTHON -m mpirnn.data prepare --out $DATA --audio $WAVS/train --val $WAVS/val \
    --mels 40 --hop-ms 20 --win-ms 40 --force
$PYTHON -m mpirnn.data info $DATA
# 3. Train (val_loss every 200 steps; a re-run replaces the previous run's checkpoints).
$MPIRUN -n "$NP" $PYTHON -m mpirnn.train --config $CONFIG "${RUN[@]}" --set train.seed="$SEED" \
    --set train.steps="$STEPS" --set checkpoint.overwrite=true --set output.progress=false
# 4. Accuracy on the held-out voices, and the baselines.
$PYTHON inputs/val_accuracy.py $OUT/checkpoints $DATA
echo "spoken-words.sh: $(( $(date +%s) - START )) s"
