"""Accuracy of a classify checkpoint on a dataset's val split, and the majority-class
baseline: the measurement the examples print (japanese-vowels.sh, spoken-words.sh).

    python inputs/val_accuracy.py runs/japanese-vowels/checkpoints data/japanese-vowels

Each val row runs through the whole model up to its own length, and the class is the head
where the classify loss reads it (mpirnn/models/objectives.py): at the row's last valid step,
and for bidirectional layers the reverse direction's end at step 0 beside it. Two
constant answers are the baselines: the train split's most frequent class (ties: the lower
id), a rule one could learn, and the val split's own most frequent class, the best any
constant answer can score on these rows.
A stopgap for the examples only: `python -m mpirnn.predict` and the trainer's val_accuracy
replace it once they land (issue 17, item 4).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from mpirnn.data.labelled_targets import LabelledTargets
from mpirnn.data.manifest import load_manifest
from mpirnn.data.row_reader import RowReader
from mpirnn.models.objectives import scored_outputs


def load_classifier(path: str):
    """The checkpoint's model, with its head as wide as its classes: load_checkpoint builds
    the head of a next-step model (as wide as the features), so the model is built here
    from the checkpoint's own parameters (the head's rows are the classes)."""
    from mpirnn import checkpoint
    from mpirnn.inference.load import load_state, locate, model_info, saved_config
    from mpirnn.models import build_model

    located = locate(path)
    cfg = saved_config(located)
    state = load_state(located)
    info = model_info(located, cfg, state["model"])
    model = build_model(cfg, vocab_size=info.vocab_size, features=info.features,
                        outputs=state["model"]["head.weight"].shape[0])
    checkpoint.check_compatible(model, state, str(located.path))
    model.load_state_dict(state["model"])
    return model.eval(), located.step


@torch.no_grad()
def predict_classes(model, dataset: str, split: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """(predicted class ids, true class ids) of every row of `split`."""
    reader = RowReader(load_manifest(dataset, split=split))
    try:
        batch = reader.read(range(len(reader.lengths)), dtype=model.dtype)
    finally:
        reader.close()
    state = model.zero_state(len(batch.lengths), batch.inputs)
    # The lengths tell a bidirectional layer where each row's reverse direction starts.
    outputs, _ = model.run_stack(model.embed(batch.inputs), state, lengths=batch.lengths)
    targets = LabelledTargets("classify", batch.labels, batch.lengths)
    ends, _ = scored_outputs(outputs, targets, model.hidden if model.bidirectional else None)
    return model.head(ends).argmax(dim=1).numpy(), batch.labels.numpy()


def majority_accuracy(dataset: str, truth: np.ndarray) -> tuple[float, str, float, str]:
    """The accuracy of always answering the train split's most frequent class, and of
    always answering the val split's own (each with the class's name)."""
    manifest = load_manifest(dataset)
    reader = RowReader(manifest)
    try:
        train = reader.read(range(len(reader.lengths)), inputs=False).labels.numpy()
    finally:
        reader.close()
    top = int(np.bincount(train, minlength=len(manifest.classes)).argmax())
    own = int(np.bincount(truth, minlength=len(manifest.classes)).argmax())
    return (float((truth == top).mean()), manifest.classes[top],
            float((truth == own).mean()), manifest.classes[own])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("dataset")
    args = parser.parse_args(argv)
    model, step = load_classifier(args.checkpoint)
    predicted, truth = predict_classes(model, args.dataset)
    right = int((predicted == truth).sum())
    majority, top, own, own_top = majority_accuracy(args.dataset, truth)
    print(f"val accuracy {right / len(truth):.4f} ({right} of {len(truth)} rows right, "
          f"checkpoint step {step})")
    print(f"majority-class baselines: the train split's most frequent class ({top!r}) "
          f"{majority:.4f}; the val split's own most frequent ({own_top!r}) {own:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
