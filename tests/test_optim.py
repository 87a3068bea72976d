"""The optimizer and the learning-rate schedule (mpirnn/training/optim.py) and their config keys.

Plain pytest, no MPI: cd /work/main && .venv/bin/python -m pytest -q tests/test_optim.py
(the resume-exactness of these settings is tests/mpi/test_evaluation.py).
"""

import math

import pytest
import torch

from mpirnn.config import load_config
from mpirnn.errors import ConfigError
from mpirnn.training.optim import apply_settings, lr_at, make_optimizer, set_lr


def train(*overrides):
    return load_config(None, list(overrides)).train


def test_constant_is_the_old_behaviour():
    t = train("train.lr=0.01", "train.steps=5")
    assert [lr_at(k, t) for k in range(1, 6)] == [0.01] * 5


def test_linear_warmup_reaches_lr_at_the_last_warmup_step():
    t = train("train.lr=0.01", "train.steps=10", "train.warmup_steps=4")
    assert [lr_at(k, t) for k in range(1, 6)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01])


def test_cosine_runs_from_lr_to_min_lr_after_warmup():
    t = train("train.lr=0.01", "train.steps=12", "train.warmup_steps=2", "train.schedule=cosine",
              "train.min_lr=0.001")
    rates = [lr_at(k, t) for k in range(1, 13)]
    assert rates[2] == pytest.approx(0.01)          # the first step after warm-up
    assert rates[-1] == pytest.approx(0.001)        # the last step: min_lr
    assert all(a >= b for a, b in zip(rates[2:], rates[3:]))
    middle = 2 + (12 - 2 - 1) / 2 + 1               # half-way through the decay
    assert lr_at(middle, t) == pytest.approx(0.001 + 0.009 * 0.5)


def test_rate_is_a_pure_function_of_the_step():
    # What makes resuming exact: nothing about the schedule lives in the optimizer or a checkpoint.
    t = train("train.steps=100", "train.schedule=cosine", "train.warmup_steps=10")
    assert [lr_at(k, t) for k in range(1, 101)] == [lr_at(k, t) for k in range(1, 101)]
    assert all(math.isfinite(lr_at(k, t)) and lr_at(k, t) > 0 for k in range(1, 100))
    assert lr_at(100, t) == 0.0  # min_lr (default 0) at the last step


def test_adam_and_adamw_differ_only_in_how_weight_decay_applies():
    def one_step(kind, decay):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.ones(3))
        opt = make_optimizer([p], train(f"train.optimizer={kind}", f"train.weight_decay={decay}"))
        p.grad = torch.tensor([0.1, -0.2, 0.3])
        opt.step()
        return p.detach().clone(), opt

    adam, opt_a = one_step("adam", 0.0)
    adamw, opt_w = one_step("adamw", 0.0)
    assert torch.equal(adam, adamw)
    assert isinstance(opt_w, torch.optim.AdamW) and type(opt_a) is torch.optim.Adam
    decayed_w, _ = one_step("adamw", 0.5)
    decayed_a, _ = one_step("adam", 0.5)
    assert not torch.equal(decayed_w, adamw) and not torch.equal(decayed_a, decayed_w)


def test_settings_govern_after_loading_another_optimizers_state():
    p = torch.nn.Parameter(torch.ones(2))
    saved = make_optimizer([p], train("train.optimizer=adam", "train.weight_decay=0.3")).state_dict()
    opt = make_optimizer([p], train("train.optimizer=adamw", "train.weight_decay=0.01"))
    opt.load_state_dict(saved)
    apply_settings(opt, train("train.optimizer=adamw", "train.weight_decay=0.01"))
    assert opt.param_groups[0]["weight_decay"] == 0.01
    if "decoupled_weight_decay" in opt.param_groups[0]:
        assert opt.param_groups[0]["decoupled_weight_decay"] is True
    set_lr(opt, 0.123)
    assert opt.param_groups[0]["lr"] == 0.123


@pytest.mark.parametrize("override, words", [
    ("train.optimizer=sgd", "train.optimizer = 'sgd': choose one of adam, adamw"),
    ("train.schedule=linear", "train.schedule = 'linear': choose one of constant, cosine"),
    ("train.weight_decay=-1", "train.weight_decay = -1.0 must not be negative"),
    ("train.warmup_steps=-2", "train.warmup_steps = -2 must not be negative"),
    ("train.eval_every=-1", "train.eval_every = -1 must not be negative"),
    ("train.min_lr=1", "train.min_lr = 1.0 is above train.lr"),
])
def test_bad_settings_are_refused(override, words):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert words in str(caught.value)
