"""The metric math of labelled tasks (mpirnn/inference/task_metrics.py) against scikit-learn's
definitions written out by hand, and the prediction files (mpirnn/inference/prediction_files.py).

    python -m pytest -q tests/test_inference_task_metrics.py
"""

import csv
import io
import json
import math

import numpy as np
import pytest

from mpirnn.data.normalization import Normalization
from mpirnn.data.tasks import TaskSpec
from mpirnn.inference.labelled_tally import Predictions
from mpirnn.inference.prediction_files import confusion_plot, metrics_json, predictions_csv, predictions_h5
from mpirnn.inference.task_metrics import add_to_confusion, class_metrics, regression_metrics


def sklearn_by_hand(y_true, y_pred, n):
    """precision/recall/F1 per class as sklearn defines them (zero_division=0), and macro-F1 over
    the classes present in y_true or y_pred (sklearn's labels=None)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    per, f1s = [], []
    for k in range(n):
        tp = np.sum((y_true == k) & (y_pred == k))
        fp = np.sum((y_true != k) & (y_pred == k))
        fn = np.sum((y_true == k) & (y_pred != k))
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        per.append((p, r, f, int(np.sum(y_true == k))))
        if np.any(y_true == k) or np.any(y_pred == k):
            f1s.append(f)
    return per, float(np.mean(f1s)), float(np.mean(y_true == y_pred))


@pytest.mark.parametrize("seed", range(5))
def test_class_metrics_equal_sklearn_definitions(seed):
    rng = np.random.default_rng(seed)
    n = 5
    y_true = rng.integers(0, n - 1, 200)          # class 4 never a label ...
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, n, 200))  # ... but sometimes predicted
    if seed == 0:
        y_pred[y_pred == 3] = 2                    # class 3: a label never predicted
    confusion = np.zeros((n, n), dtype=np.int64)
    # In pieces, as the ranks and units of a grid add them.
    for part in np.array_split(np.arange(200), 7):
        add_to_confusion(confusion, y_true[part], y_pred[part])
    names = [f"c{k}" for k in range(n)]
    got = class_metrics(confusion, names)
    per, macro, accuracy = sklearn_by_hand(y_true, y_pred, n)
    assert got["accuracy"] == pytest.approx(accuracy, abs=1e-15)
    assert got["macro_f1"] == pytest.approx(macro, abs=1e-15)
    for k, name in enumerate(names):
        row = got["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(per[k], abs=1e-15)
    assert np.array_equal(np.asarray(got["confusion"]).sum(), 200)
    assert got["confusion"][2][1] == int(np.sum((y_true == 2) & (y_pred == 1)))


def test_a_class_absent_from_labels_and_predictions_is_left_out_of_macro_f1():
    confusion = np.zeros((3, 3), dtype=np.int64)
    add_to_confusion(confusion, [0, 0, 1, 1], [0, 1, 1, 1])
    got = class_metrics(confusion, ["a", "b", "c"])
    # a: P 1, R 0.5, F 2/3; b: P 2/3, R 1, F 0.8; c absent: not averaged.
    assert got["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert got["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    empty = class_metrics(np.zeros((2, 2), dtype=np.int64), ["a", "b"])
    assert empty["accuracy"] is None and empty["macro_f1"] is None


def test_regression_metrics_in_data_units():
    rng = np.random.default_rng(1)
    error = rng.standard_normal((30, 2))
    got = regression_metrics(np.square(error).sum(0), np.abs(error).sum(0), 30)
    assert got["rmse"] == pytest.approx(math.sqrt(np.mean(np.square(error))))
    assert got["mae"] == pytest.approx(np.mean(np.abs(error)))
    assert got["rmse_per_target"] == pytest.approx(np.sqrt(np.mean(np.square(error), 0)).tolist())
    assert got["mae_per_target"] == pytest.approx(np.mean(np.abs(error), 0).tolist())


def test_prediction_files():
    spec = TaskSpec("classify", ("yes", "no", "up"))
    values = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    p = Predictions(np.array([0, 1]), None, values, np.array([0, 1]))
    lines = list(csv.reader(io.StringIO(predictions_csv(p, spec).decode())))
    assert lines[0] == ["row", "predicted", "probability", "p_yes", "p_no", "p_up", "label"]
    assert lines[1][:3] == ["0", "yes", "0.7"] and lines[2][1] == "up" and lines[2][-1] == "no"
    tag = TaskSpec("tag", ("H", "E"), label_fill=-1)
    p = Predictions(np.array([0, 0, 3]), np.array([0, 1, 0]), np.array([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1]]),
                    np.array([0, 0, 1]))
    lines = list(csv.reader(io.StringIO(predictions_csv(p, tag).decode())))
    assert lines[0] == ["row", "step", "predicted", "probability", "label"] and lines[2] == ["0", "1", "E", "0.7", "H"]
    import h5py
    with h5py.File(io.BytesIO(predictions_h5(p, tag)), "r") as f:
        assert list(f["step"][:]) == [0, 1, 0] and list(f["predicted"][:]) == [0, 1, 0]
        assert list(f.attrs["classes"]) == ["H", "E"]
    regress = TaskSpec("regress", targets=2, target_normalization=Normalization((0.0, 1.0), (1.0, 2.0)))
    p = Predictions(np.array([0]), None, np.array([[1.5, 2.5]]), np.array([[1.0, 3.0]]))
    lines = list(csv.reader(io.StringIO(predictions_csv(p, regress).decode())))
    assert lines == [["row", "predicted", "actual", "predicted_1", "actual_1"], ["0", "1.5", "1.0", "2.5", "3.0"]]
    assert json.loads(metrics_json({"accuracy": 1.0})) == {"accuracy": 1.0}
    pytest.importorskip("matplotlib")
    assert confusion_plot([[3, 1], [0, 2]], ["a", "b"], "png", "t")[:4] == b"\x89PNG"
