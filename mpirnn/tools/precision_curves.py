"""Does bf16 train like float32? The same run twice, one per precision, and the two loss curves side by side.

    python -m mpirnn.tools.precision_curves [--config inputs/co2-forecast.toml] [--np 2] [--steps 300]
                                            [--set KEY=VALUE ...] [--out runs/precision/demo.json]

Each run is `mpirun -n NP python -m mpirnn.train` with `train.precision` set and its own metrics
file; everything else (data, seed, batches, grid) is the same, so the curves differ only by the
precision. A step's loss is noisy (each step draws other rows), so both curves are smoothed with
the same trailing mean over --smooth steps before they are compared: the gap at a step is
|bf16 - float32| / float32 of the smoothed losses. Printed: the largest gap over the second half
of the run, the gap at the end, both final val_loss values where the run evaluates, and each
run's median step time. docs/precision.md gives the numbers measured and the margin the contract
states.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from mpirnn.perf.processes import mpiexec


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mpirnn.tools.precision_curves", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="training config (default: the embedded default, the demo)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to both runs")
    parser.add_argument("--np", type=int, default=2, help="ranks of each run")
    parser.add_argument("--steps", type=int, help="train.steps (default: the config's)")
    parser.add_argument("--precisions", default="float32,bf16", help="the reference first, then the one compared")
    parser.add_argument("--smooth", type=int, default=20, help="trailing mean over this many steps")
    parser.add_argument("--out", default="runs/precision/curves.json")
    return parser.parse_args(argv)


def train(args, precision: str, folder: Path, name: str) -> Path:
    """One training run in `precision`, its files named `name`; the path of its metrics file."""
    metrics = folder / f"{name}.jsonl"
    command = [mpiexec(), "-n", str(args.np), sys.executable, "-m", "mpirnn.train"]
    command += ["--config", args.config] if args.config else []
    settings = [*args.set, f"train.precision={precision}", f"output.metrics={metrics}", "output.progress=false",
                f"checkpoint.dir={folder / (name + '-checkpoints')}", "checkpoint.overwrite=true"]
    settings += [f"train.steps={args.steps}"] if args.steps else []
    for setting in settings:
        command += ["--set", setting]
    print(f"precision_curves: {precision}: {' '.join(command)}", file=sys.stderr, flush=True)
    subprocess.run(command, check=True)
    return metrics


def read_curve(metrics: Path) -> dict:
    """{"loss": [per step], "val": {step: val_loss}, "step_s": median step time} from a metrics file."""
    loss, val, times = {}, {}, []
    for line in metrics.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("summary") or "step" not in entry:
            continue
        if "loss" in entry:
            loss[entry["step"]] = entry["loss"]
            times.append(entry.get("step_time_s", 0.0))
        if "val_loss" in entry:
            val[entry["step"]] = entry["val_loss"]
    steps = sorted(loss)
    return {"steps": steps, "loss": [loss[s] for s in steps], "val": val,
            "step_s": statistics.median(times) if times else None}


def smoothed(values: list[float], width: int) -> list[float]:
    """Trailing mean over `width` values (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def compare(reference: dict, other: dict, width: int) -> dict:
    """The gaps between two curves over the steps both logged."""
    common = sorted(set(reference["steps"]) & set(other["steps"]))
    ref = smoothed([reference["loss"][reference["steps"].index(s)] for s in common], width)
    oth = smoothed([other["loss"][other["steps"].index(s)] for s in common], width)
    gaps = [abs(b - a) / abs(a) for a, b in zip(ref, oth)]
    half = len(gaps) // 2
    last_val = max(set(reference["val"]) & set(other["val"]), default=None)
    return {"steps": len(common), "max_gap_second_half": max(gaps[half:]) if gaps else None,
            "final_gap": gaps[-1] if gaps else None, "final_smoothed": [ref[-1], oth[-1]] if gaps else None,
            "val_step": last_val,
            "val_loss": [reference["val"][last_val], other["val"][last_val]] if last_val is not None else None,
            "step_s": [reference["step_s"], other["step_s"]]}


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [p.strip() for p in args.precisions.split(",")]
    out = Path(args.out)
    folder = out.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    # Each run its own files, even where both have one precision (the tests' float32 twice).
    runs = [read_curve(train(args, name, folder, f"{index}-{name}")) for index, name in enumerate(names)]
    curves = {f"{index}-{name}": run for index, (name, run) in enumerate(zip(names, runs))}
    result = compare(runs[0], runs[1], args.smooth)
    from mpirnn.host import cpu_model
    result.update(precisions=names, config=args.config or "(embedded default)", ranks=args.np, cpu=cpu_model(),
                  smooth=args.smooth, command="python -m mpirnn.tools.precision_curves " +
                  " ".join(argv if argv is not None else sys.argv[1:]))
    out.write_text(json.dumps({"summary": result, "curves": curves}, indent=1))
    a, b = names
    print(f"{result['config']}, {result['steps']} steps at -n {args.np}, {result['cpu']}")
    print(f"smoothed loss ({args.smooth}-step trailing mean): {b} vs {a}: largest gap over the second half "
          f"{100 * result['max_gap_second_half']:.2f}%, at the end {100 * result['final_gap']:.2f}% "
          f"({result['final_smoothed'][0]:.4f} vs {result['final_smoothed'][1]:.4f})")
    if result["val_loss"]:
        print(f"val_loss at step {result['val_step']}: {a} {result['val_loss'][0]:.4f}, {b} {result['val_loss'][1]:.4f}")
    print(f"median step time: {a} {result['step_s'][0]:.3f} s, {b} {result['step_s'][1]:.3f} s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
