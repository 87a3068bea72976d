"""train.precision: the config checks, the refusals, and what stays float32 in a bf16 step.

    python -m pytest -q tests/test_precision.py
"""

from __future__ import annotations

import pytest
import torch

from mpirnn import config
from mpirnn.errors import ConfigError
from mpirnn.host import native_bf16
from mpirnn.models.model import RecurrentModel
from mpirnn.models.precision import FLOAT32, for_device, refusal, serial_loss
from mpirnn.training import resume


def test_config_accepts_the_precisions_and_refuses_the_rest():
    assert config.load_config(overrides=["train.precision=bf16"]).train.precision == "bf16"
    with pytest.raises(ConfigError, match="did you mean 'bf16'"):
        config.load_config(overrides=["train.precision=bf61"])
    with pytest.raises(ConfigError, match="model.dtype = float32"):
        config.load_config(overrides=["train.precision=bf16", "model.dtype=float64"])
    with pytest.raises(ConfigError, match="CUDA only"):
        config.load_config(overrides=["train.precision=fp16", "train.device=cpu"])


def test_native_bf16_reads_the_cpu_flags():
    assert native_bf16({"avx2", "fma"}) == []
    assert native_bf16({"avx512_bf16", "amx_bf16", "amx_tile"}) == ["avx512_bf16", "amx_bf16"]


def test_refusals_on_a_cpu():
    assert refusal("float32", "cpu") is None
    assert "CUDA only" in refusal("fp16", "cpu")
    bf16 = refusal("bf16", "cpu")
    assert (bf16 is None) == bool(native_bf16())
    if bf16 is not None:
        assert "\n" not in bf16 and "no native bf16" in bf16
        with pytest.raises(ConfigError, match="no native bf16"):
            for_device("bf16", "cpu")
    assert for_device("float32", "cpu") == FLOAT32


@pytest.mark.parametrize("cell", ["lstm", "mingru", "minlstm", "gru"])
def test_a_bf16_step_keeps_weights_gradients_states_and_optimizer_state_float32(cell):
    torch.manual_seed(0)
    model = RecurrentModel(cell, hidden=16, layers=2, embed=8, vocab_size=13)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, targets = torch.randint(0, 13, (3, 9)), torch.randint(0, 13, (3, 9))
    state = model.zero_state(3, inputs)
    bf16 = for_device("bf16", "cpu", emulate=True)
    loss, final = serial_loss(model, inputs, targets, state, bf16)
    expected, _ = serial_loss(model, inputs, targets, state, FLOAT32)
    assert loss.dtype == final.dtype == torch.float32
    assert abs(loss.item() - expected.item()) < 1e-2 * abs(expected.item())  # bf16 rounding, no more
    loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        assert param.dtype == param.grad.dtype == torch.float32, name
        assert all(v.dtype == torch.float32 for v in optimizer.state[param].values() if v.is_floating_point()), name


def test_a_checkpoint_moves_between_precisions():
    """Checkpoints hold the float32 master weights; train.precision is this run's own setting, never
    adopted from (or checked against) the checkpoint's config."""
    saved = config.load_config(overrides=["train.precision=bf16"]).to_dict()
    here = config.load_config()
    adopted, warnings, _ = resume.take_settings(here, saved)
    assert here.train.precision == "float32"
    assert not [text for text in adopted + warnings if "precision" in text]
