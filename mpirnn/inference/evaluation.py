"""Scoring a checkpoint on a whole split, on any grid (the work of `python -m mpirnn.evaluate`).

The model and its data settings come from the checkpoint; a labelled dataset (tag, classify,
regress) is scored row by row, each row one whole sequence, with its task's metrics
(mpirnn/inference/task_metrics.py), and `score_checkpoint` is shared with `predict`; `--set` may change the grid
(parallel.*), the data settings (data.seq_len, data.batch_size) and model.dtype, never the
model's shape. The grid starts from one data-parallel rank per process (parallel.dp = -1,
sp = pp = tp = 1), whatever grid trained the model. The data is normalized with the
checkpoint's own statistics (those the model was trained with), also for another dataset.
`loss` is the plain mean cross-entropy; a model trained with train.class_weights also gets
`loss_weighted`, its training loss's class-weighted mean, with the weights it was trained with
(docs/tasks.md, "Class weights").

    mpirun -n 2 python -m pytest -q --with-mpi -m mpi tests/mpi/test_evaluation.py
"""

from __future__ import annotations

import dataclasses
import json

import torch

from mpirnn import config as config_module
from mpirnn.data.labelled_loader import evaluation_loader
from mpirnn.data.labelled_targets import balanced_weights
from mpirnn.data.manifest import load_manifest
from mpirnn.data.row_stats import lengths_and_counts
from mpirnn.data.validate import validate_dataset
from mpirnn.distributed.agreement import agree
from mpirnn.distributed.device import bind
from mpirnn.distributed.mesh import Comms
from mpirnn.errors import ConfigError, DataError
from mpirnn.inference.command import check_model_fits, find_checkpoint, on_rank0, write_whole
from mpirnn.inference.load import build, model_info, saved_config
from mpirnn.inference.scoring import SplitScorer
from mpirnn.parallel.plan import make_grid, make_plan
from mpirnn.parallel.shard import stage_model
from mpirnn.parallel.tensor import TensorGroup

# What --set may change: where and how to run, and how the data is cut; never the model's shape.
ALLOWED = ("parallel.", "data.seq_len", "data.batch_size", "data.validate", "model.dtype", "train.device",
           "train.threads", "train.bucket_mb")


def evaluation_config(located, overrides: list[str], data: str | None):
    cfg = saved_config(located)
    cfg.parallel = config_module.ParallelConfig()
    for text in overrides:
        name = text.partition("=")[0].strip()
        if not name.startswith(ALLOWED):
            raise ConfigError(f"--set {name}: evaluate takes the model and its settings from the checkpoint; it "
                              f"may change parallel.*, data.seq_len, data.batch_size, model.dtype and train.device")
    config_module.apply_overrides(cfg, overrides)
    if data is not None:
        cfg.data.path = data
    return cfg


def open_split(cfg, split: str | None, info, checkpoint_path, world):
    """The split to score, checked against the model; `split` None: val where there is one, else train."""
    if split is None:
        split = "val" if "val" in load_manifest(cfg.data.path).splits else "train"
    manifest = load_manifest(cfg.data.path, split=split)
    check_model_fits(info, manifest, checkpoint_path)
    validate_dataset(manifest, part=world.rank, parts=world.size, scan_values=cfg.data.validate)
    if info.normalization is not None and not manifest.is_tokens:
        # The model reads values normalized as in its training, whatever dataset this is.
        manifest = dataclasses.replace(manifest, normalization=info.normalization)
    if info.task_spec.target_normalization is not None:
        # Regression targets too: the model's outputs go back to data units with its own statistics.
        manifest = dataclasses.replace(manifest, task_spec=info.task_spec)
    if manifest.task_spec.labelled:
        cfg.data.seq_len = manifest.seq_len   # a labelled row is one sequence, read whole (docs/tasks.md)
    return manifest


def trained_class_weights(located, cfg, info) -> list[float] | None:
    """The class weights the checkpoint's training loss used (recorded in its JSON; for a checkpoint
    written before they were recorded, train.class_weights resolved as training resolved it)."""
    recorded = located.meta.get("class_weights")
    if recorded is not None or not info.task_spec.classes:
        return recorded
    setting = cfg.train.class_weights
    if setting in ("", []):
        return None
    if setting != "balanced":
        return [float(w) for w in setting]
    try:   # from the train split the model was trained on, as training computed them
        _, counts = lengths_and_counts(load_manifest(saved_config(located).data.path))
    except (OSError, DataError):
        return None   # that dataset is gone: the weighted loss is left out
    return [float(w) for w in balanced_weights(counts)]


def summary(score, info, located, cfg, split: str, grid) -> dict:
    result = {"split": split, "data": str(cfg.data.path), "checkpoint": str(located.path), "step": located.step,
              "loss": score.loss, "loss_name": info.loss_name, "loss_unit": info.loss_unit,
              "elements": score.elements, "sequences": score.sequences, "seq_len": cfg.data.seq_len,
              "grid": dict(zip(("dp", "sp", "pp", "tp"), grid.shape))}
    if info.byte_tokens:
        result["bits_per_byte"] = info.bits_per_byte(score.loss)
    if score.metrics is not None:
        result.update({("scored" if key == "scored" else key): value for key, value in score.metrics.items()})
        result["task"] = info.task
    if score.weights is not None:
        result.update(loss_weighted=score.weighted_loss, class_weights=list(score.weights))
    if score.rmse is not None:
        # The first feature under the plain names (as in forecast.csv); every feature in the lists.
        result.update(rmse=score.rmse[0], mae=score.mae[0], rmse_per_feature=score.rmse,
                      mae_per_feature=score.mae, error_unit="data units (de-normalized)")
    return result


def report(result: dict) -> str:
    text = (f"{result['split']} split of {result['data']}: loss {result['loss']:.6f} ({result['loss_name']}, "
            f"{result['loss_unit']})")
    if "bits_per_byte" in result:
        text += f" = {result['bits_per_byte']:.4f} bits per byte"
    if result.get("loss_weighted") is not None:
        text += f"; class-weighted loss {result['loss_weighted']:.6f} (train.class_weights, as training weighs it)"
    if "rmse_per_feature" in result:
        text += f"; RMSE {result['rmse']:.6g}, MAE {result['mae']:.6g} (data units"
        text += ", first feature)" if len(result["rmse_per_feature"]) > 1 else ")"
    text += task_report(result)
    grid = " ".join(f"{k}={v}" for k, v in result["grid"].items())
    if "task" in result:
        unit = {"tag": "valid steps", "classify": "sequences", "regress": "target values"}[result["task"]]
        return (f"{text}\nover {result['elements']} {unit} ({result['sequences']} sequence(s) of up to "
                f"{result['seq_len']} steps), checkpoint step {result['step']} ({result['checkpoint']}), grid {grid}")
    return (f"{text}\nover {result['elements']} values ({result['sequences']} sequence(s) of {result['seq_len']} "
            f"steps), checkpoint step {result['step']} ({result['checkpoint']}), grid {grid}")


def task_report(result: dict) -> str:
    """A labelled task's metrics as text: accuracy, macro-F1 and a line per class, or RMSE/MAE."""
    if result.get("accuracy") is not None:
        lines = [f"; accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}",
                 f"{'class':>16} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
        for name, row in result["per_class"].items():
            lines.append(f"{name[:16]:>16} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} "
                         f"{row['support']:8d}")
        return "\n".join(lines)
    if result.get("task") == "regress" and result.get("rmse") is not None:
        return f"; RMSE {result['rmse']:.6g}, MAE {result['mae']:.6g} (data units, every target)"
    return ""


def evaluate(args, world) -> int:
    def done(score, info, located, cfg, grid):
        result = summary(score, info, located, cfg, args.split, grid)
        if world.rank == 0:
            print(report(result), flush=True)
        if args.out:
            on_rank0(world, write_whole, {args.out: (json.dumps(result, indent=1) + "\n").encode()})
        return 0

    return score_checkpoint(args, world, done)


def score_checkpoint(args, world, done, keep: bool = False, check=None):
    """Score args.split of the checkpoint's (or args.data's) dataset on this world's grid and
    return `done(score, info, located, cfg, grid)` (args.split then names the split scored);
    `keep`: gather every prediction to rank 0; `check(info)`: a command's own refusals, before compute."""
    located = find_checkpoint(world, args.checkpoint, args.best)
    cfg = agree(world, evaluation_config, located, args.overrides, args.data)
    info = agree(world, model_info, located, cfg)
    if check is not None:
        agree(world, check, info)
    grid = agree(world, make_grid, cfg, world.size)
    comms = Comms.create(grid, world)
    try:
        device = agree(world, bind, cfg.train.device, cfg.train.threads, comms.local_rank, comms.local_size)
        manifest = agree(world, open_split, cfg, args.split, info, located.path, world)
        args.split = manifest.split
        loader = agree(world, evaluation_loader, manifest, cfg.data.seq_len, cfg.data.batch_size, device,
                       getattr(torch, cfg.model.dtype), inputs=info.inputs, horizon=cfg.train.horizon)
        # One row per data-parallel group and one microbatch always fit; each batch's own plan follows.
        plan = agree(world, make_plan, grid, comms.coords, batch_size=grid.dp, seq_len=cfg.data.seq_len,
                     layers=cfg.model.layers, cell=cfg.model.cell, microbatches=1, chunks=cfg.parallel.chunks,
                     hidden=cfg.model.hidden, bidirectional=cfg.model.bidirectional, embed=cfg.model.embed)
        model, _, _ = agree(world, build, located, device, cfg.model.dtype)
        group = TensorGroup(comms.axis["tp"], cfg.model.hidden, comms.timer) if grid.tp > 1 else None
        model = stage_model(model, plan, group)
        spec = info.task_spec if info.task_spec.labelled else None
        weights = agree(world, trained_class_weights, located, cfg, info)
        scorer = agree(world, SplitScorer, cfg, comms, plan, model, loader, manifest.normalization, spec, keep,
                       weights)
        try:
            score = scorer.score()
            score.weights = weights
        finally:
            scorer.close()
            loader.close()
        return done(score, info, located, cfg, grid)
    finally:
        comms.free()
