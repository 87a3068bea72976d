"""One training session on this rank, from an agreed config and grid to the end of the loop.

Every check that could fail for a reason the user can fix (device, checkpoint settings,
data, the val split when train.eval_every asks for it, the sample prompt against the
vocabulary, fit of the data to the config) runs on every rank inside `agree`, so it is
reported once and no rank hangs. Order: devices → resume point and its settings → run
folder → data → plan → model (the whole serial model from the seed, cut to this rank's
stage) → validation → loop.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from mpirnn import config as config_module
from mpirnn.data.manifest import load_manifest
from mpirnn.data.model_inputs import resolve_inputs
from mpirnn.data.notes import usage_notes
from mpirnn.data.validate import validate_dataset
from mpirnn.distributed.agreement import agree
from mpirnn.distributed.device import bind
from mpirnn.distributed.mesh import Comms
from mpirnn.distributed.trace import Tracer
from mpirnn.distributed.reductions import broadcast_parameters
from mpirnn.errors import ConfigError
from mpirnn.inference.generation import prompt_ids
from mpirnn.inference.model_info import ModelInfo
from mpirnn.models import build_model
from mpirnn.models.precision import for_device as precision_for
from mpirnn.parallel.plan import layers_of, make_plan
from mpirnn.parallel.shard import stage_model
from mpirnn.parallel.tensor import TensorGroup
from mpirnn.training import resume, tasks
from mpirnn.training.dataset_fit import check_fit
from mpirnn.training.layout import modelled_counts
from mpirnn.training.loop import Trainer
from mpirnn.training.metrics import refuse_another_runs
from mpirnn.training.validation import Validator, check_best_metric, open_val_split

DEFAULT_DATA = config_module.DataConfig().path
NAME_BYTES = 256


def ensure_default_data(cfg, world) -> None:
    """The embedded default prepares its corpus on first use.

    Rank 0 alone decides and writes; the others return at once. Run inside `agree`, whose
    own collective is what makes them wait, so a failure on rank 0 is reported, not a hang.
    """
    if world.rank != 0 or cfg.data.path != DEFAULT_DATA or (Path(DEFAULT_DATA) / "manifest.json").exists():
        return
    from mpirnn.data.corpus import prepare_stdlib_corpus
    print(f"mpirnn: data.path is not set, so the default corpus (Python's standard library sources) is being "
          f"prepared in {DEFAULT_DATA}", flush=True)
    prepare_stdlib_corpus(DEFAULT_DATA)


def open_data(cfg, grid, world):
    """Load and check the dataset on every rank, each taking a share of the shards.

    Every shard is opened and checked against the manifest even with data.validate = false
    (that is cheap), so a damaged file is found here, collectively, not by one rank mid-run.
    """
    manifest = load_manifest(cfg.data.path)
    validate_dataset(manifest, part=world.rank, parts=world.size, scan_values=cfg.data.validate)
    tasks.adopt_row_length(cfg, manifest, say=world.rank == 0)
    tasks.adopt_horizon(cfg, manifest)
    check_fit(manifest, cfg, grid)
    check_best_metric(cfg, manifest.task_spec)
    return manifest


def sample_fits(cfg, manifest, world) -> bool:
    """Whether the sample after training can start from output.sample_prompt (token data).

    A prompt byte past the vocabulary would crash the sample at the very end of the run, so it
    is checked now: a prompt the user set is an error; the default prompt is skipped with a
    note (a dataset with a small vocabulary should not need an extra setting to train).
    """
    o = cfg.output
    if manifest.kind != "tokens" or not o.sample_bytes:
        return True
    try:
        prompt_ids(o.sample_prompt, manifest.vocab_size, "output.sample_prompt")
    except ConfigError as exc:
        if "output.sample_prompt" in cfg.explicit:
            raise ConfigError(f"{exc}, or set output.sample_bytes = 0 (no sample)") from None
        if world.rank == 0:
            print(f"mpirnn: note: no sample will be printed after training: the default output.sample_prompt "
                  f"{o.sample_prompt!r} does not fit this dataset's vocabulary (vocab_size={manifest.vocab_size}); "
                  f"set output.sample_prompt to text whose bytes are below {manifest.vocab_size}", flush=True)
        return False
    return True


def name_the_run(cfg, world) -> None:
    """Give the run its own folder runs/NAME unless output.metrics says otherwise (rank 0 picks
    the name, so the start time is the same on every rank)."""
    out = cfg.output
    if not out.run_name:
        stamp = time.strftime("%Y%m%d-%H%M%S") if world.rank == 0 else ""
        raw = np.zeros(NAME_BYTES, dtype=np.uint8)
        text = f"{cfg.origin}-{stamp}".encode()[:NAME_BYTES]
        raw[:len(text)] = np.frombuffer(text, dtype=np.uint8)
        world.Bcast(raw, root=0)
        out.run_name = bytes(raw).rstrip(b"\0").decode()
    if not out.metrics:
        out.metrics = str(Path("runs") / out.run_name / "metrics.jsonl")


def plan_the_run(cfg, grid, comms, vocab, features):
    """This rank's plan. Automatic counts come from the performance model where this machine is
    calibrated (mpirnn/training/layout.py) and are written into the config, so the metrics and
    checkpoints record them; rank 0 says who chose them."""
    world = comms.world
    by_hand = {"microbatches": cfg.parallel.microbatches, "chunks": cfg.parallel.chunks}
    nodes = -(-world.size // comms.local_size)
    m, c, chooser = agree(world, modelled_counts, cfg, grid, vocab, features, threads=torch.get_num_threads(),
                          nodes=nodes)
    # Every rank runs rank 0's counts: on nodes with different CPU models (one calibrated, one not)
    # ranks could choose differently, and then their messages would never match.
    counts = np.array([m, c], dtype=np.int64)
    world.Bcast(counts, root=0)
    cfg.parallel.microbatches, cfg.parallel.chunks = int(counts[0]), int(counts[1])
    plan = agree(world, make_plan, grid, comms.coords, batch_size=cfg.data.batch_size, seq_len=cfg.data.seq_len,
                 layers=cfg.model.layers, cell=cfg.model.cell, microbatches=cfg.parallel.microbatches,
                 chunks=cfg.parallel.chunks, hidden=cfg.model.hidden, bidirectional=cfg.model.bidirectional,
                 embed=cfg.model.embed)
    if world.rank == 0 and chooser:
        said = [f"{plan.microbatches} microbatch{'es' if plan.microbatches > 1 else ''}"
                + (" (parallel.microbatches)" if by_hand["microbatches"] else ""),
                f"{plan.chunks} chunk{'s' if plan.chunks > 1 else ''} per segment"
                + (" (parallel.chunks)" if by_hand["chunks"] else "")]
        print(f"mpirnn: {', '.join(said)}; automatic counts chosen by {chooser}", flush=True)
    if world.rank == 0 and grid.sp > 1 and plan.microbatches == 1 and not by_hand["microbatches"] \
            and cfg.data.batch_size < 2 * grid.dp:
        print(f"mpirnn: one microbatch: {cfg.data.batch_size} row(s) per step over {grid.dp} data-parallel "
              f"group(s) cannot be split; the {grid.sp} segments overlap only where a segment starts a layer "
              f"behind the one before it (exact either way; docs/parallelism.md)", flush=True)
    if world.rank == 0 and plan.offloaded:
        moved = "; ".join(f"microbatch{'es' if len(ms) > 1 else ''} {', '.join(map(str, ms))} of layer "
                          f"{layers_of(cfg.model.layers, grid.pp, p)[0]} on stage {p - 1}"
                          for p, ms in enumerate(plan.offloaded) if ms)
        print(f"mpirnn: balancing the pipeline's stages, reverse directions run one stage down: {moved} "
              f"(docs/parallelism.md, \"Bidirectional layers\")", flush=True)
    return plan


def resume_point(cfg, comms) -> int | None:
    """The checkpoint step to continue from (None: a fresh start), with its settings adopted."""
    c = cfg.checkpoint
    if not c.resume:
        return None
    step = resume.newest_checkpoint(comms, c.dir)
    if step is None:
        if comms.rank == 0:
            print(f"mpirnn: no checkpoint in {c.dir}; starting from step 0", file=sys.stderr, flush=True)
        return None
    adopted, warnings, original = agree(comms.world, resume.take_settings, cfg, resume.saved_config(c.dir, step))
    cfg.branched_from = (original, step) if original is not None else None
    if comms.rank == 0:
        if adopted:
            print(f"mpirnn: resuming with the checkpoint's settings: {', '.join(adopted)}", flush=True)
        for warning in warnings:
            print(f"mpirnn: warning: {warning}: continuing with this run's value", file=sys.stderr, flush=True)
    return step


def train(cfg, grid) -> int:
    comms = Comms.create(grid)
    comms.timer.tracer = Tracer(comms.rank, enabled=bool(cfg.output.trace))
    try:
        world = comms.world
        device = agree(world, bind, cfg.train.device, cfg.train.threads, comms.local_rank, comms.local_size)
        agree(world, precision_for, cfg.train.precision, device)  # refused before any data is read
        start = resume_point(cfg, comms)
        if start is not None and start >= cfg.train.steps:
            if world.rank == 0:
                print(f"mpirnn: the checkpoint in {cfg.checkpoint.dir} is at step {start} and train.steps = "
                      f"{cfg.train.steps}: nothing to do (raise train.steps to train further)", flush=True)
            return 0
        name_the_run(cfg, world)
        if cfg.branched_from:  # a new run rerun under its own name replaces its own file, as before
            agree(world, lambda: refuse_another_runs(cfg.output.metrics, False) if world.rank == 0 else None)
        if cfg.branched_from and world.rank == 0:
            original, step = cfg.branched_from
            print(f"mpirnn: run {cfg.output.run_name} branches from run {original} at step {step}: its metrics "
                  f"start after step {step} in {cfg.output.metrics}; run {original}'s files are left as they are",
                  flush=True)
        agree(world, ensure_default_data, cfg, world)
        manifest = agree(world, open_data, cfg, grid, world)
        if world.rank == 0:
            for note in usage_notes(manifest, cfg):
                print(note, file=sys.stderr, flush=True)
        val_split = agree(world, open_val_split, cfg, world) if cfg.train.eval_every else None
        sample = agree(world, sample_fits, cfg, manifest, world)
        tokens = manifest.is_tokens
        plan = plan_the_run(cfg, grid, comms, manifest.vocab_size if tokens else None,
                            None if tokens else manifest.features)
        weights = agree(world, tasks.class_weights, cfg, manifest)
        agree(world, tasks.check_objective, cfg, manifest)   # train.loss / horizon: series only
        inputs = resolve_inputs(manifest, cfg)  # lags and calendar; checked in open_data
        model = build_model(cfg, vocab_size=manifest.vocab_size if tokens else None,
                            features=None if tokens else manifest.features, device=device,
                            outputs=tasks.head_outputs(manifest), inputs=inputs and inputs.width)
        tp_group = TensorGroup(comms.axis["tp"], cfg.model.hidden, comms.timer) if grid.tp > 1 else None
        model = stage_model(model, plan, tp_group)
        broadcast_parameters(model, comms)
        loader = tasks.make_loader(manifest, cfg, plan.reads, device, getattr(torch, cfg.model.dtype), world.rank,
                                   weights)
        validator = (agree(world, Validator, cfg, comms, plan, model, val_split, device, weights)
                     if val_split is not None else None)
        trainer = Trainer(cfg, comms, plan, model, loader, ModelInfo.from_manifest(manifest, inputs), validator)
        trainer.sample = sample
        trainer.class_weights = weights
        try:
            if cfg.checkpoint.dir:
                trainer.check_checkpoint_dir()
            if start is not None:
                agree(world, trainer.restore, start)
            if world.rank == 0:
                print(f"mpirnn: run {cfg.output.run_name}: metrics in {cfg.output.metrics}", flush=True)
            return trainer.run()
        finally:
            trainer.close()
            loader.close()
    finally:
        comms.free()
