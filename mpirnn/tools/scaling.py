"""Submit a scaling study to Slurm: one job per (strategy, node count, mode), metrics in one folder.

    python -m mpirnn.scaling --out results/scan1 --nodes 1,2,4 --strategies dp,sp --modes strong,weak \
        [--tasks-per-node 2] [--config X.toml] [--steps 30] [--set key=value ...] [--wait 1800]
    python -m mpirnn.report results/scan1        # table (markdown + CSV) and PNG plots

Strong scaling keeps the global problem fixed (data.batch_size for dp, data.seq_len for
sp). Weak scaling keeps the per-rank problem fixed: the batch (dp) or the sequence (sp)
grows with the number of ranks. Each job runs slurm/job.sh, so nodes and tasks are set
once, on the sbatch line built here. `--dry-run` prints the sbatch commands only.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from mpirnn.config import load_config

JOB_SCRIPT = Path(__file__).resolve().parents[2] / "slurm" / "job.sh"
STRATEGIES = ("dp", "sp")


def plan(args) -> list[dict]:
    cfg = load_config(args.config, args.overrides)
    runs = []
    for strategy in args.strategies:
        for mode in args.modes:
            for nodes in args.nodes:
                ranks = nodes * args.tasks_per_node
                settings = {"parallel.dp": ranks if strategy == "dp" else 1,
                            "parallel.sp": ranks if strategy == "sp" else 1,
                            "train.steps": args.steps}
                if mode == "weak":
                    if strategy == "dp":
                        settings["data.batch_size"] = cfg.data.batch_size * ranks
                    else:
                        settings["data.seq_len"] = cfg.data.seq_len * ranks
                name = f"{strategy}-{mode}-n{nodes}"
                settings["output.metrics"] = str(args.out / name / "metrics.jsonl")
                runs.append({"name": name, "strategy": strategy, "mode": mode, "nodes": nodes,
                             "ranks": ranks, "settings": settings})
    return runs


def sbatch_command(run: dict, args) -> list[str]:
    command = ["sbatch", "--parsable", f"--nodes={run['nodes']}", f"--ntasks-per-node={args.tasks_per_node}",
               f"--job-name=mpirnn-{run['name']}", f"--output={args.out / run['name'] / 'slurm-%j.out'}",
               "--no-requeue", str(JOB_SCRIPT)]
    if args.config:
        command += ["--config", str(Path(args.config).resolve())]
    for override in args.overrides:
        command += ["--set", override]
    for key, value in run["settings"].items():
        command += ["--set", f"{key}={value}"]
    return command


def submit(runs: list[dict], args) -> list[dict]:
    for run in runs:
        (args.out / run["name"]).mkdir(parents=True, exist_ok=True)
        command = sbatch_command(run, args)
        if args.dry_run:
            print(" ".join(command))
            continue
        out = subprocess.run(command, capture_output=True, text=True, cwd=JOB_SCRIPT.parents[1])
        if out.returncode != 0:
            sys.exit(f"mpirnn.scaling: sbatch failed for {run['name']}: {out.stderr.strip()}")
        run["job_id"] = out.stdout.strip().split(";")[0]
        (args.out / run["name"] / "run.json").write_text(json.dumps(run, indent=1))
        print(f"submitted {run['name']} as job {run['job_id']}")
    return runs


def wait(runs: list[dict], timeout_s: float) -> bool:
    """Wait until no job of the study is queued or running; False on timeout."""
    ids = {r["job_id"] for r in runs if "job_id" in r}
    deadline = time.monotonic() + timeout_s
    while ids and time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(sorted(ids))],
                                capture_output=True, text=True).stdout.split()
        ids &= {re.sub(r"_.*", "", j) for j in queued}
        if ids:
            time.sleep(2)
    return not ids


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpirnn.scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="results folder (one subfolder per run)")
    parser.add_argument("--nodes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--strategies", type=lambda s: s.split(","), default=["dp", "sp"])
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["strong", "weak"])
    parser.add_argument("--tasks-per-node", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--wait", type=float, default=0, metavar="SECONDS", help="wait for the jobs to finish")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    bad = [s for s in args.strategies if s not in STRATEGIES] + [m for m in args.modes if m not in ("strong", "weak")]
    if bad:
        parser.error(f"unknown strategy or mode {bad[0]!r}: strategies are dp, sp; modes strong, weak")
    runs = submit(plan(args), args)
    if args.wait and not args.dry_run:
        if not wait(runs, args.wait):
            sys.exit(f"mpirnn.scaling: jobs still queued or running after {args.wait:g} s")
        print(f"all jobs done; now: python -m mpirnn.report {args.out}")
    return 0

