"""What `info` (and `prepare`) say about labelled rows: the task, how val was chosen, and
per split the class counts and the length distribution, read from the shards' small
`lengths` and `labels` datasets (never the inputs).
Exercised by: python -m pytest -q tests/test_data_labelled_ts.py
"""

from __future__ import annotations

import h5py
import numpy as np

from mpirnn.data.manifest import LABELS, LENGTHS, Manifest


def lengths_and_counts(split: Manifest) -> tuple[np.ndarray, np.ndarray | None]:
    """(every row's length, labels per class id or None) of one split."""
    lengths, counts = [], None
    n_classes = split.task_spec.n_classes
    for i in range(len(split.shards)):
        with h5py.File(split.shard_path(i), "r") as f:
            lengths.append(f[LENGTHS][...])
            if n_classes is not None:
                labels = f[LABELS][...]
                found = np.bincount(labels[labels >= 0].ravel(), minlength=n_classes)
                counts = found if counts is None else counts + found
    return np.concatenate(lengths), counts


def describe_val_split(manifest: Manifest) -> str:
    """How the val rows were chosen, from the manifest's val_split."""
    record = manifest.val_split or {}
    if record.get("method") == "file":
        return f"the rows of {record['file']}"
    how = "a stratified random draw" if record.get("method") == "stratified" else "a random draw"
    return (f"{how} of {100 * (manifest.val_fraction or 0):g}% of the rows, seed "
            f"{record.get('seed')}")


def describe_rows(splits: list[Manifest]) -> list[str]:
    """Lines for info: the task, then per split its lengths and class counts."""
    train = splits[0]
    lines = [f"  {train.task_spec.describe()}"]
    if train.alphabet is not None:
        lines.append(f"  alphabet {train.alphabet} (token id = place in the alphabet)")
    if train.audio is not None:
        a = train.audio
        lines.append(f"  audio: {a['mels']} log-mel features every {a['hop_ms']:g} ms "
                     f"({a['win_ms']:g} ms windows, n_fft {a['n_fft']}) at {a['sample_rate']} Hz")
    targets = train.task_spec.target_normalization
    if targets is not None:
        lines.append("  targets normalized with the train split's mean\u00b1std: " + ", ".join(
            f"{m:.4g}\u00b1{s:.4g}" for m, s in zip(targets.mean[:4], targets.std[:4])))
    for split in splits:
        lengths, counts = lengths_and_counts(split)
        line = (f"  {split.split}: {split.length} rows, lengths min {lengths.min()} median "
                f"{np.median(lengths):g} max {lengths.max()} (padded to {split.seq_len})")
        if split.split != "train":
            line += f"; {describe_val_split(train)}"
        lines.append(line)
        if counts is not None:
            unit = "steps" if split.task == "tag" else "rows"
            shown = ", ".join(f"{name} {int(k)}" for name, k in zip(split.classes[:20], counts))
            more = f" ... ({len(counts)} classes)" if len(counts) > 20 else ""
            lines.append(f"    {unit} per class: {shown}{more}")
    return lines
