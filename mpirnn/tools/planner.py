"""Choose a grid: rank every dp × sp × pp × tp for N ranks by the predicted step time.

    python -m mpirnn.plan --config FILE.toml [--set section.key=value ...] --ranks N [--nodes K]
                          [--grid dp=2,sp=2] [--json] [--calibration FILE] [--vocab 256]
    python -m mpirnn.plan --calibrate [--config FILE.toml] [--out FILE] [--hidden 1024,2048]
    python -m mpirnn.plan --project [--calibration GPU.json] [--gpus-per-node 8] [--max-gpus 1024]
    python -m mpirnn.plan --validate runs/bench/bench.json [--calibration FILE]   # predicted vs measured

The model and its assumptions are in docs/performance.md; the arithmetic and the ranking in
mpirnn/perf/. Without --calibration the newest calibration of this CPU model that measured the
config's cell and hidden size is used: the user's own ($MPIRNN_CALIBRATION_DIR, else
~/.cache/mpirnn/calibration), else one shipped with mpirnn. On a CPU with neither, the planner
first calibrates what the config needs (its cell at its hidden size, about 20 s on an idle
2-core machine), saying so with the expected time, stores that in the user's folder, and
ranks with it; the next call finds it. `--quick` was removed (its toy sizes predicted 6×
off); `--calibrate --config X.toml` is the fast calibration now.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from mpirnn.host import cpu_model
from mpirnn.perf import calibration as calibration_file
from mpirnn.perf.calibration import CALIBRATED_HIDDEN, Calibration, CalibrationError
from mpirnn.perf.ranking import best_microbatches, rank_grids, serial
from mpirnn.perf.step_model import AXES, Prediction, Shape

QUICK_REMOVED = ("--quick was removed: its toy sizes predicted a minGRU step at 6.69 s that measured 1.01-1.08 s; "
                 "--calibrate --config X.toml measures only that config's cell and hidden size instead (about 20 s)")

def parse_grid(text: str, ranks: int) -> dict:
    """"dp=2,sp=2" → all four degrees; unnamed ones are 1, except dp, which takes what is left of `ranks`."""
    grid = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        axis, _, value = item.partition("=")
        if axis not in AXES or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"mpirnn.plan: --grid {text!r}: expected axis=degree items, axes {', '.join(AXES)}")
        grid[axis] = int(value)
    named = math.prod(grid.values())
    if "dp" not in grid and ranks % named == 0:
        grid["dp"] = ranks // named
    grid = {axis: grid.get(axis, 1) for axis in AXES}
    if math.prod(grid.values()) != ranks:
        raise SystemExit(f"mpirnn.plan: --grid {text}: dp·sp·pp·tp = {math.prod(grid.values())}, not {ranks} ranks")
    return grid


def as_json(predictions: list[Prediction], reference: Prediction, ranks: int) -> list[dict]:
    return [{**p.to_dict(), "efficiency": reference.step_s / (ranks * p.step_s)} for p in predictions]


def _name(grid: dict) -> str:
    return "×".join(str(grid[a]) for a in AXES)


def table(predictions: list[Prediction], reference: Prediction, ranks: int) -> str:
    lines = ["| # | dp×sp×pp×tp | M | C | step s | tokens/s | efficiency | bubble | comm s (fill + gradients) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, p in enumerate(predictions, 1):
        comm = p.parts["exchange_fill"] + p.parts["gradient_allreduce"]
        lines.append(f"| {i} | {_name(p.layout.grid)} | {p.layout.microbatches} | {p.layout.chunks} | {p.step_s:.4g} | "
                     f"{p.tokens_per_s:,.0f} | {100 * reference.step_s / (ranks * p.step_s):.0f}% | "
                     f"{100 * p.bubble:.0f}% | {comm:.2g} |")
    return "\n".join(lines)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load_calibration(path: str | None, shape: Shape | None = None, precision: str = "float32") -> Calibration:
    """--calibration FILE, else this CPU's newest calibration in `precision` covering the shape's cell and
    hidden size; with a shape and none found, one measured now for that cell and size (stored in the
    user's folder)."""
    if path:
        return calibration_file.load(path)
    cpu = cpu_model()
    cell, hidden = (shape.cell, shape.hidden) if shape else (None, None)
    found = calibration_file.find_for_host(cpu, cell, hidden, precision)
    if found is not None:
        return calibration_file.load(found)
    if shape is None:
        raise CalibrationError(f"no calibration for this CPU ({cpu}) in {calibration_file.searched()}: run "
                               f"python -m mpirnn.plan --calibrate, or pass --calibration FILE")
    return calibration_file.load(calibrate_for(cpu, shape.cell, shape.hidden, precision))


def calibrate_for(cpu: str, cell: str, hidden: int, precision: str = "float32"):
    """Measure this CPU for one cell and hidden size, saying so first, with the time it should take."""
    from mpirnn.perf.calibrate import calibrate, expected_seconds, what_is_measured
    kind = "" if precision == "float32" else f"{precision} "
    say(f"mpirnn.plan: no {kind}calibration of this CPU ({cpu}) for {cell} at hidden {hidden} in "
        f"{calibration_file.searched()}: calibrating {what_is_measured([cell], [hidden])} now, expected about "
        f"{expected_seconds([cell], [hidden]):.0f} s; it is stored in {calibration_file.user_dir()} "
        f"(${calibration_file.USER_DIR_VARIABLE}) and used from then on")
    return calibrate(cells=[cell], hidden=[hidden], say=say, precision=precision)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mpirnn.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML config (model and data sizes; the grid in it is ignored); with "
                                         "--calibrate: measure only its cell and hidden size")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--ranks", type=int, help="ranks to plan for")
    parser.add_argument("--nodes", type=int, default=1, help="nodes the ranks are spread over (evenly)")
    parser.add_argument("--grid", help="predict this grid only, e.g. dp=2,sp=2 (unnamed axes 1; dp takes the rest)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--calibration", help="calibration file (default: this CPU model's newest; measured first "
                                              "when there is none)")
    parser.add_argument("--vocab", type=int, default=256, help="token vocabulary (0: a continuous series)")
    parser.add_argument("--top", type=int, default=0, help="print only the best this many grids")
    parser.add_argument("--calibrate", action="store_true", help="measure this machine and write a calibration file")
    parser.add_argument("--out", help="with --calibrate: the file (default: the user's calibration folder, "
                                      "$MPIRNN_CALIBRATION_DIR or ~/.cache/mpirnn/calibration)")
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)   # removed: refused with why
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="with --calibrate: device measured")
    parser.add_argument("--precision", choices=("float32", "bf16", "fp16"),
                        help="train.precision the compute is measured in (--calibrate) or planned for "
                             "(default: the config's train.precision)")
    parser.add_argument("--hidden", type=hidden_sizes, help="with --calibrate: hidden sizes to measure besides "
                                                             "64,128,256,512, e.g. 2048 (larger ones are otherwise "
                                                             "extrapolated, which is rough once the weights leave "
                                                             "the caches)")
    parser.add_argument("--project", action="store_true", help="W1 and W2 from 1 to --max-gpus GPUs (GPU calibration)")
    parser.add_argument("--validate", metavar="BENCH_JSON", help="predicted vs measured for a mpirnn.bench result file "
                                                                "(calibration: --calibration, else the one the bench used)")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--max-gpus", type=int, default=1024)
    return parser.parse_args(argv)


def hidden_sizes(text: str) -> list[int]:
    """--hidden 1024,2048 -> [1024, 2048] (sorted, once each)."""
    try:
        sizes = sorted({int(h) for h in text.split(",")})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 4:   # the calibration also runs each size's quarter as an input width
        raise argparse.ArgumentTypeError(f"{text!r}: give hidden sizes of at least 4 separated by commas, e.g. 1024,2048")
    return sizes


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        print(f"mpirnn.plan: error: {QUICK_REMOVED}", file=sys.stderr)
        return 2
    try:
        if args.calibrate:
            return calibrate_command(args)
        if args.project:
            from mpirnn.tools.projection import main as project
            return project(args.calibration, args.gpus_per_node, args.max_gpus, args.json)
        if args.validate:
            return validate(args)
        if not args.ranks or args.ranks < 1:
            raise SystemExit("mpirnn.plan: give --ranks N (or --calibrate, or --project)")
        return plan(args)
    except (CalibrationError, ValueError) as exc:
        print(f"mpirnn.plan: error: {exc}", file=sys.stderr)
        return 1


def calibrate_command(args) -> int:
    """--calibrate: every cell at the default sizes (plus --hidden), or only a config's cell and hidden size."""
    from mpirnn.perf.calibrate import calibrate, expected_seconds, what_is_measured
    cells, hidden = None, sorted(set(args.hidden) | set(CALIBRATED_HIDDEN)) if args.hidden else None
    precision = args.precision or "float32"
    if args.config or args.overrides:
        from mpirnn.config import load_config
        cfg = load_config(args.config, args.overrides)
        cells, hidden = [cfg.model.cell], sorted({cfg.model.hidden, *(args.hidden or [])})
        precision = args.precision or cfg.train.precision
    from mpirnn.models.precision import refusal
    if refusal(precision, args.device):   # bf16 without native support, fp16 off CUDA: training refuses them
        raise CalibrationError(refusal(precision, args.device))
    say(f"mpirnn.plan: calibrating {what_is_measured(cells, hidden)} in {precision}, expected about "
        f"{expected_seconds(cells, hidden):.0f} s")
    calibrate(args.out, device=args.device, cells=cells, hidden=hidden, say=say, precision=precision)
    return 0


def recorded_calibration(path: str | None) -> str | None:
    """The calibration a bench file names; one named by its old place in benchmarks/calibration/
    (before the calibrations became package data) is found among the shipped ones by its name."""
    from pathlib import Path
    if path and not Path(path).exists() and (calibration_file.SHIPPED_DIR / Path(path).name).exists():
        return str(calibration_file.SHIPPED_DIR / Path(path).name)
    return path


def validate(args) -> int:
    from pathlib import Path

    from mpirnn.tools.bench_predictions import validate as compare
    from mpirnn.tools.bench_predictions import validation_table
    bench = json.loads(Path(args.validate).read_text())
    cal = load_calibration(args.calibration or recorded_calibration(bench["meta"].get("calibration")))
    rows = compare(bench, cal)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    meta = bench["meta"]
    print(f"bench: {args.validate} ({meta['date']}, {meta['cpu']}, load at the start of each pass "
          f"{meta['load_per_pass']}); calibration: {cal.path}\n")
    print(validation_table(rows))
    return 0


def plan(args) -> int:
    from mpirnn.config import load_config
    cfg = load_config(args.config, args.overrides)
    shape = Shape.from_config(cfg, args.vocab)
    cal = load_calibration(args.calibration, shape, args.precision or cfg.train.precision)
    bucket = cfg.train.bucket_mb
    reference = serial(shape, cal, bucket)
    if args.grid:
        grid = parse_grid(args.grid, args.ranks)
        # The config's microbatches and chunks, when set, are what training would run.
        predictions = [best_microbatches(shape, grid, cal, args.nodes, bucket, microbatches=cfg.parallel.microbatches,
                                         chunks=getattr(cfg.parallel, "chunks", 0))]
    else:
        predictions = rank_grids(shape, args.ranks, cal, args.nodes, bucket)
    if args.top:
        predictions = predictions[:args.top]
    if args.json:
        print(json.dumps(as_json(predictions, reference, args.ranks), indent=1))
        return 0
    data = "tokens, vocab " + str(shape.vocab) if shape.vocab else "a series"
    kind = "bidirectional " if shape.bidirectional else ""
    print(f"{kind}{shape.cell} {shape.layers}×{shape.hidden}{' per direction' if shape.bidirectional else ''}, embed {shape.embed}, batch {shape.batch}, "
          f"seq_len {shape.seq_len} ({data}); {args.ranks} rank(s) on {args.nodes} node(s); 1 rank: "
          f"{reference.step_s:.4g} s per step\ncalibration: {cal.path} ({cal.data['host'].get('cpu')}, "
          f"{cal.data['host'].get('date', '?')[:10]}, {cal.precision})\n")
    print(table(predictions, reference, args.ranks))
    if shape.bidirectional:   # what the table's M, C and bubble mean here (docs/performance.md)
        print("\nbidirectional layers: one chunk per segment (C = 1); under sp two opposite wavefronts "
              "(bubble 0 at sp = 2, the two chains swap halves), under pp microbatches overlap the stages")
    return 0
