"""Predicting a labelled split with a checkpoint, on any grid (the work of `python -m mpirnn.predict`).

The split is scored exactly as `evaluate` scores it (mpirnn/inference/evaluation.py
`score_checkpoint`: the checkpoint's model staged on this world's grid, rows read whole); the
last stage's tp rank 0 of every data-parallel group and segment keeps each prediction with its
row (and step), and they are gathered to rank 0 and sorted into split order
(mpirnn/inference/labelled_tally.py), so every grid writes the same file. Rank 0 writes the
predictions, the metrics as P.json beside them and, with --plot, the confusion matrix.

    mpirun -n 2 python -m pytest -q --with-mpi -m mpi tests/mpi/test_predict.py
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mpirnn.distributed.agreement import agree
from mpirnn.errors import ConfigError, DataError
from mpirnn.inference import prediction_files
from mpirnn.inference.command import on_rank0, write_whole
from mpirnn.inference.evaluation import report, score_checkpoint, summary


@dataclass(frozen=True)
class Outputs:
    table: Path         # P.csv or P.h5
    metrics: Path       # P.json beside it
    plot: Path | None   # C.png, C.pdf or C.svg


def outputs(args) -> Outputs:
    """The files asked for, checked before any compute (names, and matplotlib for --plot)."""
    table = Path(args.out)
    if table.suffix.lower() not in prediction_files.TABLE_FORMATS:
        raise ConfigError(f"--out {table}: name a .csv or .h5 file (P.json with the metrics is written beside it)")
    plot = Path(args.plot) if args.plot else None
    if plot is not None:
        if plot.suffix.lstrip(".").lower() not in prediction_files.PLOT_FORMATS:
            raise ConfigError(f"--plot {plot}: name a {', '.join('.' + f for f in prediction_files.PLOT_FORMATS)} "
                              f"file")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install 'mpirnn[plots]'") from None
    for path in (table, plot):
        if path is not None and not path.parent.is_dir():
            raise ConfigError(f"cannot write {path}: the folder {path.parent} does not exist")
    return Outputs(table, table.with_suffix(".json"), plot)


def check_labelled(info, plot: Path | None) -> None:
    spec = info.task_spec
    if not spec.labelled:
        raise DataError(f"predict needs a model of a labelled task (tag, classify or regress), but this checkpoint "
                        f"holds {info.describe()}: use python -m mpirnn.evaluate, generate or forecast")
    if plot is not None and not spec.classes:
        raise ConfigError(f"--plot draws a confusion matrix, and task {spec.task!r} has no classes: leave out --plot")


def predict(args, world) -> int:
    files = agree(world, outputs, args)

    def done(score, info, located, cfg, grid):
        result = summary(score, info, located, cfg, args.split, grid)
        result["predictions"] = str(files.table)
        if world.rank == 0:
            print(report(result), flush=True)
            print(f"predictions of {len(score.predictions.rows)} "
                  f"{'valid steps' if info.task == 'tag' else 'sequences'} in {files.table}, metrics in "
                  f"{files.metrics}" + (f", confusion matrix in {files.plot}" if files.plot else ""), flush=True)
        # Rank 0 alone holds the gathered predictions: it builds the files and writes them.
        on_rank0(world, lambda: write_whole(_payloads(files, score, info, result)))
        return 0

    return score_checkpoint(args, world, done, keep=True, check=lambda info: check_labelled(info, files.plot))


def _payloads(files: Outputs, score, info, result: dict) -> dict:
    spec = info.task_spec
    table = (prediction_files.predictions_csv if files.table.suffix.lower() == ".csv"
             else prediction_files.predictions_h5)(score.predictions, spec)
    payloads = {files.table: table, files.metrics: prediction_files.metrics_json(result)}
    if files.plot is not None:
        title = f"{result['split']} split of {Path(result['data']).name}: accuracy {result['accuracy']:.3f}"
        payloads[files.plot] = prediction_files.confusion_plot(result["confusion"], spec.classes,
                                                               files.plot.suffix.lstrip(".").lower(), title)
    return payloads
