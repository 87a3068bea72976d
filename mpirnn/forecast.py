"""Forecast a series with a trained checkpoint and compare it with the held-out values and two baselines.

    python -m mpirnn.forecast --checkpoint runs/x/checkpoints --horizon 52 --season 52 \
        --out forecast.csv [--plot forecast.png] [--context N] [--data DIR] [--best] [--no-actuals] \
        [--calibrate K | --no-calibrate] [--calibrate-from STEP]

The model warms up on the last N steps of the train split (--context; default the
checkpoint's data.seq_len), then runs H steps ahead (--horizon) feeding its own predictions
back. The forecast is compared, in data units, with the first H steps of the val split (which
follow the train split in time), and so are two baselines on the same steps: the last
observed value, and seasonal naive (the value one --season earlier). A model trained with
train.horizon = K predicts K steps at a time; one trained with train.loss = "quantile" also gives
its quantiles, scored by the pinball loss, a CRPS estimate and the coverage of the band between the
outermost ones. The band (a point model's too: its forecast ± a width, at 0.1 and 0.9) is
calibrated by split-conformal on K backtest forecasts from origins inside the train split
(--calibrate K, default 40; --calibrate-from STEP: origins from that step on, by default the
first step a model trained with data.holdout never saw; --no-calibrate keeps the model's own
quantiles, and a point model then has no band). Writes F.csv (step,forecast,actual[,q...]), F.json (rmse, mae, baselines.*, and
the quantile scores) and the plot; prints the same.
Under `mpirun -n N` rank 0 computes with the whole model and the other ranks wait, so the
numbers are those of one process. Format and rules: docs/inference.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from mpi4py import MPI

from mpirnn.distributed.agreement import agree
from mpirnn.distributed.launch import run_guarded
from mpirnn.errors import ConfigError, DataError
from mpirnn.inference.command import add_checkpoint_arguments, check_model_fits, find_checkpoint, on_rank0, write_whole

PLOT_FORMATS = ("png", "pdf", "svg")
# Backtests `forecast` calibrates its band on by default (mpirnn/inference/backtest.py).
DEFAULT_ORIGINS = 40


def parse_args(argv):
    from mpirnn.distributed.launch import RankZeroParser

    parser = RankZeroParser(prog="python -m mpirnn.forecast", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--horizon", type=int, required=True, metavar="H", help="steps to forecast")
    parser.add_argument("--context", type=int, metavar="N",
                        help="observed steps to warm up on (default: the checkpoint's data.seq_len)")
    parser.add_argument("--data", help="dataset directory (default: the one the checkpoint was trained on)")
    parser.add_argument("--season", type=int, metavar="S", help="season length for the seasonal-naive baseline (default: the dataset's season, "
                             "from prepare --season or its time column's frequency; none without one)")
    parser.add_argument("--out", required=True, metavar="F.csv", help="the forecast CSV; F.json is written beside it")
    parser.add_argument("--plot", metavar="F.png", help="plot history, forecast and actual (needs matplotlib)")
    parser.add_argument("--no-actuals", action="store_true",
                        help="forecast past the val split: no comparison (actual filled where known)")
    band = parser.add_mutually_exclusive_group()
    band.add_argument("--calibrate", type=int, default=DEFAULT_ORIGINS, metavar="K",
                      help=f"calibrate the band on K backtests from origins in the train split (default "
                           f"{DEFAULT_ORIGINS}; fewer where fewer fit; docs/forecasting.md, 'Calibrated bands')")
    band.add_argument("--no-calibrate", action="store_true",
                      help="keep the model's own quantiles (a point model: no band)")
    parser.add_argument("--calibrate-from", type=int, metavar="STEP",
                        help="backtest origins at train-split step STEP or later (default: the first of the steps "
                             "data.holdout kept out of training, else 0): with --data holding a longer train split "
                             "than the model was trained on, its length there makes the backtests out of sample")
    return parser.parse_args(argv)


@dataclass
class Job:
    """A checked forecast request (every rank makes it, so every rank refuses a bad one)."""

    info: object
    train: object           # the train split's Manifest
    val: object             # the val split's Manifest, or None
    horizon: int
    context: int
    season: int | None
    csv: Path
    json: Path
    plot: Path | None
    scored: bool
    trained_horizon: int = 1   # train.horizon of the checkpoint: steps its head predicts at once
    calibrate: int = 0         # backtests to calibrate the band on (0: the model's own quantiles)
    calibrate_from: int = 0    # the earliest backtest origin allowed (a train-split step)
    held_out: int = 0          # train-split steps from calibrate_from on, when data.holdout kept them out of training


def check_request(args, located) -> Job:
    from mpirnn.data.manifest import load_manifest
    from mpirnn.inference.load import model_info, saved_config

    cfg = saved_config(located)
    info = model_info(located, cfg)
    if info.tokens:
        raise ConfigError(f"forecast needs a series model, and {located.path} holds {info.describe()}: "
                          f"use python -m mpirnn.generate for token models")
    data = args.data or cfg.data.path
    train = load_manifest(data)
    check_model_fits(info, train, located.path)
    if train.kind != "series":
        raise DataError(f"forecast needs one stream of a series, and {data} holds {train.kind} (independent rows "
                        f"of {train.seq_len} steps): use python -m mpirnn.evaluate to score it")
    context = cfg.data.seq_len if args.context is None else args.context
    if args.horizon < 1:
        raise ConfigError(f"--horizon {args.horizon}: forecast at least 1 step")
    if args.calibrate < 1 and not args.no_calibrate:
        raise ConfigError(f"--calibrate {args.calibrate}: calibrate on 1 or more backtests (default "
                          f"{DEFAULT_ORIGINS}), or pass --no-calibrate to keep the model's own quantiles")
    back = info.inputs.back if info.input_width else 0
    calibrate_from, held_out = args.calibrate_from, 0
    if calibrate_from is None:
        calibrate_from = held_out_start(cfg, train, args.data)
        held_out = train.length - calibrate_from if calibrate_from else 0
    elif not 0 <= calibrate_from < train.length:
        raise ConfigError(f"--calibrate-from {args.calibrate_from}: give a step of the train split, 0 to "
                          f"{train.length - 1}")
    if not 1 <= context <= train.length - back:
        lags = f" less the {back} steps its lags read before the first" if back else ""
        raise ConfigError(f"--context {context}: warm up on 1 to {train.length - back} steps (the train split's "
                          f"length{lags})")
    if info.input_width:
        info.inputs.check_data(train)
    season = train.season if args.season is None else args.season
    if season is not None and not 1 <= season <= train.length:
        raise ConfigError(f"--season {season}: use 1 to {train.length} steps (the train split's length)")
    val = load_manifest(data, split="val") if "val" in train.splits else None
    if not args.no_actuals:
        if val is None:
            raise DataError(f"{data} has no val split to compare the forecast with: prepare it with --val-fraction "
                            f"F, or pass --no-actuals to forecast without a comparison")
        if args.horizon > val.length:
            raise ConfigError(f"--horizon {args.horizon} is longer than the val split of {data} ({val.length} "
                              f"steps), so not every step has an actual value: use --horizon {val.length} or less, "
                              f"or --no-actuals to forecast past the data without a comparison")
    csv = Path(args.out)
    if csv.suffix != ".csv":
        raise ConfigError(f"--out {csv}: name a .csv file (its .json is written beside it)")
    plot = Path(args.plot) if args.plot else None
    for path in (csv, plot):
        if path is not None and not path.resolve().parent.is_dir():
            raise ConfigError(f"cannot write {path}: the folder {path.resolve().parent} does not exist")
    if plot is not None:
        if plot.suffix.lstrip(".") not in PLOT_FORMATS:
            raise ConfigError(f"--plot {plot}: name a {', '.join('.' + f for f in PLOT_FORMATS)} file")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install 'mpirnn[plots]'") from None
    return Job(info, train, val, args.horizon, context, season, csv, csv.with_suffix(".json"), plot,
               not args.no_actuals, cfg.train.horizon, 0 if args.no_calibrate else args.calibrate,
               calibrate_from, held_out)


def held_out_start(cfg, train, data_arg) -> int:
    """The first train-split step a model trained with data.holdout never trained on (0: none). With
    --data another dataset of the same series, the held-out steps start where they did in the one it
    trained on (data.path), and every step after that one's train split is unseen too."""
    from mpirnn.data.manifest import load_manifest

    if not cfg.data.holdout:
        return 0
    trained = train
    if data_arg is not None:
        try:
            trained = load_manifest(cfg.data.path)
        except (DataError, OSError):
            return 0   # the dataset it trained on is not here: backtests from step 0 (--calibrate-from to choose)
    start = trained.length - cfg.data.holdout
    return start if 0 < start < train.length else 0


# A forecast this many times longer than the trained horizon runs mostly on its own predictions.
FAR_PAST_TRAINED = 4


def horizon_warning(job: Job) -> str | None:
    """The line `forecast` prints when its horizon is far past the one the model was trained for."""
    if job.horizon <= FAR_PAST_TRAINED * job.trained_horizon:
        return None
    return (f"mpirnn: warning: --horizon {job.horizon} is more than {FAR_PAST_TRAINED}x the {job.trained_horizon} "
            f"step(s) the model was trained to predict at once (train.horizon = {job.trained_horizon}): past them "
            f"it feeds on its own predictions and may drift; train with train.horizon closer to {job.horizon} "
            f"(up to data.seq_len) for such forecasts")


def run(job: Job, located) -> None:
    """Rank 0: forecast, compare, write the files whole, print the comparison."""
    import numpy as np

    from mpirnn.data.reader import Reader
    from mpirnn.inference import forecast_band, forecast_files, forecasting
    from mpirnn.inference.load import build

    model, _, _ = build(located, "cpu")
    warning = horizon_warning(job)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    H, F, T = job.horizon, job.info.features, job.train.length
    span = min(T, max(job.context, job.season or 0, 4 * (job.season or 0), 3 * H))
    reader = Reader(job.train)
    history = reader.read_span(T - span, T).astype(np.float64)
    reader.close()
    inputs = job.info.inputs if job.info.input_width else None
    back = inputs.back if inputs else 0
    if back:   # the lagged inputs of the first warm-up steps reach further back
        reader = Reader(job.train)
        context = reader.read_span(T - job.context - back, T).astype(np.float64)
        reader.close()
    else:
        context = history[-job.context:]
    forecast, quantiles = forecasting.roll_quantiles(model, context, H, job.info.normalization, inputs,
                                                     T - job.context, job.train.time)
    levels = model.predicts.quantiles
    raw, calibration = quantiles, None
    if job.calibrate:
        quantiles, levels, calibration = forecast_band.calibrated(
            model, job.train, forecast, quantiles, levels, H, job.context, job.info.normalization, inputs,
            job.calibrate, job.calibrate_from)
        print(forecast_band.calibration_line(calibration, levels, job.held_out), flush=True)
    actual = np.full((H, F), np.nan)
    if job.val is not None:
        known = min(H, job.val.length)
        reader = Reader(job.val)
        actual[:known] = reader.read_span(0, known)
        reader.close()
    seasonal = forecasting.seasonal_naive(history, H, job.season) if job.season else None
    result = summary(job, located, forecast, actual, forecasting.last_value(history, H), seasonal,
                     quantiles, levels)
    result.update(forecast_band.calibration_json(job.calibrate, calibration, raw, actual,
                                                 model.predicts.quantiles, job.scored, job.held_out))
    files = {job.csv: forecast_files.forecast_csv(forecast, actual, quantiles, levels),
             job.json: forecast_files.forecast_json(result)}
    if job.plot is not None:
        title = f"{H}-step forecast after {job.context} observed steps ({job.train.root.name})"
        band = "band, calibrated" if calibration is not None and not isinstance(calibration, str) else "quantile band"
        files[job.plot] = forecast_files.forecast_plot(history, forecast, actual, seasonal,
                                                       job.plot.suffix.lstrip("."), title, quantiles, levels, band)
    write_whole(files)
    print(report(result, files), flush=True)


def summary(job: Job, located, forecast, actual, last, seasonal, quantiles=None, levels=()) -> dict:
    import numpy as np

    from mpirnn.inference.forecasting import errors
    from mpirnn.inference.quantile_scores import quantile_scores

    result = {"checkpoint": str(located.path), "step": located.step, "data": str(job.train.root),
              "horizon": job.horizon, "context": job.context, "season": job.season, "features": job.info.features,
              "unit": "data units", "scored": job.scored, "actual_steps": int((~np.isnan(actual[:, 0])).sum()),
              "trained_horizon": job.trained_horizon, "quantiles": list(levels) or None}
    model = errors(forecast, actual) if job.scored else [{"rmse": None, "mae": None}] * job.info.features
    naive = errors(last, actual) if job.scored else model
    seasons = errors(seasonal, actual) if job.scored and seasonal is not None else None
    # The first feature under the plain names (as in the CSV); every feature in per_feature.
    result.update(rmse=model[0]["rmse"], mae=model[0]["mae"],
                  baselines={"last_value": naive[0], "seasonal_naive": seasons[0] if seasons else None})
    # A quantile model's pinball, crps, coverage and band: the first feature under the plain names.
    spread = [{}] * job.info.features
    if quantiles is not None:
        unscored = dict.fromkeys(("pinball", "pinball_by_quantile", "crps", "coverage"))
        unscored["band"] = [levels[0], levels[-1]]
        spread = quantile_scores(quantiles, actual, levels) if job.scored else [unscored] * job.info.features
        result.update(spread[0])
    if job.info.features > 1:
        result["per_feature"] = [{**model[j], **spread[j], "baselines": {
            "last_value": naive[j], "seasonal_naive": seasons[j] if seasons else None}}
            for j in range(job.info.features)]
    return result


def report(result: dict, files: dict) -> str:
    def row(name, scores):
        if not scores or scores["rmse"] is None:
            return f"  {name:<16} -"
        return f"  {name:<16} RMSE {scores['rmse']:.6g}  MAE {scores['mae']:.6g}"

    lines = [f"forecast of {result['horizon']} steps after the last {result['context']} observed (train split of "
             f"{result['data']}), checkpoint step {result['step']}"
             + (", first feature" if result["features"] > 1 else "") + ", data units:"]
    if result["scored"]:
        season = result["season"]
        band = result.get("band")
        quantile = (f"  pinball {result['pinball']:.6g}  CRPS~ {result['crps']:.6g}  {band[0]:g}-{band[1]:g} "
                    f"coverage {result['coverage']:.3f}" if band and result.get("pinball") is not None else "")
        before = (result.get("uncalibrated") or {}).get("coverage")
        quantile += f" (uncalibrated {before:.3f})" if before is not None else ""
        lines += [row("model", result) + quantile, row("last value", result["baselines"]["last_value"]),
                  row(f"seasonal naive{f' ({season})' if season else ''}",
                      result["baselines"]["seasonal_naive"]) + ("" if season else " (no --season given)")]
    else:
        lines.append("  not compared (--no-actuals)")
    lines.append("wrote " + ", ".join(str(path) for path in files))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    world = MPI.COMM_WORLD
    located = find_checkpoint(world, args.checkpoint, args.best)
    job = agree(world, check_request, args, located)
    on_rank0(world, run, job, located)
    return 0


def cli() -> None:
    """Console-script entry point (`mpirnn-forecast`)."""
    sys.exit(run_guarded(main))


if __name__ == "__main__":
    cli()
