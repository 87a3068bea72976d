"""What the checkpoint commands (evaluate, generate, forecast) share.

Each runs under `mpirun -n N` like the trainer: usage errors are printed by rank 0 only,
every check the user can act on runs on every rank inside `agree` (one line, exit 1 on all
ranks, nothing written), and result files are written whole: each to a temporary file
first, then all renamed into place, so a failure leaves none of them half-written.

    python -m pytest -q tests/test_inference_commands.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mpirnn.distributed.agreement import agree
from mpirnn.errors import DataError, DataMismatchError, UsageError
from mpirnn.inference.load import Located, locate


def add_checkpoint_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="a run's checkpoint.dir (its newest intact checkpoint) or one ckpt-NNNNNNNN.pt")
    parser.add_argument("--best", action="store_true",
                        help="take the best checkpoint by the run's checkpoint.best_metric (lowest val_loss by "
                             "default) instead of the newest")


def find_checkpoint(world, path: str, best: bool) -> Located:
    """The checkpoint on every rank (rank 0 alone prints warnings about broken newer ones)."""
    warn = (lambda text: print(text, file=sys.stderr, flush=True)) if world.rank == 0 else (lambda text: None)
    return agree(world, locate, path, best, warn)


def check_model_fits(info, manifest, checkpoint_path) -> None:
    """Refuse data the checkpoint's model cannot read: another kind, vocabulary or feature count,
    or another task, other classes or another number of targets (bad input data: exit 2)."""
    data = manifest.root
    check_task_fits(info, manifest, checkpoint_path)
    if info.tokens != manifest.is_tokens:
        raise DataError(f"checkpoint {checkpoint_path} holds {info.describe()} but {data} is {manifest.kind} data: "
                        f"use the dataset the model was trained on (or one prepared the same way)")
    if info.tokens and manifest.vocab_size != info.vocab_size:
        raise DataError(f"checkpoint {checkpoint_path} holds {info.describe()} but {data} has vocab_size="
                        f"{manifest.vocab_size}: the vocabularies must be the same")
    if not info.tokens and manifest.features != info.features:
        raise DataError(f"checkpoint {checkpoint_path} holds {info.describe()} but {data} has "
                        f"{manifest.features} feature(s): the feature counts must be the same")


def check_task_fits(info, manifest, checkpoint_path) -> None:
    """A labelled model scores only data of its own task and classes (names in the same order) or
    targets: a class id means a class only in the dataset that numbered it."""
    model, data = info.task_spec, manifest.task_spec
    if model.task != data.task:
        raise DataMismatchError(f"checkpoint {checkpoint_path} holds a model of task {model.task!r} but "
                                f"{manifest.root} holds task {data.task!r}: use a dataset of the model's task")
    if model.classes != data.classes:
        def shown(names):
            return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        raise DataMismatchError(f"checkpoint {checkpoint_path} predicts {len(model.classes)} classes "
                                f"({shown(model.classes)}) but {manifest.root} has {len(data.classes)} "
                                f"({shown(data.classes)}): the classes and their order must be the same "
                                f"(prepare the data with --classes {','.join(model.classes)})")
    if model.targets != data.targets:
        raise DataMismatchError(f"checkpoint {checkpoint_path} predicts {model.targets} target(s) but "
                                f"{manifest.root} has {data.targets}: the targets must be the same")


def write_whole(files: dict) -> None:
    """Write {path: bytes} so that either every file is complete or none was touched."""
    staged = []
    try:
        for path, payload in files.items():
            path = Path(path)
            if path.parent and not path.parent.is_dir():
                raise UsageError(f"cannot write {path}: the folder {path.parent} does not exist")
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(payload)
            staged.append((tmp, path))
    except OSError as exc:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror}") from None
    except UsageError:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in staged:
        os.replace(tmp, path)


def on_rank0(world, action, *args):
    """Run `action` on rank 0 only, with its UsageErrors reported on every rank (the others wait)."""
    return agree(world, lambda: action(*args) if world.rank == 0 else None)
