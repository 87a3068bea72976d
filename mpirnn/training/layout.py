"""Microbatches and chunks for a run: the plan's fixed rules, or the performance model's choice.

By default (`parallel.calibration = auto`) the automatic microbatch and chunk counts
(`parallel.microbatches = 0`, `parallel.chunks = 0`) of a run with sp or pp come from the
performance model (docs/performance.md) with the newest calibration of this CPU model that
measured this cell and hidden size (the user's own, else one shipped in mpirnn/perf/calibrations/;
mpirnn/perf/calibration.py): the counts it predicts fastest for this model, batch and grid on
this machine, trading the schedule's bubble against thinner, less efficient kernels. A file path
names a calibration; `rules`, or a machine with no calibration (a GPU, an uncalibrated CPU),
gets the plan's fixed rules (mpirnn/parallel/plan.py), and so does a run with more than one
thread per rank (the calibration times one). The start of the run says which chose. Counts set
by hand are kept. The trainer runs rank 0's choice on every rank (mpirnn/training/session.py):
nodes with different CPUs could choose differently.
"""

from __future__ import annotations

from mpirnn.errors import ConfigError


def modelled_counts(cfg, grid, vocab: int | None, features: int | None, threads: int = 1,
                    nodes: int = 1) -> tuple[int, int, str]:
    """(microbatches, chunks, who chose the automatic ones; "" when none is automatic or matters)."""
    p = cfg.parallel
    if (p.microbatches and p.chunks) or (grid.sp == 1 and grid.pp == 1):
        return p.microbatches, p.chunks, ""
    path, why_not = _calibration_path(cfg, threads)
    if path is None:
        return p.microbatches, p.chunks, f"the fixed rules ({why_not})"
    from mpirnn.perf import calibration as calibration_file
    from mpirnn.perf.calibration import CalibrationError
    from mpirnn.perf.ranking import best_microbatches
    from mpirnn.perf.step_model import Shape

    try:
        cal = calibration_file.load(path)
    except (CalibrationError, OSError) as exc:
        raise ConfigError(f"parallel.calibration = {p.calibration}: {exc}") from None
    if cal.precision != cfg.train.precision:  # a calibration given by path, measured in another precision
        return p.microbatches, p.chunks, (f"the fixed rules (calibration {calibration_file.shown_path(path)} "
                                          f"measured {cal.precision}, this run is {cfg.train.precision})")
    shape = Shape.from_config(cfg, vocab)
    if features:
        shape = Shape(**{**shape.__dict__, "vocab": None, "features": features})
    layout = dict(dp=grid.dp, sp=grid.sp, pp=grid.pp, tp=grid.tp)
    try:
        chosen = best_microbatches(shape, layout, cal, nodes=nodes, bucket_mb=cfg.train.bucket_mb,
                                   microbatches=p.microbatches, chunks=p.chunks).layout
    except ValueError as exc:
        raise ConfigError(f"parallel.calibration: {exc}") from None
    # The model plans for the largest data-parallel group; the plan refuses more microbatches than
    # the smallest one has rows.
    return (min(chosen.microbatches, max(1, cfg.data.batch_size // grid.dp)), chosen.chunks,
            f"the performance model, calibration {calibration_file.shown_path(path)}")


def _calibration_path(cfg, threads: int) -> tuple[str | None, str]:
    """(the calibration file to plan with, or None and why the fixed rules apply)."""
    from mpirnn.host import cpu_model
    from mpirnn.perf import calibration as calibration_file
    setting = cfg.parallel.calibration
    if setting in ("", "rules"):
        return None, "parallel.calibration = rules"
    if threads > 1:
        return None, (f"a calibration times 1 thread per rank and this run has {threads}; "
                      f"train.threads = 1 lets the performance model choose")
    if setting != "auto":
        return setting, ""
    if _on_gpu(cfg):   # a CPU calibration says nothing about a GPU's kernels
        return None, "no calibration of this GPU: python -m mpirnn.plan --calibrate measures one"
    cpu = cpu_model()
    precision = cfg.train.precision
    found = calibration_file.find_for_host(cpu, cfg.model.cell, cfg.model.hidden, precision)
    if found is None:
        flag = "" if precision == "float32" else f" --precision {precision}"
        kind = "" if precision == "float32" else f"{precision} "
        return None, (f"no {kind}calibration of this CPU ({cpu}) for {cfg.model.cell} at hidden "
                      f"{cfg.model.hidden} in {calibration_file.searched()}: python -m mpirnn.plan --calibrate{flag} "
                      f"measures one")
    return str(found), ""


def _on_gpu(cfg) -> bool:
    import torch
    return cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())

