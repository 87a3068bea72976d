"""Opening a checkpoint by itself: which one a path means, its config, and the whole model.

    from mpirnn import load_checkpoint
    model, config = load_checkpoint("runs/x/checkpoints")   # the newest intact checkpoint

A path is a checkpoint directory (its newest intact checkpoint, or with `best=True` the best
by the measure the run chose, `best_metric` in each JSON: the lowest val_loss by default, the
highest val_accuracy or val_macro_f1) or one checkpoint's `ckpt-NNNNNNNN.pt` / `.json`. The
model comes back whole (serial parameter names, every layer), on `device`, in eval mode,
with `model.normalization` (series: the train split's mean/std; None for tokens) and
`model.info` (mpirnn/inference/model_info.py). Nothing is read but the checkpoint's two
files, unless the checkpoint predates the recorded "dataset" (then the dataset its config
names is consulted for the normalization). The format: docs/checkpoints.md.

    python -m pytest -q tests/test_inference_load.py
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from mpirnn.config import Config, config_from_dict
from mpirnn.errors import CheckpointError, ConfigError, DataError
from mpirnn.inference.model_info import ModelInfo, info_from_parameters
from mpirnn import checkpoint

FILE = re.compile(r"^ckpt-(\d{8})\.(pt|json)$")


@dataclass
class Located:
    directory: Path
    step: int
    meta: dict

    @property
    def path(self) -> Path:
        return self.directory / f"ckpt-{self.step:08d}.pt"

    @property
    def val_loss(self) -> float | None:
        return self.meta.get("val_loss")


def locate(path: str | Path, best: bool = False, warn=lambda text: None) -> Located:
    """The checkpoint `path` means, checked intact (SHA-256); CheckpointError with the fix otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: give a checkpoint directory (checkpoint.dir of a "
                              f"run) or a ckpt-NNNNNNNN.pt file")
    if path.is_file():
        match = FILE.match(path.name)
        if not match:
            raise CheckpointError(f"{path} is not a checkpoint (expected ckpt-NNNNNNNN.pt or its .json, or a "
                                  f"checkpoint directory)")
        directory, step = path.parent, int(match.group(1))
        problem = checkpoint.verify(directory, step)
        if problem:
            raise CheckpointError(f"checkpoint {directory / f'ckpt-{step:08d}.pt'} is {problem}: use another one")
        return Located(directory, step, _meta(directory, step))
    steps = checkpoint.steps(path)
    if not steps:
        raise CheckpointError(f"{path} holds no checkpoint (no ckpt-NNNNNNNN.json): give the checkpoint.dir of a "
                              f"run that wrote checkpoints, or one ckpt-NNNNNNNN.pt")
    if best:
        return _best(path, steps)
    step = checkpoint.newest_valid(path, warn=warn)
    return Located(path, step, _meta(path, step))


# checkpoint.best_metric (docs/checkpoints.md): which recorded value chooses, and whether higher is better.
HIGHER_IS_BETTER = {"val_loss": False, "val_accuracy": True, "val_macro_f1": True}


def _best(directory: Path, steps: list[int]) -> Located:
    evaluated = [(step, _meta(directory, step)) for step in steps if checkpoint.verify(directory, step) is None]
    evaluated = [(step, meta) for step, meta in evaluated if meta.get("val_loss") is not None]
    if not evaluated:
        raise CheckpointError(f"no intact checkpoint in {directory} records a val_loss (train with train.eval_every "
                              f"> 0 to keep the best one); leave out --best to take the newest")
    # The newest evaluated checkpoint says which measure the run chose (older ones record none: val_loss).
    metric = evaluated[-1][1].get("best_metric", "val_loss")
    sign = -1.0 if HIGHER_IS_BETTER.get(metric, False) else 1.0
    scored = [(sign * meta[metric], -step, step, meta) for step, meta in evaluated if meta.get(metric) is not None]
    if not scored:
        raise CheckpointError(f"no intact checkpoint in {directory} records {metric} (its checkpoint.best_metric); "
                              f"leave out --best to take the newest")
    _, _, step, meta = min(scored, key=lambda item: item[:2])
    return Located(directory, step, meta)


def _meta(directory: Path, step: int) -> dict:
    try:
        return json.loads((directory / f"ckpt-{step:08d}.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {directory / f'ckpt-{step:08d}.json'} is unreadable ({exc})") from None


def saved_config(located: Located) -> Config:
    """The resolved config the checkpoint was written with."""
    table = located.meta.get("config")
    if not isinstance(table, dict):
        raise CheckpointError(f"checkpoint {located.path} records no config: it was not written by mpirnn.train")
    try:
        return config_from_dict(table, origin=f"{located.directory / f'ckpt-{located.step:08d}.json'} config")
    except ConfigError as exc:
        raise CheckpointError(f"{exc} (written by another version of mpirnn?)") from None


def model_info(located: Located, cfg: Config, model_state: dict | None = None) -> ModelInfo:
    """What the model reads: recorded in the JSON; for older checkpoints, from the parameters
    (vocabulary or features) and the dataset the config names (normalization)."""
    recorded = located.meta.get("dataset")
    if isinstance(recorded, dict):
        try:
            return ModelInfo.from_json(recorded, str(located.directory / f"ckpt-{located.step:08d}.json"))
        except (KeyError, DataError) as exc:
            raise CheckpointError(f"checkpoint {located.path}: its dataset record is malformed ({exc})") from None
    if model_state is None:
        model_state = load_state(located)["model"]
    vocab_size, features = info_from_parameters(model_state)
    normalization = None
    if features is not None:
        from mpirnn.data.manifest import load_manifest
        try:
            normalization = load_manifest(cfg.data.path).normalization
        except DataError:
            raise CheckpointError(f"checkpoint {located.path} predates recorded normalization and its dataset "
                                  f"{cfg.data.path} cannot be read: the model's outputs cannot be put back in "
                                  f"data units") from None
    return ModelInfo("tokens" if vocab_size else "series", vocab_size, features, normalization)


def load_state(located: Located, device="cpu") -> dict:
    state, _ = checkpoint.load(located.directory, located.step, device=device)
    return state


def build(located: Located, device="cpu", dtype: str | None = None):
    """(the whole model with the checkpoint's parameters, its config, its ModelInfo)."""
    from mpirnn.models import build_model

    cfg = saved_config(located)
    if dtype is not None:
        cfg.model.dtype = dtype
    state = load_state(located, device)
    info = model_info(located, cfg, state["model"])
    spec = info.task_spec  # a labelled task's head predicts its classes or targets
    outputs = (spec.n_classes or spec.targets) if spec.labelled else None
    model = build_model(cfg, vocab_size=info.vocab_size, features=info.features, device=device, outputs=outputs,
                        inputs=info.input_width)
    checkpoint.check_compatible(model, state, str(located.path))
    model.load_state_dict(state["model"])
    model.eval()
    model.normalization, model.info = info.normalization, info
    return model, cfg, info


def load_checkpoint(path: str | Path, device="cpu", best: bool = False):
    """(model, config) of a checkpoint directory (newest intact, or `best`) or a ckpt-NNNNNNNN.pt file."""
    model, cfg, _ = build(locate(path, best=best), device=device)
    return model, cfg
