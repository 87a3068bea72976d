"""What a labelled dataset (tag, classify, regress) changes in a training run: the sequence
length (each row is one whole sequence), the head's width, class weights and the loader.

The dataset decides the task (its manifest records it); docs/tasks.md has the contract.
    python -m pytest -q tests/test_training_tasks.py
"""

from __future__ import annotations

import sys

import numpy as np

from mpirnn.data.labelled_loader import LabelledBatchLoader
from mpirnn.data.labelled_targets import balanced_weights
from mpirnn.data.loader import BatchLoader
from mpirnn.data.manifest import Manifest
from mpirnn.data.row_stats import lengths_and_counts
from mpirnn.errors import ConfigError


def labelled(manifest: Manifest) -> bool:
    return manifest.task_spec.labelled


def adopt_row_length(cfg, manifest: Manifest, say: bool) -> None:
    """A labelled row is one sequence: data.seq_len becomes the rows' stored (padded) length,
    and the model reads each row from its first step to its own length."""
    if not labelled(manifest) or cfg.data.seq_len == manifest.seq_len:
        return
    if say and "data.seq_len" in cfg.explicit:
        print(f"mpirnn: note: data.seq_len = {cfg.data.seq_len} is not used: each row of {manifest.root} is one "
              f"sequence of up to {manifest.seq_len} steps, read whole (docs/tasks.md)", file=sys.stderr, flush=True)
    cfg.data.seq_len = manifest.seq_len


def auto_horizon(manifest: Manifest, cfg) -> int:
    """train.horizon = "auto": for a series stream with a known season, a direct head over the next
    min(season, data.seq_len // 4) steps; 1 (the next step only) for everything else. Measured on
    weekly CO2 and monthly El Nino (docs/forecasting.md, "Defaults"): trained for the horizon,
    the far forecasts beat a next-step model rolled forward; a quarter of the window leaves each
    window enough forecast origins (seq_len / H), and a stateful run keeps the next step."""
    if manifest.is_tokens or labelled(manifest) or not manifest.is_stream or manifest.season is None \
            or cfg.train.stateful:
        return 1
    return max(1, min(manifest.season, cfg.data.seq_len // 4))


def adopt_horizon(cfg, manifest: Manifest) -> None:
    """Resolve train.horizon = "auto" against the dataset (auto_horizon); the resolved number is
    what the model, the loader and the checkpoint's config see."""
    if cfg.train.horizon == "auto":
        cfg.train.horizon = auto_horizon(manifest, cfg)


def head_outputs(manifest: Manifest) -> int | None:
    """The head's width for a labelled task (classes, or regression targets); None for `next`."""
    spec = manifest.task_spec
    return (spec.n_classes or spec.targets) if spec.labelled else None


def check_objective(cfg, manifest: Manifest) -> None:
    """train.loss, train.quantiles and train.horizon shape a next-step series head only
    (mpirnn/models/series_head.py): refuse them, in one line, for tokens and labelled tasks."""
    t = cfg.train
    values = not manifest.is_tokens and not labelled(manifest)
    if values:
        return
    what = f"task {manifest.task_spec.task!r}" if labelled(manifest) else "tokens"
    if t.loss in ("mse", "quantile") and not (t.loss == "mse" and manifest.task_spec.task == "regress"):
        raise ConfigError(f"train.loss = {t.loss!r} applies to next-step series models and {manifest.root} holds "
                          f"{what}: leave train.loss = \"auto\"")
    if t.horizon not in (1, "auto"):
        raise ConfigError(f"train.horizon = {t.horizon} applies to next-step series models and {manifest.root} holds "
                          f"{what}: leave train.horizon out (\"auto\" is 1 here)")


def class_weights(cfg, manifest: Manifest) -> np.ndarray | None:
    """train.class_weights resolved against the dataset's classes (None: equal weights)."""
    setting, spec = cfg.train.class_weights, manifest.task_spec
    if setting in ("", []):
        return None
    if spec.n_classes is None:
        raise ConfigError(f"train.class_weights = {setting!r} but {manifest.root} holds task {spec.task!r}, which "
                          f"has no classes: remove the setting")
    if setting == "balanced":
        _, counts = lengths_and_counts(manifest)
        return balanced_weights(counts)
    if len(setting) != spec.n_classes:
        raise ConfigError(f"train.class_weights lists {len(setting)} weights but {manifest.root} has "
                          f"{spec.n_classes} classes ({', '.join(spec.classes[:8])}"
                          f"{' ...' if spec.n_classes > 8 else ''}): give one weight per class, in that order")
    weights = np.asarray(setting, dtype=np.float64)
    if not weights.sum() > 0:
        raise ConfigError("train.class_weights are all 0: at least one class must count")
    return weights


def make_loader(manifest: Manifest, cfg, reads, device, dtype, rank: int, weights=None):
    """The training loader for the dataset: windows of a stream or rows, or labelled rows."""
    if labelled(manifest):
        return LabelledBatchLoader(manifest, cfg, reads, device, dtype, rank, weights)
    return BatchLoader(manifest, cfg, reads, device, dtype, rank)
