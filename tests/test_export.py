"""Exported models run without mpirnn and equal mpirnn's serial model (python -m mpirnn.export).

    cd /work/main && .venv/bin/python -m pytest -q tests/test_export.py

Every cell, token and series models, each format: the files are opened by a Python that cannot
import mpirnn (`-I -S`, only the site-packages folder on sys.path, none of its .pth files, so not
the editable install), run on fixed inputs, and compared with mpirnn's own serial model. A
checkpoint written on a grid (pp=2, tp=2 under mpirun) exports the same weights as a 1-rank one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from isolated_export import FORMATS, STANDALONE, run_isolated
from support import make_token_dataset, train_under_mpirun

from mpirnn.config import CELLS, load_config
from mpirnn.data.normalization import Normalization
from mpirnn.errors import ConfigError
from mpirnn.export import main as export
from mpirnn.inference.load import build, locate
from mpirnn.inference.model_info import ModelInfo
from mpirnn.models import build_model
from mpirnn import checkpoint

pytest.importorskip("onnxruntime", reason="pip install 'mpirnn[export]'")
pytest.importorskip("safetensors", reason="pip install 'mpirnn[export]'")

KINDS = {"tokens": ModelInfo("tokens", 11, None, None),
         "series": ModelInfo("series", None, 3, Normalization((5.0, -1.0, 0.5), (2.0, 0.0, 0.25)))}

# Runs in the isolated Python (after tests/isolated_export.py's PRELUDE): opens every exported file
# of one format, writes outputs and metadata.
OPEN = r"""
inputs = torch.load(ROOT + "/inputs.pt")
outputs, metadata = {}, {}
for name, x in inputs.items():
    path = f"{ROOT}/{name}.{FORMAT}"
    if FORMAT == "torch":
        m, metadata[name] = open_torch(path)
        outputs[name] = m(x)
    elif FORMAT == "onnx":
        import onnxruntime
        y = onnxruntime.InferenceSession(path).run(["y"], {"x": x.numpy()})[0]
        outputs[name] = torch.from_numpy(y)
        metadata[name] = onnx_metadata(path)
    else:
        m, metadata[name] = open_safetensors(path)
        outputs[name] = m(x).detach()
torch.save({"outputs": outputs, "metadata": metadata}, f"{ROOT}/{FORMAT}-results.pt")
"""


def write_checkpoint(directory: Path, cell: str, info: ModelInfo, extra=()) -> None:
    """A checkpoint as the trainer writes it (serial names, resolved config, "dataset" record);
    `extra`: more --set settings."""
    cfg = load_config(None, [f"model.cell={cell}", "model.hidden=8", "model.layers=2", "model.embed=5",
                             "train.seed=3", *extra])
    model = build_model(cfg, vocab_size=info.vocab_size, features=info.features)
    state = {"format": 2, "step": 2, "model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}}
    checkpoint.save(directory, 2, state, cfg.to_dict(), {"dataset": info.to_json()})


def serial_output(model, x: torch.Tensor) -> torch.Tensor:
    """mpirnn's own serial model: the head over the whole stack from zero states."""
    with torch.no_grad():
        return model.head(model.run_stack(model.input(x), model.zero_state(x.shape[0], x))[0])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{format: results of the isolated Python}, and mpirnn's outputs on the same inputs."""
    root = tmp_path_factory.mktemp("export")
    shutil.copy(STANDALONE, root / "standalone.py")
    generator = torch.Generator().manual_seed(0)
    inputs, expected = {}, {}
    for cell in CELLS:
        for kind, info in KINDS.items():
            name = f"{cell}-{kind}"
            write_checkpoint(root / name, cell, info)
            for fmt in FORMATS:
                assert export(["--checkpoint", str(root / name), "--format", fmt,
                               "--out", str(root / f"{name}.{fmt}")]) == 0
            # A batch and length the export never saw: both dims are dynamic.
            x = (torch.randint(0, 11, (3, 9), generator=generator) if info.tokens
                 else torch.randn(3, 9, 3, generator=generator))
            inputs[name] = x
            expected[name] = serial_output(build(locate(root / name))[0], x)
    torch.save(inputs, root / "inputs.pt")
    return {fmt: run_isolated(root, fmt, OPEN) for fmt in FORMATS}, expected


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_equals_the_serial_model_without_mpirnn(exported, fmt, cell, kind):
    results, expected = exported[0][fmt], exported[1]
    name = f"{cell}-{kind}"
    got, want = results["outputs"][name], expected[name]
    assert got.shape == want.shape == (3, 9, 11 if kind == "tokens" else 3)
    assert (got - want).abs().max().item() < 1e-5
    meta = results["metadata"][name]
    assert json.loads(meta["config"])["model"]["cell"] == cell
    assert json.loads(meta["normalization"]) == KINDS[kind].to_json()["normalization"]
    assert ("token ids" in meta["takes"]) == (kind == "tokens")


def test_torch_file_names_parameters_as_pytorch_and_converts_units(tmp_path):
    info = KINDS["series"]
    write_checkpoint(tmp_path / "ck", "lstm", info)
    export(["--checkpoint", str(tmp_path / "ck"), "--format", "torch", "--out", str(tmp_path / "m.pt")])
    m = torch.jit.load(tmp_path / "m.pt")
    names = dict(m.named_parameters())
    assert {"rnn.weight_ih_l0", "rnn.weight_hh_l1", "rnn.bias_hh_l1", "input.weight", "head.bias"} <= set(names)
    saved = checkpoint.load(tmp_path / "ck", 2)[0]["model"]
    assert torch.equal(names["rnn.weight_hh_l1"], saved["layers.1.weight_hh_l0"])
    data = torch.tensor([[[7.0, 3.0, 1.0]]])
    assert torch.allclose(m.normalize(data), torch.tensor([[[1.0, 4.0, 2.0]]]))
    assert torch.allclose(m.denormalize(m.normalize(data)), data)


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_a_quantile_multi_step_head_exports_whole(tmp_path, fmt):
    # 4 steps ahead x 3 features x 3 quantiles = 36 outputs per step, laid out [H, F, Q].
    write_checkpoint(tmp_path / "ck", "gru", KINDS["series"], ['train.loss="quantile"', "train.horizon=4"])
    assert export(["--checkpoint", str(tmp_path / "ck"), "--format", fmt, "--out", str(tmp_path / f"m.{fmt}")]) == 0
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1))
    if fmt == "torch":
        extra = {"mpirnn.json": ""}
        got = torch.jit.load(tmp_path / "m.torch", _extra_files=extra)(x)
        returns = json.loads(extra["mpirnn.json"])["returns"]
        assert "[batch, time, 4 x 3 x 3]" in returns and "quantile [0.1, 0.5, 0.9]" in returns
    else:
        from safetensors import safe_open

        from mpirnn.inference import standalone
        with safe_open(tmp_path / f"m.{fmt}", "pt") as f:
            meta, serial = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        got = standalone.from_serial(serial, json.loads(meta["config"]), json.loads(meta["dataset"]))(x).detach()
    want = serial_output(build(locate(tmp_path / "ck"))[0], x)
    assert got.shape == want.shape == (2, 5, 36) and (got - want).abs().max().item() < 1e-5


def test_missing_packages_and_folders_are_refused_in_one_line(tmp_path, monkeypatch):
    import importlib.util

    from mpirnn.inference.export import check_format

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"--format onnx needs onnx and onnxruntime: pip install 'mpirnn\[export\]'"):
        check_format("onnx")
    monkeypatch.undo()
    write_checkpoint(tmp_path / "ck", "gru", KINDS["tokens"])
    done = subprocess.run([sys.executable, "-m", "mpirnn.export", "--checkpoint", str(tmp_path / "ck"), "--format",
                           "torch", "--out", str(tmp_path / "missing" / "m.pt")], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "the folder" in done.stderr and "does not exist" in done.stderr


def train(n: int, settings: dict, cwd: Path) -> None:
    done = train_under_mpirun(n, settings, cwd)
    assert done.returncode == 0, f"{settings}\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def one_rank_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid-export")
    data = make_token_dataset(root / "tokens")
    common = {"model.cell": "lstm", "model.hidden": 8, "model.layers": 2, "model.embed": 4, "model.dtype": "float64",
              "data.path": str(data), "data.seq_len": 12, "data.batch_size": 4, "train.steps": 2, "train.seed": 5,
              "train.device": "cpu", "output.progress": "false", "output.sample_bytes": 0}
    train(1, {**common, "checkpoint.dir": str(root / "one")}, root)
    export(["--checkpoint", str(root / "one"), "--format", "safetensors", "--out", str(root / "one.safetensors")])
    return root, common


@pytest.mark.timeout(300)
@pytest.mark.parametrize("axis", ["pp", "tp"])
def test_a_checkpoint_from_any_grid_exports_the_same_weights(one_rank_export, axis):
    from safetensors.torch import load_file

    root, common = one_rank_export
    train(2, {**common, f"parallel.{axis}": 2, "parallel.dp": 1, "checkpoint.dir": str(root / axis)}, root)
    export(["--checkpoint", str(root / axis), "--format", "safetensors", "--out", str(root / f"{axis}.safetensors")])
    one, grid = load_file(root / "one.safetensors"), load_file(root / f"{axis}.safetensors")
    assert list(one) == list(grid)
    for name in one:
        assert torch.allclose(one[name], grid[name], rtol=0, atol=1e-12), name
    # Trained for real: the weights moved away from the seed's initial ones.
    assert not torch.equal(one["head.weight"], build_model(load_config(None, [f"{k}={v}" for k, v in common.items()]),
                                                           vocab_size=256).state_dict()["head.weight"])
