#!/usr/bin/env bash
# Voice activity detection, a per-frame tagging example, one command, no download: espeak-ng
# speaks 1 to 4 words per utterance in 96 voices, noise is added at 0 to 20 dB SNR, and every
# 20 ms frame is labelled silence or speech from the clean signal (inputs/speech_activity_synth.py).
# The arrays are prepared as a user prepares their own (`prepare --npy X --labels Y --lengths L`),
# a bidirectional GRU is trained at 2 ranks, and `python -m mpirnn.predict` reports the per-frame
# accuracy and macro-F1 of the val split beside the baselines (inputs/frame_baselines.py).
# BIDIRECTIONAL=0 trains the one-direction GRU instead (runs/speech-activity-forward), on the
# same rows with the same steps and seed. Needs espeak-ng (apt-get install -y espeak-ng).
# Measured numbers: README, "Labelled sequences: two real examples".
#   bash inputs/speech-activity.sh   # PYTHON=.venv/bin/python, NP=2, STEPS=300, UTTERANCES=800, BIDIRECTIONAL=1
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
MPIRUN=${MPIRUN:-$(dirname "$PYTHON")/mpirun}
NP=${NP:-2}
STEPS=${STEPS:-300}
UTTERANCES=${UTTERANCES:-800}
ARRAYS=data/speech-activity-npy
DATA=data/speech-activity
OUT=runs/speech-activity
DIRECTION=(--set model.bidirectional=true)
if [ "${BIDIRECTIONAL:-1}" = 0 ]; then
    OUT=runs/speech-activity-forward
    DIRECTION=(--set model.bidirectional=false --set checkpoint.dir=$OUT/checkpoints
               --set output.metrics=$OUT/metrics.jsonl)
fi
START=$(date +%s)

# 1. Synthesize: X.npy [N, T, 40] log-mel frames, Y.npy [N, T] 0 silence / 1 speech, L.npy [N] lengths.
$PYTHON inputs/speech_activity_synth.py $ARRAYS --utterances "$UTTERANCES"
# 2. Prepare the arrays (task tag, inferred from [N, T] integer labels); 20% of the utterances are the val split.
$PYTHON -m mpirnn.data prepare --out $DATA --npy $ARRAYS/X.npy --labels $ARRAYS/Y.npy \
    --lengths $ARRAYS/L.npy --classes silence,speech --val-fraction 0.2 --force
$PYTHON -m mpirnn.data info $DATA
# 3. Train (val_loss, val_accuracy and val_macro_f1 every 100 steps; a re-run replaces the run's checkpoints).
$MPIRUN -n "$NP" $PYTHON -m mpirnn.train --config inputs/speech-activity.toml "${DIRECTION[@]}" \
    --set train.steps="$STEPS" --set checkpoint.overwrite=true --set output.progress=false
# 4. Per-frame accuracy and macro-F1 of the last checkpoint on the val utterances, and the baselines.
$MPIRUN -n "$NP" $PYTHON -m mpirnn.predict --checkpoint $OUT/checkpoints --out $OUT/val-predictions.h5
$PYTHON inputs/frame_baselines.py $DATA
echo "speech-activity.sh: $(( $(date +%s) - START )) s"
