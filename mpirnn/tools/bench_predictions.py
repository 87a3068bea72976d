"""What the performance model adds to `python -m mpirnn.bench`: its calibration, the "predicted" column,
the summary line, and `python -m mpirnn.plan --validate BENCH.json` (predicted vs measured afterwards).

    python -m pytest -q tests/test_bench_smoke.py

Predicted are the runs the model describes: one thread per rank, mpirnn itself (not the
plain-PyTorch or DDP peers), the default scan method for linear cells, on the device the
calibration was measured on.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mpirnn.perf import calibration
from mpirnn.perf.calibration import Calibration
from mpirnn.perf.step_model import Layout, Shape, predict

DEFAULT_METHODS = (None, "auto", "chunked")   # the scan the calibration times (log_scan's default)


def shape_for(shape: dict) -> Shape:
    """A benchmark shape (mpirnn/tools/shapes.py) as the model's Shape."""
    return Shape(shape["cell"], shape["layers"], shape["hidden"], shape["embed"], shape["batch"], shape["seq_len"],
                 vocab=256 if shape["data"] == "tokens" else None)


def scope(shapes: list[dict]) -> tuple[list[str], list[int]]:
    """(cells, hidden sizes) a calibration needs for these benchmark shapes: every hidden size they
    use. Extrapolating W4's 2048 from 256 and 512 read its step 2× and its call 4× too cheap (the
    weights leave the caches and their per-call reorder grows past hidden²), a 60% error, so it
    is measured: about 90 s more when W4 is in the bench."""
    return sorted({s["cell"] for s in shapes}), sorted({s["hidden"] for s in shapes})


def calibration_for(args, shapes: list[dict], precision: str = "float32") -> Calibration | None:
    """The bench's calibration in `precision`: --calibration (float32 rows only), or one measured now
    (before any run, so nothing shares the cores with it) for the cells and hidden sizes of these
    shapes, written beside --out."""
    if args.calibration:
        return calibration.load(args.calibration) if precision == "float32" else None
    if (args.device or "cpu") != "cpu":
        return None   # calibrating here would time this CPU: give --calibration for GPU predictions
    from mpirnn.models.precision import refusal
    if refusal(precision, "cpu"):
        return None   # bf16 emulated (--bf16 on without native bf16): training refuses it, nothing to predict
    from mpirnn.perf.calibrate import calibrate
    cells, hidden = scope(shapes)
    tag = "" if precision == "float32" else f"-{precision}"
    out = Path(args.out).with_name(Path(args.out).stem + f"-calibration{tag}.json")
    path = calibrate(out, quick=args.tiny, cells=cells, hidden=hidden, precision=precision,
                     say=lambda line: print(line, file=sys.stderr, flush=True))
    return calibration.load(path)


def prediction_summary(rows: list[dict], tolerance: float) -> list[str]:
    """How many of the bench's rows the model predicted within `tolerance`, and the worst one."""
    predicted = [r for r in rows if r["prediction_error"] is not None]
    if not predicted:
        return []
    within = sum(abs(r["prediction_error"]) <= tolerance for r in predicted)
    worst = max(predicted, key=lambda r: abs(r["prediction_error"]))
    return [f"performance model: {within} of {len(predicted)} predicted rows within ±{100 * tolerance:.0f}% of the "
            f"measured median (worst: {worst['workload']} {worst['config']}, {100 * worst['prediction_error']:+.0f}%)"]


def units(run: dict, model: Shape) -> tuple[int, int]:
    """The (microbatches, chunks) the run's step used, resolved as mpirnn.parallel.plan resolves them."""
    rows, segment = -(-model.batch // run["dp"]), model.seq_len // run["sp"]
    pp = run.get("pp", 1)
    try:
        from mpirnn.parallel.plan import mode_of, resolve_chunks, resolve_microbatches
        mode = mode_of(model.cell, run["sp"])
        m = resolve_microbatches(run["microbatches"], rows, run["sp"], pp, mode)
        return m, resolve_chunks(run.get("chunks", 0), segment, pp, m, mode)
    except ImportError:   # a plan without those functions: what was asked, else one of each
        return run["microbatches"] or 1, run.get("chunks", 0) or 1


def predicted_step_s(run: dict, shape: dict, cal: Calibration) -> float | None:
    """The model's step time for one benchmark run, or None for a run it does not describe."""
    if run["plain"] or run.get("ddp") or run["threads"] != 1 or not run["steps"] \
            or run.get("method") not in DEFAULT_METHODS or (run["device"] == "cuda") != cal.gpu \
            or run.get("precision", "float32") != cal.precision:
        return None
    model = shape_for(shape)
    m, c = units(run, model)
    # Runs of a bench file from before the allocator was recorded kept freed memory (the default since then).
    layout = Layout(dp=run["dp"], sp=run["sp"], pp=run.get("pp", 1), tp=run.get("tp", 1), microbatches=m, chunks=c,
                    malloc=run.get("malloc", "keep"))
    return predict(model, layout, cal).step_s


def validate(bench: dict, cal: Calibration) -> list[dict]:
    """Predicted against measured for every row of a `python -m mpirnn.bench` JSON file the model describes."""
    out = []
    for run in bench["runs"]:
        shape = bench["shapes"][run["workload"]]
        predicted = predicted_step_s({"malloc": bench["meta"].get("malloc", "keep"), **run}, shape, cal)
        if predicted and run.get("median_step_s"):
            out.append({"workload": run["workload"], "config": run["name"], "measured_s": run["median_step_s"],
                        "quiet": f"{len(run['quiet_steps'])}/{len(run['step_times_s'])}",
                        "predicted_s": predicted, "error": predicted / run["median_step_s"] - 1})
    return out


def validation_table(rows: list[dict]) -> str:
    lines = ["| workload | run | measured median s (quiet/all steps) | predicted s | error |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['config']} | {r['measured_s']:.3f} ({r['quiet']}) | "
                     f"{r['predicted_s']:.3f} | {100 * r['error']:+.0f}% |")
    return "\n".join(lines)
