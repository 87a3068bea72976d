"""Baselines of a per-frame tagging dataset's val split: always the train split's most
frequent class, and a frame-energy threshold (the mean of the frame's log-mel values) chosen
to be as accurate as possible on the train split: what the speech-activity example's model
(inputs/speech-activity.sh) is measured against. Accuracy and macro-F1 over the valid frames,
as `python -m mpirnn.predict` counts them (docs/tasks.md, "Metrics").

    python inputs/frame_baselines.py data/speech-activity
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mpirnn.data.manifest import load_manifest
from mpirnn.data.row_reader import RowReader
from mpirnn.inference.task_metrics import add_to_confusion, class_metrics


def frames(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(each valid frame's mean log-mel value in data units, its class id) of a split."""
    manifest = load_manifest(dataset, split=split)
    reader = RowReader(manifest)
    try:
        batch = reader.read(range(len(reader.lengths)))
    finally:
        reader.close()
    valid = batch.valid(0, manifest.seq_len).numpy()
    x = batch.inputs.double().numpy()
    if manifest.normalization is not None:   # back to data units: the energy a user would measure
        x = manifest.normalization.denormalize(x)
    return x.mean(axis=2)[valid], batch.labels.numpy()[valid]


def scores(truth: np.ndarray, predicted: np.ndarray, classes) -> dict:
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    add_to_confusion(confusion, truth, predicted)
    return class_metrics(confusion, classes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    args = parser.parse_args(argv)
    classes = load_manifest(args.dataset).classes
    train_energy, train_truth = frames(args.dataset, "train")
    energy, truth = frames(args.dataset, "val")
    top = int(np.bincount(train_truth, minlength=len(classes)).argmax())
    majority = scores(truth, np.full_like(truth, top), classes)
    # Two classes: the class above the threshold is the one more frequent among loud frames.
    candidates = np.quantile(train_energy, np.linspace(0.01, 0.99, 99))
    right = [max((train_truth == (train_energy > c)).mean(), (train_truth == (train_energy <= c)).mean())
             for c in candidates]
    best = candidates[int(np.argmax(right))]
    loud_is = int((train_truth == (train_energy > best)).mean() >= (train_truth == (train_energy <= best)).mean())
    threshold = scores(truth, np.where(energy > best, loud_is, 1 - loud_is), classes)
    print(f"val frames: {len(truth)}, {', '.join(f'{c} {np.mean(truth == i):.1%}' for i, c in enumerate(classes))}")
    print(f"baseline, always {classes[top]!r} (the train split's most frequent): accuracy "
          f"{majority['accuracy']:.4f}, macro-F1 {majority['macro_f1']:.4f}")
    print(f"baseline, frame energy above {best:.3f} (mean log-mel, chosen on the train split): accuracy "
          f"{threshold['accuracy']:.4f}, macro-F1 {threshold['macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
