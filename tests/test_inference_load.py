"""Opening a checkpoint by itself (mpirnn.load_checkpoint, mpirnn/inference/load.py).

Plain pytest, no MPI: cd /work/main && .venv/bin/python -m pytest -q tests/test_inference_load.py
"""

import subprocess
import sys

import pytest
import torch
from support import make_series_dataset

import mpirnn
from mpirnn.config import load_config
from mpirnn.data.manifest import load_manifest
from mpirnn.data.normalization import Normalization
from mpirnn.errors import CheckpointError
from mpirnn.inference.load import build, locate
from mpirnn.inference.model_info import ModelInfo
from mpirnn.models import build_model
from mpirnn import checkpoint


def write(directory, step, *, vocab_size=None, features=None, info=None, val_loss=None, seed=0, data="x"):
    """A checkpoint as the trainer writes it (format 2, whole model, resolved config, extras)."""
    cfg = load_config(None, ["model.cell=gru", "model.hidden=8", "model.layers=2", "model.embed=4",
                             f"train.seed={seed}", f"data.path={data}"])
    model = build_model(cfg, vocab_size=vocab_size, features=features)
    state = {"format": 2, "step": step, "model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}}
    extra = {}
    if info is not None:
        extra["dataset"] = info.to_json()
    if val_loss is not None:
        extra["val_loss"] = val_loss
    checkpoint.save(directory, step, state, cfg.to_dict(), extra)
    return model, cfg


def test_load_checkpoint_needs_nothing_else(tmp_path):
    norm = Normalization((5.0, 6.0, 7.0), (1.0, 2.0, 0.0))
    saved, cfg = write(tmp_path, 7, features=3, info=ModelInfo("series", None, 3, norm), data="/nowhere")
    model, config = mpirnn.load_checkpoint(tmp_path)
    assert config.model == cfg.model and config.data.path == "/nowhere"
    assert model.features == 3 and model.vocab_size is None and not model.training
    for (name, a), (_, b) in zip(saved.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name
    assert model.normalization == norm and model.info.loss_name == "mean squared error"


def test_token_model_and_a_single_file(tmp_path):
    info = ModelInfo("tokens", 256, None, None)
    write(tmp_path, 3, vocab_size=256, info=info)
    write(tmp_path, 9, vocab_size=256, info=info, seed=1)
    model, _ = mpirnn.load_checkpoint(tmp_path / "ckpt-00000003.pt")
    assert model.vocab_size == 256 and model.normalization is None and model.info.byte_tokens
    assert locate(tmp_path).step == 9 and locate(tmp_path / "ckpt-00000003.json").step == 3


def test_older_checkpoints_are_read_from_their_parameters_and_dataset(tmp_path):
    data = make_series_dataset(tmp_path / "series")
    write(tmp_path / "ck", 4, features=3, data=str(data))          # no "dataset" record
    model, _, info = build(locate(tmp_path / "ck"))
    assert info.kind == "series" and info.features == 3
    assert info.normalization == load_manifest(data).normalization
    write(tmp_path / "tok", 2, vocab_size=100)
    assert build(locate(tmp_path / "tok"))[2].vocab_size == 100


def test_best_takes_the_lowest_recorded_val_loss(tmp_path):
    info = ModelInfo("tokens", 256, None, None)
    for step, loss in [(2, 3.0), (4, 2.5), (6, None), (8, 2.7)]:
        write(tmp_path, step, vocab_size=256, info=info, val_loss=loss)
    assert locate(tmp_path, best=True).step == 4
    assert locate(tmp_path).step == 8


def test_bad_paths_say_what_to_give(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        locate(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        locate(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        locate(tmp_path / "notes.txt")
    write(tmp_path / "ck", 1, vocab_size=256)
    with pytest.raises(CheckpointError, match="records a val_loss"):
        locate(tmp_path / "ck", best=True)


def test_a_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    write(tmp_path, 1, vocab_size=256)
    write(tmp_path, 2, vocab_size=256)
    blob = bytearray((tmp_path / "ckpt-00000002.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / "ckpt-00000002.pt").write_bytes(bytes(blob))
    warnings = []
    assert locate(tmp_path, warn=warnings.append).step == 1
    assert "ckpt-00000002.pt is corrupt" in warnings[0]
    with pytest.raises(CheckpointError, match="is corrupt"):
        locate(tmp_path / "ckpt-00000002.pt")


def test_import_mpirnn_stays_light():
    # The trainer agrees on the config before torch loads; load_checkpoint is imported on first use.
    code = "import sys, mpirnn; print('torch' in sys.modules, callable(mpirnn.load_checkpoint))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
