"""Microbatches and chunks for a run: the plan's fixed rules, or the performance model's choice.

With `parallel.calibration` set (a calibration file from `python -m mpirnn.plan --calibrate`,
or `auto` for the newest one measured on this CPU model in benchmarks/calibration/), the
automatic microbatch and chunk counts (`parallel.microbatches = 0`, `parallel.chunks = 0`) come
from the performance model (docs/performance.md): the count it predicts fastest for this model,
batch and grid on this machine, trading the schedule's bubble against thinner, less efficient
kernels. Counts set by hand are kept. Without a calibration the plan's rules apply
(mpirnn/parallel/plan.py). Every rank reads the same file, so every rank chooses the same.
"""

from __future__ import annotations

from mpirnn.errors import ConfigError


def modelled_counts(cfg, grid, vocab: int | None, features: int | None) -> tuple[int, int]:
    """(microbatches, chunks) to run with: cfg's own unless a calibration chooses the automatic ones."""
    p = cfg.parallel
    if not p.calibration or (p.microbatches and p.chunks):
        return p.microbatches, p.chunks
    from mpirnn.tools.perf import calibration as calibration_file
    from mpirnn.tools.perf.calibration import CalibrationError
    from mpirnn.tools.perf.step_model import Shape
    from mpirnn.tools.planner import best_microbatches

    try:
        if p.calibration == "auto":
            path = calibration_file.find_for_host(calibration_file.cpu_model())
            if path is None:
                raise ConfigError(f"parallel.calibration = auto: no calibration of this CPU "
                                  f"({calibration_file.cpu_model()}) in {calibration_file.CALIBRATION_DIR}; run "
                                  f"python -m mpirnn.plan --calibrate, or set parallel.calibration to a file or \"\"")
        else:
            path = p.calibration
        cal = calibration_file.load(path)
    except (CalibrationError, OSError) as exc:
        raise ConfigError(f"parallel.calibration = {p.calibration}: {exc}") from None
    shape = Shape.from_config(cfg, vocab)
    if features:
        shape = Shape(**{**shape.__dict__, "vocab": None, "features": features})
    layout = dict(dp=grid.dp, sp=grid.sp, pp=grid.pp, tp=grid.tp)
    try:
        chosen = best_microbatches(shape, layout, cal, microbatches=p.microbatches, chunks=p.chunks).layout
    except ValueError as exc:
        raise ConfigError(f"parallel.calibration: {exc}") from None
    # The model plans for the largest data-parallel group; the plan refuses more microbatches than
    # the smallest one has rows.
    return min(chosen.microbatches, max(1, cfg.data.batch_size // grid.dp)), chosen.chunks
