"""Labelled rows from .npy arrays: tasks inferred, labels and lengths stored, the stratified
val split, normalization over valid steps, the RowReader, validation, the trainer's refusal,
and every bad input refused through the real command (one line, exit 2, nothing written).

    .venv/bin/python -m pytest -q tests/test_data_labelled_npy.py
"""

import json
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from support import assert_refused, reseal_dataset, run_data_cli

from mpirnn.data import __main__ as data_cli
from mpirnn.data.labelled_npy import prepare_labelled_npy
from mpirnn.training.dataset_fit import check_fit
from mpirnn.data.manifest import load_manifest
from mpirnn.data.row_reader import RowReader
from mpirnn.data.validate import validate_dataset
from mpirnn.errors import DataError


def save(tmp_path, **arrays):
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)


@pytest.fixture
def rows(tmp_path):
    """40 rows of up to 12 steps, 3 features, lengths 3..12, classes 0..2; NaN and huge
    values at padded steps, which must be ignored."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 12, 3)).astype(np.float32)
    lengths = rng.integers(3, 13, 40)
    pad = np.arange(12)[None, :] >= lengths[:, None]
    x[pad] = 1e6
    x[0, -1] = np.nan if lengths[0] < 12 else x[0, -1]
    y = np.arange(40) % 3
    save(tmp_path, x=x, y=y, l=lengths)
    return x, y, lengths


def test_classify_round_trip_through_the_reader(tmp_path, rows):
    x, y, lengths = rows
    m = prepare_labelled_npy(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "ds",
                             lengths=tmp_path / "l.npy", val_fraction=0.25, shard_size=7)
    val = load_manifest(tmp_path / "ds", split="val")
    assert (m.task, m.classes, m.kind, m.seq_len, m.features) == (
        "classify", ("0", "1", "2"), "sequences", 12, 3)
    assert (m.length, val.length, len(m.shards)) == (30, 10, 5)
    obj = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert obj["version"] == 3 and obj["task"] == "classify" and obj["classes"] == ["0", "1", "2"]
    assert obj["val_split"] == {"method": "stratified", "fraction": 0.25, "seed": 0}
    seen = []
    for split in (m, val):
        reader = RowReader(split)
        order = np.arange(split.length)[::-1]       # any order, across shard boundaries
        batch = reader.read(order, 2, 9)
        with h5py.File(split.shard_path(0)) as f:
            assert f["data"].chunks == (1, 12, 3)
        source = np.concatenate([h5py.File(split.shard_path(i))["input_row"][...]
                                 for i in range(len(split.shards))])[order]
        seen += list(source)
        assert batch.lengths.tolist() == lengths[source].tolist()
        assert batch.labels.tolist() == y[source].tolist()
        valid = batch.valid(2, 9)
        expected = torch.from_numpy(m.normalize(x[source, 2:9])).float()
        assert torch.equal(batch.inputs[valid], expected[valid])
        assert (batch.inputs[~valid] == 0).all()   # padding reads as 0, never NaN
        only = reader.read(order[:3], 0, 4, inputs=False)
        assert only.inputs is None and only.labels.shape == (3,)
    assert sorted(seen) == list(range(40))


def test_val_split_is_stratified_and_seeded(tmp_path):
    y = np.repeat([0, 1, 2], [50, 30, 20])
    save(tmp_path, x=np.zeros((100, 4, 1), np.float32), y=y)

    def val_rows(seed, out):
        prepare_labelled_npy(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / out,
                             val_fraction=0.2, seed=seed)
        with h5py.File(tmp_path / out / "val-00000.h5") as f:
            return f["input_row"][...], f["labels"][...]

    rows_a, labels = val_rows(0, "a")
    assert np.bincount(labels).tolist() == [10, 6, 4]          # 20% of every class
    assert (np.diff(rows_a) > 0).all()                          # the input's order is kept
    assert np.array_equal(val_rows(0, "b")[0], rows_a)           # same seed, same split
    assert not np.array_equal(val_rows(1, "c")[0], rows_a)       # another seed, another one


def test_a_class_missing_from_val_is_warned(tmp_path, capsys):
    save(tmp_path, x=np.zeros((21, 4, 1), np.float32), y=np.array([0] * 20 + [1]))
    status = data_cli.main(["prepare", "--out", str(tmp_path / "ds"), "--npy",
                            str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")])
    out = capsys.readouterr().out
    assert status == 0 and "warning: class(es) '1' have no labels in the val split" in out


def test_text_labels_in_order_of_first_appearance_or_as_given(tmp_path):
    save(tmp_path, x=np.zeros((6, 2, 1), np.float32),
         y=np.array(["cat", "dog", "cat", "emu", "dog", "cat"]))
    m = prepare_labelled_npy(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "a", val_fraction=0)
    assert m.classes == ("cat", "dog", "emu")
    m = prepare_labelled_npy(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "b", val_fraction=0,
                             classes=["emu", "dog", "cat"])
    assert m.classes == ("emu", "dog", "cat")
    assert RowReader(m).read(range(6)).labels.tolist() == [2, 1, 2, 0, 1, 2]


def test_tag_labels_at_padded_steps_are_ignored(tmp_path):
    y = np.array([[1, 0, 2, -7], [2, 2, 9, 9]])     # -7 and 9: padding, ignored
    save(tmp_path, x=np.ones((2, 4, 1), np.float32), y=y, l=np.array([3, 2]))
    m = prepare_labelled_npy(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "ds",
                             lengths=tmp_path / "l.npy", val_fraction=0)
    assert (m.task, m.classes, m.task_spec.label_fill) == ("tag", ("0", "1", "2"), -1)
    batch = RowReader(m).read([0, 1], 1, 4)
    assert batch.labels.tolist() == [[0, 2, -1], [2, -1, -1]]


def test_regression_targets_are_normalized_with_train_statistics(tmp_path):
    targets = np.stack([np.arange(10.0), 100 + 2 * np.arange(10.0)], axis=1)
    save(tmp_path, x=np.zeros((10, 3, 2), np.float32), y=targets)
    m = prepare_labelled_npy(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "ds", val_fraction=0)
    assert (m.task, m.task_spec.targets, m.classes) == ("regress", 2, None)
    stats = m.task_spec.target_normalization
    assert np.allclose(stats.mean, targets.mean(0)) and np.allclose(stats.std, targets.std(0))
    read = RowReader(m).read(range(10)).labels.double().numpy()
    assert np.allclose(stats.denormalize(read), targets, atol=1e-4)


def test_normalization_counts_valid_steps_only(tmp_path, rows):
    x, _, lengths = rows
    m = prepare_labelled_npy(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "ds",
                             lengths=tmp_path / "l.npy", val_fraction=0)
    valid = x[np.arange(12)[None, :] < lengths[:, None]].astype(np.float64)
    assert np.allclose(m.normalization.mean, valid.mean(0))
    assert np.allclose(m.normalization.std, valid.std(0))   # 1e6 / NaN padding left out


def test_token_rows(tmp_path):
    x = np.array([[3, 1, 4, 1], [5, 9, 2, 6], [5, 3, 0, 0]])
    save(tmp_path, x=x, y=np.array(["a", "b", "a"]), l=np.array([4, 4, 2]))
    m = prepare_labelled_npy(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "ds",
                             lengths=tmp_path / "l.npy", val_fraction=0)
    assert (m.kind, m.dtype, m.vocab_size, m.seq_len, m.features) == (
        "token_sequences", "uint8", 10, 4, None)
    batch = RowReader(m).read([2, 0], 1, 3)
    assert batch.inputs.dtype == torch.int64 and batch.inputs.tolist() == [[3, 0], [1, 4]]


def test_validation_finds_a_label_out_of_range(tmp_path, rows):
    prepare_labelled_npy(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "ds",
                         lengths=tmp_path / "l.npy", val_fraction=0)
    with h5py.File(tmp_path / "ds" / "shard-00000.h5", "r+") as f:
        f["labels"][5] = 3
    reseal_dataset(tmp_path / "ds")
    with pytest.raises(DataError, match=r"label 3 at row 5 is not a class id in \[0, 3\)"):
        validate_dataset(tmp_path / "ds")
    with h5py.File(tmp_path / "ds" / "shard-00000.h5", "r+") as f:
        f["labels"][5], f["lengths"][7] = 2, 13
    reseal_dataset(tmp_path / "ds")
    with pytest.raises(DataError, match=r"length 13 at row 7 is outside \[1, 12\]"):
        validate_dataset(tmp_path / "ds")


def test_the_trainer_refuses_stateful_training_on_labelled_rows(tmp_path, rows):
    m = prepare_labelled_npy(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "ds",
                             lengths=tmp_path / "l.npy")
    cfg = SimpleNamespace(data=SimpleNamespace(batch_size=4, seq_len=12, holdout=0), train=SimpleNamespace(stateful=True))
    with pytest.raises(DataError, match=r"train.stateful = true but .* holds labelled rows"):
        check_fit(m, cfg, None)


def test_info_shows_task_classes_counts_and_lengths(tmp_path, rows):
    prepare_labelled_npy(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "ds",
                         lengths=tmp_path / "l.npy", val_fraction=0.25)
    result = run_data_cli("info", tmp_path / "ds")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "task classify: one of 3 classes per sequence (0, 1, 2)" in out
    assert "rows per class: 0 10, 1 10, 2 10" in out and "rows per class: 0 4, 1 3, 2 3" in out
    _, _, lengths = rows
    assert f"lengths min {lengths.min()} " in out and "(padded to 12)" in out
    assert "a stratified random draw of 25% of the rows, seed 0" in out


@pytest.mark.parametrize("arrays, extra, words", [
    ({"y": np.zeros(39, int)}, [], ["y.npy holds 39 labels but x.npy has 40 rows"]),
    ({"y": np.zeros((40, 5), int)}, [], ["y.npy has shape [40, 5]", "[40, 12] (one per step)"]),
    ({"y": np.zeros((40, 12, 2), int)}, [], ["y.npy has shape [40, 12, 2]"]),
    ({"l": np.r_[np.full(39, 5), 0]}, ["--lengths"], ["length 0 at row 39 is outside [1, 12]"]),
    ({"l": np.r_[13, np.full(39, 5)]}, ["--lengths"], ["length 13 at row 0 is outside [1, 12]"]),
    ({"y": np.r_[np.ones(3), np.nan, np.ones(36)]}, [], ["regression target nan at row 3"]),
    ({"y": np.r_[np.ones(3), np.inf, np.ones(36)]}, [], ["regression target inf at row 3"]),
    ({"y": np.r_[np.ones(7, int), -1, np.ones(32, int)]}, [], ["negative class id -1 at row 7"]),
    ({"y": np.array(["a", "b"] * 20)}, ["--classes", "a,c"], ["label 'b' at row 1 is not among"]),
    ({"y": np.full(40, 0.5)}, ["--task", "classify"], ["class ids must be whole numbers"]),
    ({"x": np.full((40, 12, 3), np.nan, np.float32)}, [], ["missing value (NaN) at row 0, step 0"]),
])
def test_bad_input_is_refused_by_the_command(tmp_path, rows, arrays, extra, words):
    save(tmp_path, **arrays)
    if "--lengths" in extra:
        extra = ["--lengths", tmp_path / "l.npy"]
    out = tmp_path / "out"
    result = run_data_cli("prepare", "--out", out, "--npy", tmp_path / "x.npy", "--labels",
                          tmp_path / "y.npy", *extra)
    assert_refused(result, out, *words)


@pytest.mark.parametrize("change, message", [
    ({"task": "dance"}, "unknown task 'dance'"),
    ({"classes": None}, "task 'classify' needs class names"),
    ({"classes": ["a", "a", "b"]}, "class names repeat"),
    ({"task": "regress"}, "task 'regress' has no class names"),
    ({"label_fill": -1}, "label_fill .* is recorded exactly for task 'tag'"),
    ({"kind": "series", "seq_len": None}, "task 'classify' needs rows"),
])
def test_a_malformed_task_in_the_manifest_asks_to_reprepare(tmp_path, rows, change, message):
    prepare_labelled_npy(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "ds",
                         lengths=tmp_path / "l.npy", val_fraction=0)
    path = tmp_path / "ds" / "manifest.json"
    obj = json.loads(path.read_text())
    obj.update(change)
    path.write_text(json.dumps(obj))
    with pytest.raises(DataError, match=message):
        load_manifest(tmp_path / "ds")
