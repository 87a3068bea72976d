"""Tests for crash-safe checkpoints (mpirnn.checkpoint): round trip, pruning, corruption, code-free files.

Plain pytest, no MPI: cd /work/main && .venv/bin/python -m pytest -q tests/test_checkpoint.py
"""

import hashlib
import json
import pickletools
import zipfile

import pytest
import torch

from mpirnn import checkpoint
from mpirnn.errors import CheckpointError


def make_state(hidden=8, seed=0, step=3):
    """A model + Adam state like the trainer's, after a couple of real optimizer steps."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.LSTM(4, hidden, batch_first=True))
    model.add_module("head", torch.nn.Linear(hidden, 5))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        out, _ = model[0](torch.randn(2, 3, 4))
        model.head(out).square().mean().backward()
        optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "carried": torch.randn(2, 1, 2, hidden, dtype=torch.float64)}
    return model, state


CONFIG = {"model": {"hidden": 8, "cell": "lstm"}, "train": {"steps": 10}}


def assert_same(a, b):
    """Nested dicts/lists of tensors and plain values, compared exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip(tmp_path):
    model, state = make_state()
    path = checkpoint.save(tmp_path, 3, state, CONFIG)
    assert path == tmp_path / "ckpt-00000003.pt"
    assert checkpoint.steps(tmp_path) == [3]
    assert checkpoint.verify(tmp_path, 3) is None
    loaded, meta = checkpoint.load(tmp_path, 3)
    assert_same(state, loaded)
    assert meta["step"] == 3 and meta["config"] == CONFIG and meta["file"] == "ckpt-00000003.pt"
    assert meta["bytes"] == path.stat().st_size
    # The loaded state restores a fresh model and optimizer.
    fresh, _ = make_state(seed=1)
    assert not torch.equal(fresh.state_dict()["head.weight"], model.state_dict()["head.weight"])
    fresh.load_state_dict(loaded["model"])
    assert_same(fresh.state_dict(), model.state_dict())
    optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    optimizer.load_state_dict(loaded["optimizer"])
    assert_same(optimizer.state_dict()["state"], state["optimizer"]["state"])


def test_the_json_holds_checksum_step_and_config(tmp_path):
    _, state = make_state()
    checkpoint.save(tmp_path, 12, state, CONFIG)
    meta = json.loads((tmp_path / "ckpt-00000012.json").read_text())
    assert meta["sha256"] == hashlib.sha256((tmp_path / "ckpt-00000012.pt").read_bytes()).hexdigest()
    assert meta["step"] == 12 and meta["config"] == CONFIG
    # No temporary files are left behind by the atomic writes.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000012.json", "ckpt-00000012.pt"]


def test_files_load_with_weights_only_and_hold_no_code(tmp_path):
    _, state = make_state()
    path = checkpoint.save(tmp_path, 1, state, CONFIG)
    torch.load(path, weights_only=True)  # raises on anything that is not tensors and plain values
    # The pickle inside the zip names only torch's tensor rebuild helpers and storages, no other code.
    with zipfile.ZipFile(path) as archive:
        pickle_bytes = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    globals_used = set()
    for opcode, arg, _ in pickletools.genops(pickle_bytes):
        if opcode.name == "GLOBAL":
            globals_used.add(arg)
    assert globals_used, "no globals found: the pickle format changed, update this test"
    for name in globals_used:
        module = name.split()[0]
        assert module == "torch" or module.startswith("torch.") or name == "collections OrderedDict", \
            f"unexpected global {name!r}"


def test_a_state_holding_code_cannot_be_loaded(tmp_path):
    """The loader itself refuses pickled code (weights_only=True), with a CheckpointError."""
    _, state = make_state()
    checkpoint.save(tmp_path, 1, state, CONFIG)
    evil = {"model": state["model"], "hook": make_state}  # a function: weights_only must reject it
    torch.save(evil, tmp_path / "ckpt-00000001.pt")
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        checkpoint.load(tmp_path, 1)


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keep_k_prunes_the_oldest(tmp_path, keep):
    _, state = make_state()
    owned = []
    for step in (2, 4, 6, 8, 10):
        checkpoint.save(tmp_path, step, state, CONFIG)
        owned = checkpoint.prune(tmp_path, [*owned, step], keep)
    kept = [2, 4, 6, 8, 10][-keep:]
    assert owned == kept
    assert checkpoint.steps(tmp_path) == kept
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"ckpt-{s:08d}.json" for s in kept] + [f"ckpt-{s:08d}.pt" for s in kept])


def test_pruning_never_touches_another_runs_checkpoints(tmp_path):
    # The bug: a fresh run into a directory holding checkpoints 5 and 10 of another run pruned them.
    _, state = make_state()
    for step in (5, 10):
        checkpoint.save(tmp_path, step, state, CONFIG)
    owned = []
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, state, CONFIG)
        owned = checkpoint.prune(tmp_path, [*owned, step], keep=1)
    assert checkpoint.steps(tmp_path) == [3, 5, 10]


def test_a_fresh_start_in_a_used_directory_is_refused(tmp_path):
    _, state = make_state()
    assert checkpoint.refuse_fresh_start(tmp_path / "new", overwrite=False) == []
    for step in (5, 10):
        checkpoint.save(tmp_path, step, state, CONFIG)
    with pytest.raises(CheckpointError, match=r"2 checkpoint\(s\).*newest: step 10.*checkpoint\.resume=true.*"
                                              r"checkpoint\.overwrite=true"):
        checkpoint.refuse_fresh_start(tmp_path, overwrite=False)
    assert checkpoint.refuse_fresh_start(tmp_path, overwrite=True) == [5, 10]
    assert checkpoint.steps(tmp_path) == [5, 10]  # refusing (or agreeing to replace) deletes nothing


def test_no_checkpoint_directory(tmp_path):
    assert checkpoint.steps(tmp_path / "missing") == []
    assert checkpoint.newest_valid(tmp_path / "missing") is None
    assert checkpoint.newest_valid(tmp_path) is None


def three_checkpoints(directory):
    states = {}
    for step in (1, 2, 3):
        _, states[step] = make_state(seed=step, step=step)
        checkpoint.save(directory, step, states[step], CONFIG)
    return states


def flip_bytes(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [flip_bytes, truncate, lambda p: p.unlink(), lambda p: p.write_bytes(b"")],
                         ids=["flipped", "truncated", "deleted", "emptied"])
def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning(tmp_path, damage):
    states = three_checkpoints(tmp_path)
    damage(tmp_path / "ckpt-00000003.pt")
    warnings = []
    step = checkpoint.newest_valid(tmp_path, warn=warnings.append)
    assert step == 2
    assert len(warnings) == 1
    assert "ckpt-00000003.pt" in warnings[0] and warnings[0].startswith("mpirnn: warning:")
    assert "trying an older one" in warnings[0]
    loaded, meta = checkpoint.load(tmp_path, step)
    assert meta["step"] == 2
    assert_same(loaded, states[2])


def test_two_corrupt_checkpoints_fall_back_twice(tmp_path):
    three_checkpoints(tmp_path)
    flip_bytes(tmp_path / "ckpt-00000003.pt")
    truncate(tmp_path / "ckpt-00000002.pt")
    warnings = []
    assert checkpoint.newest_valid(tmp_path, warn=warnings.append) == 1
    assert len(warnings) == 2


def test_all_corrupt_is_an_error_not_a_fresh_start(tmp_path):
    # Starting over silently would overwrite the run's metrics and lose its progress.
    three_checkpoints(tmp_path)
    for step in (1, 2, 3):
        flip_bytes(tmp_path / f"ckpt-{step:08d}.pt")
    warnings = []
    with pytest.raises(CheckpointError, match="none of the 3 checkpoint"):
        checkpoint.newest_valid(tmp_path, warn=warnings.append)
    assert len(warnings) == 3


def test_no_checkpoint_at_all_gives_none(tmp_path):
    assert checkpoint.newest_valid(tmp_path) is None
    assert checkpoint.newest_valid(tmp_path / "missing") is None


def test_stale_temporaries_are_removed(tmp_path):
    three_checkpoints(tmp_path)
    (tmp_path / ".ckpt-00000004.pt.tmp-123").write_bytes(b"half")
    checkpoint.remove_stale_temporaries(tmp_path)
    assert not list(tmp_path.glob(".ckpt-*")) and checkpoint.newest_valid(tmp_path) == 3


def test_the_default_warning_goes_to_stderr(tmp_path, capsys):
    three_checkpoints(tmp_path)
    truncate(tmp_path / "ckpt-00000003.pt")
    assert checkpoint.newest_valid(tmp_path) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "mpirnn: warning:" in captured.err and "ckpt-00000003.pt" in captured.err


def test_a_corrupt_json_is_skipped(tmp_path):
    three_checkpoints(tmp_path)
    (tmp_path / "ckpt-00000003.json").write_text("{not json")
    warnings = []
    assert checkpoint.newest_valid(tmp_path, warn=warnings.append) == 2
    assert "unreadable" in warnings[0]


def test_a_pt_without_json_is_ignored(tmp_path):
    states = three_checkpoints(tmp_path)
    # A newer checkpoint whose write stopped before its JSON: never taken, not even warned about.
    _, newer = make_state(seed=9, step=4)
    torch.save(newer, tmp_path / "ckpt-00000004.pt")
    assert checkpoint.steps(tmp_path) == [1, 2, 3]
    warnings = []
    assert checkpoint.newest_valid(tmp_path, warn=warnings.append) == 3
    assert warnings == []
    loaded, _ = checkpoint.load(tmp_path, 3)
    assert_same(loaded, states[3])


def test_a_leftover_temporary_file_is_ignored(tmp_path):
    three_checkpoints(tmp_path)
    (tmp_path / ".ckpt-00000004.json.tmp-123").write_text("{}")
    (tmp_path / ".ckpt-00000004.pt.tmp-123").write_bytes(b"partial")
    assert checkpoint.newest_valid(tmp_path, warn=pytest.fail) == 3


def test_check_compatible_accepts_the_same_shape():
    _, state = make_state(hidden=8)
    other, _ = make_state(hidden=8, seed=5)
    checkpoint.check_compatible(other, state, "x.pt")


def test_check_compatible_refuses_a_different_hidden_size():
    _, state = make_state(hidden=8)
    bigger, _ = make_state(hidden=16)
    with pytest.raises(CheckpointError) as info:
        checkpoint.check_compatible(bigger, state, "runs/ckpt/ckpt-00000003.pt")
    message = str(info.value)
    assert "runs/ckpt/ckpt-00000003.pt" in message
    assert "different model" in message
    assert "(32, 4)" in message and "(64, 4)" in message  # the first differing shape, saved vs here
    assert "checkpoint.dir" in message                    # what to do


def test_check_compatible_refuses_missing_and_extra_parameters():
    _, state = make_state()
    smaller = torch.nn.Sequential(torch.nn.LSTM(4, 8, batch_first=True))
    with pytest.raises(CheckpointError, match="lacks .*head"):
        checkpoint.check_compatible(smaller, state, "c.pt")
    bigger = torch.nn.Sequential(torch.nn.LSTM(4, 8, batch_first=True))
    bigger.add_module("head", torch.nn.Linear(8, 5))
    bigger.add_module("extra", torch.nn.Linear(5, 5))
    with pytest.raises(CheckpointError, match="has no parameter extra"):
        checkpoint.check_compatible(bigger, state, "c.pt")


def test_saving_after_resuming_past_a_broken_newer_checkpoint_keeps_the_new_one(tmp_path):
    # keep=1 and checkpoint 3 is broken, so a run resumes from an older one and saves step 2 again:
    # the broken, newer step 3 must not count among the kept ones (it would prune the new save).
    three_checkpoints(tmp_path)
    flip_bytes(tmp_path / "ckpt-00000003.pt")
    assert checkpoint.newest_valid(tmp_path, warn=lambda _: None) == 2
    _, state = make_state(seed=9, step=2)
    checkpoint.save(tmp_path, 2, state, CONFIG)
    assert checkpoint.prune(tmp_path, [1, 2], keep=1) == [2]
    # The broken step 3 is not this run's to delete; it is skipped again at the next resume.
    assert checkpoint.steps(tmp_path) == [2, 3]
    assert checkpoint.newest_valid(tmp_path, warn=lambda _: None) == 2
