"""Whether a dataset can serve a run: enough rows for every data-parallel rank, long enough rows,
microbatches and chunks the grid can run, at least one batch of sequences.

Checked on every rank and agreed before any compute (mpirnn/training/session.py `open_data`).
It needs both the data and the parallel plan, so it lives here, above both; the loaders
themselves know only what a rank reads (mpirnn/data/reads.py).
"""

from __future__ import annotations

from mpirnn.data.loader import first_window, training_end, training_stride
from mpirnn.data.model_inputs import resolve_inputs
from mpirnn.data.manifest import Manifest
from mpirnn.data.reader import Reader
from mpirnn.errors import DataError
from mpirnn.grid import Grid
from mpirnn.parallel.plan import make_plan


def check_fit(manifest: Manifest, cfg, grid: Grid) -> None:
    """Refuse a dataset that cannot serve this config, with what to change."""
    d = cfg.data
    check_holdout(manifest, cfg)
    if manifest.has_lengths and not manifest.task_spec.labelled:
        raise DataError(f"data.path {manifest.root} holds token rows of different lengths without labels "
                        f"(token_sequences): mpirnn trains tag, classify and regress on such rows, and 'next' on "
                        f"text, a series or rows of one length; give the rows labels (docs/tasks.md)")
    if manifest.task_spec.labelled:
        check_labelled_fit(manifest, cfg, grid)
        return
    if cfg.model.bidirectional:
        raise DataError(f"model.bidirectional = true but {manifest.root} trains the 'next' task: a reverse direction "
                        f"would see the step it predicts; use one direction, or a labelled dataset (docs/tasks.md)")
    check_rows_per_rank(d.batch_size, grid)
    if manifest.kind == "sequences" and d.seq_len + 1 > manifest.seq_len:
        raise DataError(f"data.seq_len = {d.seq_len} needs {d.seq_len + 1} steps per row but the dataset's rows "
                        f"have {manifest.seq_len}: use data.seq_len <= {manifest.seq_len - 1}")
    check_plan(cfg, grid)
    stride = training_stride(manifest, cfg)
    inputs = resolve_inputs(manifest, cfg)
    windows = Reader(manifest, stride, first_window(inputs), training_end(manifest, cfg)).n_windows(d.seq_len)
    if windows < d.batch_size:
        every = " (windows at every step: data.windows = every)" if stride == 1 else ""
        if inputs is not None and inputs.back:
            every += f" (starting {inputs.back} steps in, for lags {list(inputs.lags)}: data.lags)"
        if d.holdout:
            every += f" (before the last {d.holdout} steps, which data.holdout keeps out of training)"
        raise DataError(f"{manifest.root} holds {windows} sequences of {d.seq_len} steps{every}, fewer than one "
                        f"batch of {d.batch_size}: use more data, a shorter data.seq_len or a smaller data.batch_size")



def check_labelled_fit(manifest: Manifest, cfg, grid: Grid) -> None:
    """Labelled rows: each row is one sequence (data.seq_len is the rows' length by now)."""
    d = cfg.data
    if cfg.train.stateful:
        raise DataError(f"train.stateful = true but {manifest.root} holds labelled rows ({manifest.task_spec.describe()}): "
                        f"each row is a whole sequence and no state carries into the next; set train.stateful = false")
    check_rows_per_rank(d.batch_size, grid)
    if manifest.length < d.batch_size:
        raise DataError(f"{manifest.root} holds {manifest.length} rows, fewer than one batch of {d.batch_size}: use a "
                        f"smaller data.batch_size")
    check_plan(cfg, grid)


def check_holdout(manifest: Manifest, cfg) -> None:
    """data.holdout keeps the end of a series for `forecast`'s calibration: nothing else has one."""
    holdout = cfg.data.holdout
    if not holdout:
        return
    if manifest.kind != "series":
        raise DataError(f"data.holdout = {holdout} but {manifest.root} holds {manifest.kind}: only a series stream "
                        f"keeps its last steps out of training (for forecast's calibrated band); set data.holdout = 0")
    if holdout >= manifest.length:
        raise DataError(f"data.holdout = {holdout} holds out every step of {manifest.root}'s train split "
                        f"({manifest.length} steps): hold out fewer steps")


def check_rows_per_rank(batch_size: int, grid: Grid) -> None:
    if batch_size < grid.dp:
        raise DataError(f"data.batch_size = {batch_size} gives some of the {grid.dp} data-parallel ranks no rows: "
                        f"use data.batch_size >= parallel.dp")


def check_plan(cfg, grid: Grid) -> None:
    """Microbatches and chunks are refused the same way on every rank (the fewest rows decide)."""
    d = cfg.data
    make_plan(grid, grid.coords(0), batch_size=d.batch_size, seq_len=d.seq_len, layers=cfg.model.layers,
              cell=cfg.model.cell, microbatches=cfg.parallel.microbatches, chunks=cfg.parallel.chunks,
              hidden=cfg.model.hidden, bidirectional=cfg.model.bidirectional)
