"""Benchmark W6: a bidirectional LSTM tagger, side by side in one run (issue 18's workload).

    python -m mpirnn.tools.bench_bidirectional [--steps 3] [--repeat 2] [--out runs/bench/w6.json] [--tiny]

A BiLSTM of 2 layers × 128 hidden units per direction over 40 input features (projected to 64),
10 classes scored at every step (task `tag`), global batch 16, every row the full 4,096 steps.
Each run trains the same batches through the trainer's own parts (mpirnn/parallel/step.py picks
the two opposite wavefronts of mpirnn/parallel/bidirectional_wavefront.py under sp), each rank
one thread. Rows:

    1 rank                  the baseline
    sp=2 (-n 2)             two opposite wavefronts, one microbatch (the Deep Speech swap)
    pp=2, M=4 (-n 2)        one layer per stage, one chunk, 4 microbatches overlap the stages, and
                            stage 0 runs microbatches 1 and 3's reverse direction of layer 1 (the
                            plan balances the stages: docs/parallelism.md)
    sp=4 (-n 4)             for memory: activations saved for backward per rank (4 ranks on
                            this machine's 2 cores, so its time is oversubscribed)

The ranks run with glibc keeping freed memory (`--malloc keep`, as `python -m mpirnn.bench`
does, and as training does: mpirnn/distributed/device.py), so no step faults its large
activations in again; `--malloc default` runs glibc's defaults. Times are medians of the step over the timed steps (the first step warms up and is where the
saved activations are measured: the distinct tensors autograd saves for backward, as W2's are,
mpirnn/tools/workloads.py `SavedBytes`); the performance model's prediction stands beside each
row (docs/performance.md, "Bidirectional layers"). The driver starts each run
with mpirun itself.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from mpirnn.perf.processes import KEEP_MEMORY
from mpirnn.tools import side_by_side
from mpirnn.tools.side_by_side import exact

W6 = dict(cell="lstm", hidden=128, layers=2, embed=64, features=40, classes=10, batch=16, seq_len=4096)
TINY = dict(hidden=16, embed=8, features=4, batch=8, seq_len=64)
SEED = 0
# Targets (issue 18): sp=2 at least 1.7× the 1-rank step, pp=2 1.4×; sp=4's saved activations per rank at
# most 30 % of one rank's.
SPEEDUP_TARGETS = {"sp=2 (-n 2)": 1.7, "pp=2, M=4 (-n 2)": 1.4}
MEMORY_TARGET = ("sp=4 (-n 4)", 0.30)


def shape(tiny: bool) -> dict:
    return {**W6, **(TINY if tiny else {})}


# ------------------------------------------------------------------ one run (an MPI rank)


def build_step(s: dict, comms, microbatches: int) -> SimpleNamespace:
    """W6's step on this rank, built as the trainer's own parts build it: the model cut to the
    rank's stage, its StepRunner and Adam, the seeded batch (every row full length), this rank's
    share of its inputs and its `tag` targets, and the loss's divisor. Shared with
    benchmarks/w6_stages.py, which traces the same step."""
    import torch

    from mpirnn.data.labelled_targets import LabelledTargets
    from mpirnn.parallel.plan import make_plan
    from mpirnn.parallel.shard import stage_model
    from mpirnn.parallel.step import StepRunner

    model = side_by_side.worker_model(s, bidirectional=True)
    plan = make_plan(comms.grid, comms.coords, batch_size=s["batch"], seq_len=s["seq_len"], layers=s["layers"],
                     cell=s["cell"], microbatches=microbatches, hidden=s["hidden"], bidirectional=True,
                     embed=s["embed"])
    model = stage_model(model, plan, None)
    runner = StepRunner(model, plan, comms, bucket_mb=4.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(SEED)
    inputs = torch.randn(s["batch"], s["seq_len"], s["features"], generator=g)
    labels = torch.randint(0, s["classes"], (s["batch"], s["seq_len"]), generator=g)
    lengths = torch.full((s["batch"],), s["seq_len"])   # every row full length
    rows, segment = slice(*plan.rows), slice(*plan.segment)
    targets = LabelledTargets("tag", labels[rows, segment], lengths[rows], plan.segment[0])
    return SimpleNamespace(model=model, plan=plan, runner=runner, optimizer=optimizer, inputs=inputs,
                           local_inputs=inputs[rows, segment], targets=targets, norm=float(s["batch"] * s["seq_len"]))


def run_worker(spec: dict) -> dict | None:
    import numpy as np
    import torch
    from mpi4py import MPI

    from mpirnn.distributed.device import flush_denormals
    from mpirnn.distributed.mesh import Comms
    from mpirnn.grid import Grid
    from mpirnn.tools.workloads import SavedBytes

    torch.set_num_threads(1)
    flush_denormals()   # as training does
    world = MPI.COMM_WORLD
    comms = Comms.create(Grid(world.size, sp=spec["sp"], pp=spec["pp"]), world)
    step = build_step(shape(spec["tiny"]), comms, spec["microbatches"])
    model, plan, runner = step.model, step.plan, step.runner
    times, losses, saved = [], [], 0
    for index in range(spec["steps"] + 1):
        state = model.zero_state(plan.local_rows, step.inputs, range(*plan.layers))
        step.optimizer.zero_grad(set_to_none=True)
        world.Barrier()
        started = time.perf_counter()
        if index == 0:   # the warm-up step: what autograd saves for backward
            with SavedBytes(model) as hook:
                loss, _ = runner(step.local_inputs, step.targets, state, step.norm)
            saved = hook.bytes
        else:
            loss, _ = runner(step.local_inputs, step.targets, state, step.norm)
        step.optimizer.step()
        elapsed, total = side_by_side.step_end(world, started, loss)
        losses.append(total)
        if index:
            times.append(elapsed)
    every = np.zeros(world.size)
    world.Allgather(np.array([float(saved)]), every)
    runner.reducer.remove()
    comms.free()
    if world.rank:
        return None
    return {**spec, "step_times_s": times, "losses": losses, "microbatches_run": plan.microbatches,
            "saved_bytes_per_rank": every.tolist(), "median_step_s": statistics.median(times)}


# ------------------------------------------------------------------ the driver


RUNS = [dict(name="1 rank", ranks=1, sp=1, pp=1, microbatches=0),
        dict(name="sp=2 (-n 2)", ranks=2, sp=2, pp=1, microbatches=0),
        dict(name="pp=2, M=4 (-n 2)", ranks=2, sp=1, pp=2, microbatches=4),
        dict(name="sp=4 (-n 4)", ranks=4, sp=4, pp=1, microbatches=0)]


def launch(spec: dict, workdir: Path) -> dict:
    path = workdir / f"run-{RUNS.index(next(r for r in RUNS if r['name'] == spec['name']))}.json"
    return side_by_side.launch("mpirnn.tools.bench_bidirectional", spec, path,
                               KEEP_MEMORY if spec["malloc"] == "keep" else None)


def model_shape(s: dict):
    """The model's shape. Its head is the calibration's series head (one output per step): the
    10-class head scored at every step costs a little more, about 1 % of a step beside the recurrence."""
    from mpirnn.perf.step_model import Shape
    return Shape(s["cell"], s["layers"], s["hidden"], s["embed"], s["batch"], s["seq_len"], vocab=None,
                 features=s["features"], bidirectional=True)


def predicted_step_s(run: dict, s: dict, cal) -> float | None:
    """The performance model's step for a run, with the microbatches the run's plan resolved."""
    if cal is None:
        return None
    from mpirnn.perf.step_model import Layout, predict
    layout = Layout(sp=run["sp"], pp=run["pp"], microbatches=run["microbatches_run"], chunks=1, malloc=run["malloc"])
    return predict(model_shape(s), layout, cal).step_s


def table(results: list[dict]) -> str:
    base, base_saved = results[0]["median_step_s"], max(results[0]["saved_bytes_per_rank"])
    lines = ["| W6 run | median step s | predicted s (error) | speedup over 1 rank | saved for backward per rank "
             "(MiB, share of 1 rank's) | loss = 1 rank's |", "|---|---|---|---|---|---|"]
    for r in results:
        m, saved = r["median_step_s"], max(r["saved_bytes_per_rank"])
        p = r.get("predicted_step_s")
        predicted = "—" if p is None else f"{p:.3f} ({100 * (p / m - 1):+.0f}%)"
        same = "—" if r is results[0] else ("yes" if exact(r, results[0]) else "NO")
        name = r["name"] + (" ¹" if r["ranks"] > (os.cpu_count() or 1) else "")
        lines.append(f"| {name} | {m:.3f} | {predicted} | {base / m:.2f}× | {saved / 2**20:.0f} "
                     f"({saved / base_saved:.0%}) | {same} |")
    if any(r["ranks"] > (os.cpu_count() or 1) for r in results):
        lines.append(f"\n¹ more ranks than this machine's {os.cpu_count()} cores: its time is oversubscribed "
                     f"(the row is there for memory)")
    return "\n".join(lines)


def verdicts(results: list[dict]) -> list[str]:
    """Each issue-18 target, met or missed, with the measured figure."""
    by_name = {r["name"]: r for r in results}
    base = results[0]
    out = []
    for name, target in SPEEDUP_TARGETS.items():
        if name in by_name:
            got = base["median_step_s"] / by_name[name]["median_step_s"]
            out.append(f"{name}: {got:.2f}× (target ≥ {target}×: {'met' if got >= target else 'MISSED'})")
    name, share = MEMORY_TARGET
    if name in by_name:
        got = max(by_name[name]["saved_bytes_per_rank"]) / max(base["saved_bytes_per_rank"])
        out.append(f"{name}: saved activations per rank {got:.0%} of 1 rank's (target ≤ {share:.0%}: "
                   f"{'met' if got <= share else 'MISSED'})")
    return out


def main(argv=None) -> int:
    parser = side_by_side.parser_for("mpirnn.tools.bench_bidirectional", __doc__, steps=3, out="runs/bench/w6.json")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="keep (default, as python -m mpirnn.bench): glibc keeps freed memory, so no step faults "
                             "its activations in again (training does the same); default: glibc's defaults")
    args = parser.parse_args(argv)
    driven = side_by_side.drive(args, "mpirnn.tools.bench_bidirectional", run_worker, shape, RUNS, launch,
                                ("step_times_s",), malloc=args.malloc)
    if driven is None:
        return 0
    from mpirnn.host import cpu_model
    s, cal, pooled = driven
    results = []
    for r in pooled:
        r["median_step_s"] = statistics.median(r["step_times_s"])
        r["predicted_step_s"] = predicted_step_s(r, s, cal)
        results.append(r)
    text = table(results)
    print(text)
    print("\n".join(verdicts(results)))
    side_by_side.write_results(args.out, {"shape": s, "cpu": cpu_model(), "malloc": args.malloc, "runs": results,
                                          "table": text, "verdicts": verdicts(results),
                                          "calibration": cal.path if cal else None,
                                          "load_avg_end": os.getloadavg()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
