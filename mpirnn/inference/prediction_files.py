"""What `python -m mpirnn.predict` writes: predictions as CSV or HDF5, metrics as JSON, a plot.

Each function returns the file's bytes; the command writes them all at once
(mpirnn/inference/command.py `write_whole`), so a failure leaves none half-written. The
columns (docs/inference.md, "predict"):

    classify  row,predicted,probability,p_<class>...,label       one line per sequence
    tag       row,step,predicted,probability,label              one line per valid step
    regress   row,predicted,actual[,predicted_1,actual_1 ...]   data units, one line per sequence

Numbers keep every digit of the float64 (repr). HDF5 holds the same as arrays (class ids, the
class names as an attribute), the better choice for long `tag` data.

    python -m pytest -q tests/test_inference_predict_files.py
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np

PLOT_FORMATS = ("png", "pdf", "svg")
TABLE_FORMATS = (".csv", ".h5", ".hdf5")


def predictions_csv(predictions, spec) -> bytes:
    text = io.StringIO()
    out = csv.writer(text, lineterminator="\n")
    p = predictions
    if spec.task == "regress":
        K = spec.targets
        out.writerow(["row", *[name for j in range(K) for name in _suffixed(("predicted", "actual"), j)]])
        for i in range(len(p.rows)):
            out.writerow([int(p.rows[i]), *[repr(float(v)) for j in range(K) for v in (p.values[i, j],
                                                                                         p.labels[i, j])]])
        return text.getvalue().encode()
    classes = spec.classes
    chosen = p.values.argmax(1) if len(p.rows) else np.zeros(0, dtype=np.int64)
    if spec.task == "tag":
        out.writerow(["row", "step", "predicted", "probability", "label"])
        for i in range(len(p.rows)):
            out.writerow([int(p.rows[i]), int(p.steps[i]), classes[chosen[i]], repr(float(p.values[i, chosen[i]])),
                          classes[int(p.labels[i])]])
        return text.getvalue().encode()
    out.writerow(["row", "predicted", "probability", *[f"p_{name}" for name in classes], "label"])
    for i in range(len(p.rows)):
        out.writerow([int(p.rows[i]), classes[chosen[i]], repr(float(p.values[i, chosen[i]])),
                      *[repr(float(v)) for v in p.values[i]], classes[int(p.labels[i])]])
    return text.getvalue().encode()


def _suffixed(names, j: int):
    return names if j == 0 else tuple(f"{name}_{j}" for name in names)


def predictions_h5(predictions, spec) -> bytes:
    """rows, steps (tag), predicted (class ids, or values in data units), probability and
    probabilities (classes), label / actual; attributes task and classes."""
    import h5py

    p, buffer = predictions, io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.attrs["task"] = spec.task
        f.create_dataset("row", data=p.rows.astype(np.int64))
        if p.steps is not None:
            f.create_dataset("step", data=p.steps.astype(np.int64))
        if spec.classes:
            f.attrs["classes"] = list(spec.classes)
            chosen = p.values.argmax(1) if len(p.rows) else np.zeros(0, dtype=np.int64)
            f.create_dataset("predicted", data=chosen.astype(np.int32))
            f.create_dataset("probability", data=p.values[np.arange(len(chosen)), chosen])
            f.create_dataset("probabilities", data=p.values, compression="gzip")
            f.create_dataset("label", data=p.labels.astype(np.int32))
        else:
            f.create_dataset("predicted", data=p.values)
            f.create_dataset("actual", data=p.labels)
    return buffer.getvalue()


def metrics_json(result: dict) -> bytes:
    return (json.dumps(result, indent=1) + "\n").encode()


def confusion_plot(confusion, classes, fmt: str, title: str) -> bytes:
    """The confusion matrix as an image: true classes down, predicted across, each cell's count,
    shaded by the share of its true class (so small classes read as well as large ones)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    counts = np.asarray(confusion, dtype=np.int64)
    totals = counts.sum(1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    n = len(classes)
    size = min(4 + 0.45 * n, 16)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                axes.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                          color="white" if share[i, j] > 0.5 else "black")
    axes.set_xticks(range(n), classes, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
    axes.set_yticks(range(n), classes)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="share of the true class")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=110)
    plt.close(figure)
    return buffer.getvalue()
