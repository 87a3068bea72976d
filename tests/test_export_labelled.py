"""Exported labelled models (tag, classify, regress) give `python -m mpirnn.predict`'s predictions.

    .venv/bin/python -m pytest -q tests/test_export_labelled.py

Rows of different lengths (1 to T) in data units, a float64 model, one-direction and
bidirectional layers of every cell: `predict` writes its predictions of the val rows (P.h5),
every format is exported, and a Python that cannot import mpirnn (`-I -S`) opens each file,
normalizes the raw rows with the file's own statistics, pads them with large values (which must
change nothing) and runs them with their lengths. The probabilities (softmax of the logits) or
the targets in data units must equal predict's. docs/export.md, "Labelled models".
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from isolated_export import FORMATS, STANDALONE, run_isolated

from mpirnn import checkpoint
from mpirnn.config import load_config
from mpirnn.data.labelled_npy import prepare_labelled_npy
from mpirnn.data.manifest import load_manifest
from mpirnn.data.row_reader import RowReader
from mpirnn.export import main as export
from mpirnn.inference.model_info import ModelInfo
from mpirnn.models import build_model
from mpirnn.predict import main as predict

pytest.importorskip("onnxruntime", reason="pip install 'mpirnn[export]'")
pytest.importorskip("safetensors", reason="pip install 'mpirnn[export]'")

N, T, F = 32, 9, 3
TASKS = ("classify", "tag", "regress")
# (cell, bidirectional): every cell bidirectional, and both kinds of cell in one direction.
MODELS = (("rnn", True), ("lstm", True), ("gru", True), ("mingru", True), ("minlstm", True),
          ("gru", False), ("minlstm", False))
# onnxruntime has no float64 RNN / LSTM / GRU kernel: the ONNX files are checked in float32
# (within 1e-5, as tests/test_export.py), on fewer models; torch and safetensors in float64.
ONNX_MODELS = (("lstm", True), ("minlstm", True), ("gru", False))
DTYPES = {"torch": "float64", "safetensors": "float64", "onnx": "float32"}
TOLERANCE = {"float64": 1e-9, "float32": 1e-5}
PAD = 1e3   # what the padded steps hold: far from the data, so a leak would show

# Runs in the isolated Python (after tests/isolated_export.py's PRELUDE): each exported file on the raw
# val rows, as a user would run it.
OPEN = r"""
rows = torch.load(ROOT + "/rows.pt")
outputs = {}
for name in rows["names"]:
    raw, lengths = rows["raw"][name.split("-")[0]], rows["lengths"][name.split("-")[0]]   # the task's val rows
    valid = torch.arange(raw.shape[1])[None] < lengths[:, None]
    path = f"{ROOT}/{name}.{FORMAT}"
    if FORMAT == "torch":
        m, meta = open_torch(path)
    elif FORMAT == "onnx":
        import onnxruntime
        meta = onnx_metadata(path)
    else:
        m, meta = open_safetensors(path)
    norm = json.loads(meta["normalization"])
    x = (raw - torch.tensor(norm["mean"], dtype=raw.dtype)) / torch.tensor(norm["std"], dtype=raw.dtype)
    x = torch.where(valid[..., None], x, torch.full_like(x, PAD))
    if FORMAT == "onnx":
        session = onnxruntime.InferenceSession(path)
        y = torch.from_numpy(session.run(["y"], {"x": x.numpy(), "lengths": lengths.numpy()})[0])
    else:
        with torch.no_grad():
            y = m(x, lengths)
    if meta["task"] == "regress":
        target = json.loads(meta["target_normalization"])
        y = y * torch.tensor(target["std"], dtype=y.dtype) + torch.tensor(target["mean"], dtype=y.dtype)
    else:
        y = torch.softmax(y, dim=-1)
        if meta["task"] == "tag":
            y = y[valid]   # the valid steps, row by row: predict's order
    outputs[name] = {"y": y, "classes": json.loads(meta["classes"]), "inputs": json.loads(meta["inputs"]),
                     "takes": meta["takes"], "returns": meta["returns"]}
torch.save(outputs, f"{ROOT}/{FORMAT}-results.pt")
"""


def labels_for(task: str, x: np.ndarray) -> np.ndarray:
    if task == "classify":
        return np.array(["walk", "run", "sit"])[np.arange(N) % 3]
    if task == "tag":
        return (x[:, :, 0] > 5).astype(np.int64) + (x[:, :, 1] > 1)
    return np.stack([x[:, :, 1].sum(1) * 3 + 50, x[:, :, 2].mean(1) - 7], axis=1).astype(np.float64)


def write_checkpoint(root: Path, task: str, cell: str, bidirectional: bool, dtype: str) -> Path:
    """An untrained checkpoint as the trainer writes it: the numbers only have to agree."""
    manifest = load_manifest(root / task)
    cfg = load_config(None, [f"model.cell={cell}", "model.hidden=6", "model.layers=2", "model.embed=5",
                             f'model.dtype="{dtype}"', f"model.bidirectional={str(bidirectional).lower()}",
                             "data.batch_size=4", f"data.path={root / task}", "train.seed=5"])
    spec = manifest.task_spec
    model = build_model(cfg, features=F, outputs=spec.n_classes or spec.targets)
    state = {"format": 2, "step": 1, "model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}}
    directory = root / f"ck-{task}-{cell}-{bidirectional}-{dtype}"
    checkpoint.save(directory, 1, state, cfg.to_dict(), {"dataset": ModelInfo.from_manifest(manifest).to_json()})
    return directory


def val_rows(dataset: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The val rows in data units, as the user's own array holds them, and their lengths."""
    reader = RowReader(load_manifest(dataset, split="val"))
    try:
        rows = np.arange(len(reader.lengths))
        raw = reader._gather("data", rows, (slice(None),))   # stored in data units
        return torch.from_numpy(raw).double(), torch.from_numpy(reader.lengths)
    finally:
        reader.close()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(predict's values, each format's values from the isolated Python), by model name."""
    root = tmp_path_factory.mktemp("export-labelled")
    shutil.copy(STANDALONE, root / "standalone.py")
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((N, T, F)) * [2.0, 1.0, 0.5] + [5.0, 1.0, -3.0]).astype(np.float32)
    lengths = np.concatenate([[1, T], rng.integers(1, T + 1, N - 2)])
    np.save(root / "x.npy", x)
    np.save(root / "l.npy", lengths)
    predicted, names = {}, {}
    for task in TASKS:
        np.save(root / f"y-{task}.npy", labels_for(task, x))
        prepare_labelled_npy(root / "x.npy", root / f"y-{task}.npy", root / task, lengths=root / "l.npy",
                             val_fraction=0.4)
        for dtype, models, formats in (("float64", MODELS, ("torch", "safetensors")),
                                       ("float32", ONNX_MODELS, ("onnx",))):
            for cell, bidirectional in models:
                name = f"{task}-{cell}-{'bi' if bidirectional else 'one'}-{dtype}"
                ck = write_checkpoint(root, task, cell, bidirectional, dtype)
                assert predict(["--checkpoint", str(ck), "--out", str(root / f"{name}.h5")]) == 0
                with h5py.File(root / f"{name}.h5") as f:
                    predicted[name] = f["probabilities" if task != "regress" else "predicted"][...]
                for fmt in formats:
                    assert export(["--checkpoint", str(ck), "--format", fmt, "--out",
                                   str(root / f"{name}.{fmt}")]) == 0
                    names.setdefault(fmt, []).append(name)
    rows = {task: val_rows(root / task) for task in TASKS}   # each task draws its own val rows
    for _, row_lengths in rows.values():
        assert int(row_lengths.min()) < int(row_lengths.max()), "the val rows must have different lengths"
    results = {}
    for fmt in FORMATS:
        dtype = getattr(torch, DTYPES[fmt])
        torch.save({"raw": {task: raw.to(dtype) for task, (raw, _) in rows.items()},
                    "lengths": {task: lengths for task, (_, lengths) in rows.items()}, "names": names[fmt]},
                   root / "rows.pt")
        results[fmt] = run_isolated(root, fmt, OPEN, PAD=PAD)
    return predicted, results


CASES = [(fmt, cell, bi) for fmt in FORMATS for cell, bi in (ONNX_MODELS if fmt == "onnx" else MODELS)]


@pytest.mark.parametrize("fmt,cell,bidirectional", CASES)
@pytest.mark.parametrize("task", TASKS)
def test_exported_labelled_model_gives_predicts_predictions(exported, fmt, task, cell, bidirectional):
    predicted, results = exported
    name = f"{task}-{cell}-{'bi' if bidirectional else 'one'}-{DTYPES[fmt]}"
    want = torch.from_numpy(predicted[name])
    got = results[fmt][name]
    assert got["y"].shape == want.shape
    assert (got["y"].double() - want).abs().max().item() < TOLERANCE[DTYPES[fmt]]
    assert got["inputs"] == ["x", "lengths"]
    assert got["classes"] == ({"classify": ["walk", "run", "sit"], "tag": ["0", "1", "2"]}.get(task))
    assert "lengths: [batch] int64" in got["takes"]

