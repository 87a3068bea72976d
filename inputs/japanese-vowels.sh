#!/usr/bin/env bash
# Prepare the UEA/UCR JapaneseVowels archive (9 speakers, 12 LPC coefficients per frame,
# 7 to 29 frames per utterance) as a classify dataset: the real .ts files inside aeon's
# wheel, which `make setup` installs (--no-deps, no download at run time). Prints info.
# Training it lands with the engine's part of issue 17 (docs/tasks.md).
#   bash inputs/japanese-vowels.sh          # PYTHON=.venv/bin/python by default
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
read -r TRAIN TEST < <($PYTHON -c "from mpirnn.data.bundled import aeon_ts; \
print(aeon_ts('JapaneseVowels'), aeon_ts('JapaneseVowels', 'TEST'))")
if [ "$TRAIN" = None ] || [ "$TEST" = None ]; then
    echo "japanese-vowels.sh: aeon's wheel is not installed: run make setup" >&2
    exit 2
fi
# The archive's TEST file is the val split (270 train rows, 370 val rows).
$PYTHON -m mpirnn.data prepare --out data/japanese-vowels --ts "$TRAIN" --val "$TEST" --force
$PYTHON -m mpirnn.data validate data/japanese-vowels
$PYTHON -m mpirnn.data info data/japanese-vowels
