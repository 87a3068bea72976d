"""The performance model's step time beside each run's measured one, for mpirnn.report.

A run's metrics record what the model needs: the model and data sizes (metrics.config.json),
the grid, microbatches and chunks, and per rank its node, threads and CPU model (the summary's
placement). The calibration is `--calibration FILE`, else the newest one measured on the runs'
CPU model, the user's own before the shipped ones (mpirnn/perf/calibration.py, docs/performance.md). A run the model
does not describe (a GPU run against a CPU calibration, several threads per rank, an
unfinished run) gets no prediction, and the report says why.
"""

from __future__ import annotations

from mpirnn.perf import calibration as calibration_file
from mpirnn.perf.calibration import Calibration, CalibrationError


def load_for(runs: list[dict], path: str | None) -> tuple[Calibration | None, str]:
    """(calibration, a line for the report saying which one, or why there is none)."""
    if path:
        try:
            return calibration_file.load(path), f"calibration {path}"
        except (CalibrationError, OSError, ValueError) as exc:
            raise SystemExit(f"mpirnn.report: --calibration {path}: {exc}") from None
    cpus = {p.get("cpu") for run in runs for p in (run["summary"] or {}).get("placement", []) if p.get("cpu")}
    if len(cpus) > 1:
        return None, "no predicted step times: the runs ran on different CPU models (pass --calibration FILE)"
    if not cpus:
        return None, ("no predicted step times: the runs do not record their CPU model (older runs); "
                      "pass --calibration FILE")
    cpu = cpus.pop()
    found = calibration_file.find_for_host(cpu)
    if found is None:
        return None, (f"no predicted step times: no calibration of {cpu} in {calibration_file.searched()} "
                      f"(python -m mpirnn.plan --calibrate on that machine, or --calibration FILE)")
    try:
        return calibration_file.load(found), f"calibration {calibration_file.shown_path(found)}"
    except (CalibrationError, OSError, ValueError) as exc:
        return None, f"no predicted step times: {calibration_file.shown_path(found)}: {exc}"


def predicted_step_s(run: dict, cal: Calibration) -> tuple[float | None, str]:
    """The model's step time for a finished run, or (None, why not)."""
    from mpirnn.config import config_from_dict
    from mpirnn.errors import ConfigError
    from mpirnn.perf.step_model import Layout, Shape, predict

    summary, config = run["summary"] or {}, run["config"]
    if not summary or not config:
        return None, "no summary or metrics.config.json"
    placement = summary.get("placement", [])
    if any(not p.get("device", "cpu").startswith("cpu") for p in placement) != cal.gpu:
        return None, "the calibration is of another device"
    threads = {p.get("threads") for p in placement}
    if threads - {1, None}:   # None: a run from before threads were recorded
        return None, "calibrated for 1 thread per rank"
    try:
        cfg = config_from_dict(config, origin=str(run["metrics"]))
    except ConfigError as exc:
        return None, str(exc)
    tokens = summary.get("loss_name", "cross-entropy") == "cross-entropy"
    shape = Shape.from_config(cfg, _vocab(cfg) if tokens else None)
    if not tokens:
        shape = Shape(**{**shape.__dict__, "vocab": None, "features": _features(cfg)})
    degrees = run["grid"].split("x")   # read_run's dp x sp x pp x tp, from the summary or the config
    if len(degrees) != 4 or not all(d.isdigit() for d in degrees):
        return None, "the grid is not recorded"
    grid = dict(zip(("dp", "sp", "pp", "tp"), map(int, degrees)))
    nodes = len({p.get("slurm_node") or p.get("host") for p in placement}) or 1
    layout = Layout(**{a: grid.get(a, 1) for a in ("dp", "sp", "pp", "tp")},
                    microbatches=summary.get("microbatches") or 1, chunks=summary.get("chunks") or 1, nodes=nodes)
    try:
        return predict(shape, layout, cal, cfg.train.bucket_mb).step_s, ""
    except ValueError as exc:
        return None, str(exc)


def add_predictions(rows: list[dict], cal: Calibration | None) -> None:
    """predicted_step_s and prediction_error (measured / predicted − 1) on every row the model describes."""
    for row in rows:
        row["predicted_step_s"], row["prediction_note"] = predicted_step_s(row, cal) if cal else (None, "")
        measured, predicted = row.get("step_time_s"), row["predicted_step_s"]
        row["prediction_error"] = measured / predicted - 1 if measured and predicted else None


def _manifest(cfg):
    from mpirnn.data.manifest import load_manifest
    try:
        return load_manifest(cfg.data.path) if cfg.data.path else None
    except Exception:   # moved or deleted since the run: fall back to the defaults below
        return None


def _vocab(cfg) -> int:
    manifest = _manifest(cfg)
    return getattr(manifest, "vocab_size", None) or 256


def _features(cfg) -> int:
    manifest = _manifest(cfg)
    return getattr(manifest, "features", None) or 1

