"""The performance model's step time for a benchmark run: `python -m mpirnn.bench`'s "predicted" column.

    python -m pytest -q tests/test_bench_smoke.py

Predicted are the runs the model describes: one thread per rank, mpirnn itself (not the
plain-PyTorch or DDP peers), the default scan method for linear cells, on the device the
calibration was measured on.
"""

from __future__ import annotations

from mpirnn.tools.perf.calibration import Calibration
from mpirnn.tools.perf.step_model import Layout, Shape, predict

DEFAULT_METHODS = (None, "auto", "chunked")   # the scan the calibration times (log_scan's default)


def shape_for(shape: dict) -> Shape:
    """A benchmark shape (mpirnn/tools/shapes.py) as the model's Shape."""
    return Shape(shape["cell"], shape["layers"], shape["hidden"], shape["embed"], shape["batch"], shape["seq_len"],
                 vocab=256 if shape["data"] == "tokens" else None)


def scope(shapes: list[dict]) -> tuple[list[str], list[int]]:
    """(cells, hidden sizes) a calibration needs for these benchmark shapes."""
    return sorted({s["cell"] for s in shapes}), sorted({s["hidden"] for s in shapes})


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
            or run.get("method") not in DEFAULT_METHODS or (run["device"] == "cuda") != cal.gpu:
        return None
    model = shape_for(shape)
    m, c = units(run, model)
    layout = Layout(dp=run["dp"], sp=run["sp"], pp=run.get("pp", 1), microbatches=m, chunks=c)
    return predict(model, layout, cal).step_s
