"""Resume settings, the run state by serial names, and the watchdog's automatic limit.

Plain pytest, no MPI: cd /work/main && .venv/bin/python -m pytest -q tests/test_training_state.py
(gathering a state over ranks is tested in tests/mpi and through the launcher in tests/test_grid_checkpoints.py).
"""

import pytest
import torch

from mpirnn.config import load_config
from mpirnn.distributed import watchdog
from mpirnn.errors import CheckpointError
from mpirnn.models.model import RecurrentModel
from mpirnn.grid import Grid
from mpirnn.parallel.plan import make_plan
from mpirnn.parallel.shard import owns, stage_model
from mpirnn.training.resume import take_settings
from mpirnn.training.state import FORMAT, check_compatible, load_state, upgrade


def saved(**changes):
    """The config a checkpoint of run `first` in directory `ck` records, with changes."""
    config = load_config(None, []).to_dict()
    config["checkpoint"]["dir"] = "ck"
    config["output"].update(run_name="first", metrics="runs/first/metrics.jsonl")
    for name, value in changes.items():
        section, key = name.split(".")
        config[section][key] = value
    return config


def test_resume_takes_the_checkpoints_model_and_data_settings_when_not_given():
    cfg = load_config(None, ["train.steps=50", "checkpoint.dir=ck"])
    adopted, warnings, branch = take_settings(cfg, saved(**{"model.hidden": 512, "data.seq_len": 64, "train.seed": 3,
                                                    "train.lr": 0.5, "output.run_name": "first-20261127"}))
    assert cfg.model.hidden == 512 and cfg.data.seq_len == 64 and cfg.train.seed == 3
    assert cfg.output.run_name == "first-20261127"
    assert cfg.train.lr != 0.5  # training settings are this run's to choose
    assert "model.hidden=512" in adopted and "data.seq_len=64" in adopted and not warnings
    assert branch is None


def test_resume_elsewhere_or_renamed_is_a_branch_with_its_own_run_folder():
    copied = load_config(None, ["checkpoint.dir=copy"])
    assert take_settings(copied, saved())[2] == "first"
    assert copied.output.run_name == "" and copied.output.metrics == ""  # named afresh, like a new run
    renamed = load_config(None, ["checkpoint.dir=ck", "output.run_name=second"])
    assert take_settings(renamed, saved())[2] == "first" and renamed.output.run_name == "second"
    same = load_config(None, ["checkpoint.dir=./ck", "output.run_name=first"])
    assert take_settings(same, saved())[2] is None


def test_a_branch_may_not_write_the_original_runs_metrics():
    clash = load_config(None, ["checkpoint.dir=copy", "output.run_name=first"])
    with pytest.raises(CheckpointError, match="copied from run first .* give the branch its own output.run_name"):
        take_settings(clash, saved())


def test_a_conflicting_model_setting_is_named_not_the_tensor():
    cfg = load_config(None, ["model.hidden=512", "checkpoint.dir=ck"])
    with pytest.raises(CheckpointError, match=r"model.hidden = 512 here, 256 in the checkpoint"):
        take_settings(cfg, saved(**{"model.hidden": 256}))


def test_a_different_data_setting_given_is_kept_with_a_warning():
    cfg = load_config(None, ["data.batch_size=16", "checkpoint.dir=ck"])
    adopted, warnings, _ = take_settings(cfg, saved(**{"data.batch_size": 32}))
    assert cfg.data.batch_size == 16 and warnings == ["data.batch_size = 16 here, 32 in the checkpoint"]


def test_explicit_keys_are_recorded():
    cfg = load_config(None, ["model.hidden=8", "train.steps=3"])
    assert cfg.explicit == {"model.hidden", "train.steps"}
    assert cfg.origin == "default"


def test_watchdog_limit_comes_from_the_run():
    assert watchdog.automatic_limit([]) == watchdog.WARMUP_LIMIT_S
    fast = [0.02] * 10
    assert watchdog.automatic_limit(fast) == watchdog.FLOOR_S
    slow = [10.0] * 10
    assert watchdog.automatic_limit(slow) == watchdog.FACTOR * 10.0
    assert watchdog.automatic_limit(fast, checkpoint=True) == watchdog.CHECKPOINT_LIMIT_S
    # A val evaluation of 40 batches may take 40 steps' limit (each batch is a forward pass).
    assert watchdog.automatic_limit(slow, steps=40) == 40 * watchdog.FACTOR * 10.0


def model(seed=0):
    torch.manual_seed(seed)
    return RecurrentModel("lstm", hidden=6, layers=3, embed=4, vocab_size=9).double()


def trained(net):
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        loss, _ = net(torch.randint(0, 9, (2, 5)), torch.randint(0, 9, (2, 5)))
        loss.backward()
        optimizer.step()
    return optimizer


def stage(p, pp=3):
    grid = Grid(pp, dp=1, pp=pp)
    return make_plan(grid, grid.coords(p), batch_size=2, seq_len=5, layers=3, cell="lstm")


def test_every_parameter_belongs_to_exactly_one_stage():
    names = [n for n, _ in model().named_parameters()]
    for name in names:
        assert sum(owns(name, stage(p)) for p in range(3)) == 1, name


def test_a_format_one_checkpoint_loads_into_a_pipeline_stage():
    net = model()
    optimizer = trained(net)
    old = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": 2}  # as format 1 saved it
    names = [n for n, _ in net.named_parameters()]
    state = upgrade(old, names)
    assert state["format"] == FORMAT and set(state["optimizer"]["state"]) == set(names)
    part = stage_model(model(seed=1), stage(1))
    assert [n for n, _ in part.named_parameters()] == [n for n in names if n.startswith("layers.1.")]
    check_compatible(part, state, "c.pt")
    part_optimizer = torch.optim.Adam(part.parameters(), lr=0.1)
    load_state(part, part_optimizer, state, stage(1))
    for name, tensor in part.state_dict().items():
        assert torch.equal(tensor, net.state_dict()[name])
    by_name = dict(net.named_parameters())
    for param, (name, _) in zip(part.parameters(), part.named_parameters()):
        expected = optimizer.state[by_name[name]]
        assert torch.equal(part_optimizer.state[param]["exp_avg"], expected["exp_avg"])
        assert float(part_optimizer.state[param]["step"]) == float(expected["step"])


def test_a_checkpoint_of_another_shape_is_refused():
    net = model()
    state = upgrade({"model": net.state_dict(), "optimizer": trained(net).state_dict(), "step": 1},
                    [n for n, _ in net.named_parameters()])
    torch.manual_seed(0)
    wider = stage_model(RecurrentModel("lstm", hidden=8, layers=3, embed=4, vocab_size=9).double(), stage(0))
    with pytest.raises(CheckpointError, match=r"layers.0.weight_ih_l0 has shape \(24, 4\) there and \(32, 4\)"):
        check_compatible(wider, state, "c.pt")
