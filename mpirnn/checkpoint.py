"""Crash-safe checkpoints: atomic writes, checksums, the last K kept, code-free loading.

A checkpoint is `ckpt-00000120.pt` (torch.save of tensors and plain values only, so
`torch.load(weights_only=True)` can read it and it can never run code) plus
`ckpt-00000120.json` holding its SHA-256, the step and the resolved config. Both are
written to a temporary file, fsynced and renamed, the JSON last: a checkpoint without a
matching JSON is incomplete and is never used. At resume the newest checkpoint whose
checksum matches is taken; corrupt or partial ones are skipped with a warning.

The directory is checked before the first step (`check_directory`: creatable, a directory,
writable, with room for two checkpoints), and a write that fails for a reason of the file
system (a full disk, a quota, a mount gone read-only) removes what it had half-written and
raises `CheckpointWriteError` naming the path and the bytes needed; earlier checkpoints are
never touched by a failed write (docs/reliability.md).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch

from mpirnn import faults
from mpirnn.errors import CheckpointError

NAME = re.compile(r"^ckpt-(\d{8})\.json$")
PROBE = ".mpirnn-write-test"
METADATA_BYTES = 64 * 1024  # the JSON beside each checkpoint (the config) and torch.save's framing


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (the file system's reason, the path and the bytes needed)."""


def expected_bytes(parameters: int, element_bytes: int, optimizer_copies: int = 2) -> int:
    """About how large one checkpoint of a model with `parameters` values is: the weights and
    Adam's two moment estimates, plus the JSON and framing."""
    return parameters * element_bytes * (1 + optimizer_copies) + METADATA_BYTES


def _size(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return ""


def check_directory(directory: str | Path, one_checkpoint_bytes: int) -> str | None:
    """Refuse (CheckpointError) a checkpoint.dir that cannot be written, before any training.

    It must exist or be creatable, be a directory, and take a test file. Returns a warning
    when the free space (where the file system says) cannot hold two checkpoints, else None.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory")
        probe = directory / f"{PROBE}-{os.getpid()}"
        probe.write_bytes(b"mpirnn")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise CheckpointError(f"checkpoint.dir {directory} cannot be used: {reason.lower()}"
                              f"{_which_part(exc, directory)}; choose a writable directory for checkpoint.dir "
                              f"(checked before step 1, so nothing was trained)") from None
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return None
    if free < 2 * one_checkpoint_bytes:
        return (f"checkpoint.dir {directory} has {_size(free)} free, and a checkpoint of this model takes about "
                f"{_size(one_checkpoint_bytes)}: two will not fit (a checkpoint is written whole before an older "
                f"one is removed); free some space or choose another checkpoint.dir")
    return None


def _which_part(exc: OSError, directory: Path) -> str:
    """' (PATH)' when the error is about another path than the directory itself (a parent)."""
    name = getattr(exc, "filename", None)
    if name and Path(name) != directory and PROBE not in str(name):
        return f" ({name})"
    return ""


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data[: len(data) // 2])
            faults.checkpoint_pause()  # tests kill the job here, half-way through a write
            handle.write(data[len(data) // 2:])
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a failed write leaves nothing behind (a killed one may: see above)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save(directory: str | Path, step: int, state: dict, config: dict, extra: dict | None = None) -> Path:
    """Write checkpoint `step` (the number of optimizer steps done); nothing else is touched.

    `extra` adds fields to the JSON: what the model reads ("dataset") and, where the run
    evaluated at this step, "val_loss" (docs/checkpoints.md)."""
    directory = Path(directory)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    weights = directory / f"ckpt-{step:08d}.pt"
    meta = {"step": step, "file": weights.name, "sha256": hashlib.sha256(payload).hexdigest(),
            "bytes": len(payload), "config": config, **(extra or {})}
    described = json.dumps(meta, indent=1).encode()
    existed = weights.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(weights, payload)
        _atomic_write(directory / f"ckpt-{step:08d}.json", described)
    except OSError as exc:
        if not existed and not (directory / f"ckpt-{step:08d}.json").exists():
            weights.unlink(missing_ok=True)  # a .pt without its JSON is never used: no fuller disk for it
        raise CheckpointWriteError(
            f"checkpoint {weights} could not be written: {exc.strerror or exc} (it needs "
            f"{_size(len(payload) + len(described))}"
            f"{_free_text(directory)}); nothing half-written was left and earlier checkpoints are kept") from None
    return weights


def _free_text(directory: Path) -> str:
    try:
        return f"; {_size(shutil.disk_usage(directory).free)} free there"
    except OSError:
        return ""


def remove(directory: str | Path, doomed) -> None:
    """Delete checkpoints by step: the JSON first, so a half-removed one is never taken as valid."""
    directory = Path(directory)
    for step in doomed:
        (directory / f"ckpt-{step:08d}.json").unlink(missing_ok=True)
        (directory / f"ckpt-{step:08d}.pt").unlink(missing_ok=True)


def prune(directory: str | Path, owned: list[int], keep: int) -> list[int]:
    """Keep the newest `keep` of `owned` (this run's own checkpoints); returns the ones kept.

    Only steps in `owned` are ever deleted: a directory may hold checkpoints of another run
    (kept on purpose, see `refuse_fresh_start`), and those are not this run's to prune.
    """
    owned = sorted(set(owned))
    remove(directory, owned[:-keep])
    return owned[-keep:]


def refuse_fresh_start(directory: str | Path, overwrite: bool) -> list[int]:
    """A fresh run (checkpoint.resume = false) must not mix with another run's checkpoints.

    Raises a CheckpointError naming the newest step and the two ways on, unless `overwrite`;
    returns the steps already there (with `overwrite`, the caller removes them once its own
    first checkpoint is safely written, so a failed start loses nothing).
    """
    found = steps(Path(directory))
    if found and not overwrite:
        raise CheckpointError(
            f"checkpoint.dir {directory} already holds {len(found)} checkpoint(s) of another run (newest: step "
            f"{found[-1]}): continue that run with --set checkpoint.resume=true, or replace them with "
            f"--set checkpoint.overwrite=true (or choose another checkpoint.dir)")
    return found


def steps(directory: str | Path) -> list[int]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for name in os.listdir(directory) if (m := NAME.match(name)))


def verify(directory: Path, step: int) -> str | None:
    """None when checkpoint `step` is complete and intact, else why not."""
    try:
        meta = json.loads((directory / f"ckpt-{step:08d}.json").read_text())
        payload = (directory / meta["file"]).read_bytes()
    except (OSError, ValueError, KeyError) as exc:
        return f"unreadable ({exc.__class__.__name__})"
    if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
        return "corrupt: its checksum does not match (a partial or damaged write)"
    return None


def newest_valid(directory: str | Path, warn=lambda text: print(text, file=sys.stderr)) -> int | None:
    """The newest intact checkpoint's step, warning about each newer one that is not.

    None when the directory holds no checkpoint at all (a first run); a CheckpointError
    when it holds some and none is intact, rather than silently starting over.
    """
    directory = Path(directory)
    found = steps(directory)
    for step in reversed(found):
        problem = verify(directory, step)
        if problem is None:
            return step
        warn(f"mpirnn: warning: checkpoint {directory / f'ckpt-{step:08d}.pt'} is {problem}; trying an older one")
    if found:
        raise CheckpointError(f"none of the {len(found)} checkpoint(s) in {directory} is intact: use another "
                              f"checkpoint.dir (or remove them) to start over, or restore one from a backup")
    return None


def remove_stale_temporaries(directory: str | Path) -> None:
    """Half-written files of writers that were killed (never read; safe to delete once nobody writes)."""
    directory = Path(directory)
    if directory.is_dir():
        for leftover in directory.glob(".ckpt-*.tmp-*"):
            leftover.unlink(missing_ok=True)


def load(directory: str | Path, step: int, device="cpu") -> tuple[dict, dict]:
    """(state, meta) of checkpoint `step`, read without running any code from the file."""
    directory = Path(directory)
    meta = json.loads((directory / f"ckpt-{step:08d}.json").read_text())
    try:
        state = torch.load(directory / meta["file"], map_location=device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {directory / meta['file']} cannot be loaded: {exc}") from None
    return state, meta


def check_compatible(model: torch.nn.Module, state: dict, path: str) -> None:
    """Refuse a checkpoint of another model shape with a message naming the first difference."""
    saved = state["model"]
    for name, tensor in model.state_dict().items():
        if name not in saved:
            raise CheckpointError(f"checkpoint {path} has no parameter {name}: it is from a different model; "
                                  f"use a new checkpoint.dir or the matching model settings")
        if tuple(saved[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint {path} is from a different model: {name} has shape {tuple(saved[name].shape)} "
                f"there and {tuple(tensor.shape)} here; use a new checkpoint.dir or the matching model settings")
    extra = set(saved) - set(model.state_dict())
    if extra:
        raise CheckpointError(f"checkpoint {path} has parameters this model lacks ({sorted(extra)[0]}, ...): "
                              f"it is from a different model (model.cell?)")
