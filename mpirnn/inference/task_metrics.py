"""The metrics of a labelled task from summed counts, so any grid gives the same numbers.

Every rank adds what its units scored into a confusion matrix (tag, classify) or into sums
of squared and absolute errors in data units (regress); one Allreduce of those sums and
these pure functions give accuracy, macro-F1, per-class precision/recall/F1 and RMSE/MAE
(docs/tasks.md, "Metrics"). The definitions are scikit-learn's:

- precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2PR / (P + R), 0 where a
  denominator is 0 (sklearn's `zero_division=0`);
- macro-F1 is the mean F1 over the classes that occur in the labels or the predictions
  (sklearn's `f1_score(average="macro")` with `labels=None`): a class absent from both
  neither helps nor hurts.

    python -m pytest -q tests/test_inference_task_metrics.py
"""

from __future__ import annotations

import math

import numpy as np


def add_to_confusion(confusion: np.ndarray, labels, predicted) -> None:
    """confusion[label, predicted] += 1 for each scored element (rows: true class)."""
    n = confusion.shape[0]
    flat = np.asarray(labels, np.int64) * n + np.asarray(predicted, np.int64)
    confusion += np.bincount(flat, minlength=n * n).reshape(n, n).astype(confusion.dtype)


def class_metrics(confusion: np.ndarray, classes) -> dict:
    """accuracy, macro_f1, per_class {name: precision, recall, f1, support}, confusion, scored."""
    confusion = np.asarray(confusion, dtype=np.int64)
    true_positive = np.diag(confusion).astype(np.float64)
    support = confusion.sum(1).astype(np.float64)
    predicted = confusion.sum(0).astype(np.float64)
    precision = _ratio(true_positive, predicted)
    recall = _ratio(true_positive, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = (support > 0) | (predicted > 0)
    total = int(confusion.sum())
    per_class = {name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                        "support": int(support[k])} for k, name in enumerate(classes)}
    return {"accuracy": float(true_positive.sum() / total) if total else None,
            "macro_f1": float(f1[present].mean()) if present.any() else None,
            "per_class": per_class, "confusion": confusion.tolist(), "classes": list(classes), "scored": total}


def regression_metrics(squared: np.ndarray, absolute: np.ndarray, sequences: int) -> dict:
    """rmse and mae in data units: over every target value, and per target (from per-target sums)."""
    squared, absolute = np.asarray(squared, np.float64), np.asarray(absolute, np.float64)
    if sequences == 0:
        return {"rmse": None, "mae": None, "rmse_per_target": None, "mae_per_target": None, "scored": 0}
    return {"rmse": math.sqrt(squared.sum() / (sequences * len(squared))),
            "mae": float(absolute.sum() / (sequences * len(absolute))),
            "rmse_per_target": [math.sqrt(v / sequences) for v in squared],
            "mae_per_target": [float(v / sequences) for v in absolute], "scored": int(sequences),
            "error_unit": "data units (de-normalized)"}


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out
