"""Benchmark W7: variable-length classification, side by side in one run (issue 17's workload).

    python -m mpirnn.tools.bench_lengths [--steps 4] [--out runs/bench/w7.json] [--tiny]

An LSTM 2×256 classifier over 12 features, global batch 64, row lengths drawn log-uniform
from 100 to 1,400 steps (seeded). Every run trains on the same global batches (the first of a
bucketed epoch, mpirnn/data/sampler.py), each rank one thread, through the trainer's own parts:
the step is cut by its longest row (Plan.for_length), units skip padded steps, the loss is
taken at each row's last valid step. Rows:

    1 rank                        the baseline
    dp=2 / sp=2 (-n 2)            speedup over 1 rank, per valid element
    1 rank, one length            the same shape with every row the batch's mean length: the cost
                                  per valid element of a fixed-length run, for comparison

and the padding computed with and without bucketing (the share of row-steps run that are
padding, cut to each batch's longest row). Times are medians over the timed steps of the
seconds per thousand valid elements; the driver starts each run with mpirun itself.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

from mpirnn.host import cpu_model
from mpirnn.tools import side_by_side
from mpirnn.tools.side_by_side import exact

W7 = dict(cell="lstm", hidden=256, layers=2, embed=64, features=12, classes=10, batch=64, shortest=100,
          longest=1400, rows=64 * 32)
TINY = dict(hidden=16, embed=8, batch=8, shortest=10, longest=60, rows=8 * 8)
SEED = 0


def shape(tiny: bool) -> dict:
    return {**W7, **(TINY if tiny else {})}


def row_lengths(s: dict) -> np.ndarray:
    """Every row's length, log-uniform between the shortest and the longest."""
    rng = np.random.default_rng(SEED)
    return np.exp(rng.uniform(np.log(s["shortest"]), np.log(s["longest"] + 1), s["rows"])).astype(np.int64).clip(
        s["shortest"], s["longest"])


def batches(s: dict, bucket: bool, count: int) -> list[np.ndarray]:
    """The first `count` global batches of epoch 0, as training draws them (longest row first)."""
    from mpirnn.data.sampler import bucketed_epoch, longest_first, shuffled_batch
    lengths = row_lengths(s)
    if bucket:
        return bucketed_epoch(0, s["batch"], lengths, SEED)[:count]
    return [longest_first(shuffled_batch(step, s["batch"], len(lengths), SEED), lengths) for step in range(count)]


def padding_share(s: dict, bucket: bool) -> float:
    """Padding among the row-steps computed over a whole epoch, each batch cut to its longest row."""
    lengths = row_lengths(s)
    run = [lengths[b] for b in batches(s, bucket, s["rows"] // s["batch"])]
    computed = sum(len(b) * int(b.max()) for b in run)
    return 1.0 - sum(int(b.sum()) for b in run) / computed


# ------------------------------------------------------------------ one run (an MPI rank)


def run_worker(spec: dict) -> dict | None:
    import torch
    from mpi4py import MPI

    from mpirnn.data.labelled_targets import LabelledTargets
    from mpirnn.distributed.device import flush_denormals, keep_freed_memory
    from mpirnn.distributed.mesh import Comms
    from mpirnn.grid import Grid
    from mpirnn.parallel.plan import make_plan
    from mpirnn.parallel.shard import stage_model
    from mpirnn.parallel.step import StepRunner

    torch.set_num_threads(1)
    flush_denormals()   # as training does (a classifier's backward would crawl through subnormals)
    keep_freed_memory()   # as training does on CPUs (mpirnn/distributed/device.py `bind`)
    world = MPI.COMM_WORLD
    s = shape(spec["tiny"])
    comms = Comms.create(Grid(world.size, dp=spec["dp"], sp=spec["sp"]), world)
    model = side_by_side.worker_model(s)
    lengths_all = row_lengths(s)
    if spec["fixed"]:   # every row the mean length of the bucketed batches: a fixed-length run
        lengths_all = np.full_like(lengths_all, int(np.mean([lengths_all[b].mean() for b in
                                                             batches(s, True, spec["steps"] + 1)])))
    longest = int(lengths_all.max())
    plan = make_plan(comms.grid, comms.coords, batch_size=s["batch"], seq_len=longest, layers=s["layers"],
                     cell=s["cell"], microbatches=spec["microbatches"], hidden=s["hidden"])
    model = stage_model(model, plan, None)
    runner = StepRunner(model, plan, comms, bucket_mb=4.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(SEED)
    inputs_all = torch.randn(s["rows"], longest, s["features"], generator=g)
    labels_all = torch.randint(0, s["classes"], (s["rows"],), generator=g)
    times, elements, losses, longest_rows = [], [], [], []
    for index, rows in enumerate(batches(s, True, spec["steps"] + 1)):
        rows = torch.as_tensor(rows)
        lengths = torch.as_tensor(lengths_all)[rows]
        step_plan = plan.for_length(int(lengths.max()))
        mine, segment = rows[slice(*step_plan.rows)], slice(*step_plan.segment)
        local_lengths = lengths[slice(*step_plan.rows)]
        targets = LabelledTargets("classify", labels_all[mine], local_lengths, step_plan.segment[0])
        state = model.zero_state(step_plan.local_rows, inputs_all, range(*plan.layers))
        optimizer.zero_grad(set_to_none=True)
        world.Barrier()
        started = time.perf_counter()
        loss, _ = runner(inputs_all[mine, segment], targets, state, float(len(rows)), local_lengths, plan=step_plan)
        optimizer.step()
        elapsed, total = side_by_side.step_end(world, started, loss)
        losses.append(total)
        if index:   # the first step warms up
            times.append(elapsed)
            elements.append(int(lengths.sum()))
            longest_rows.append(int(lengths.max()))
    runner.reducer.remove()
    comms.free()
    if world.rank:
        return None
    per_thousand = [1000 * t / e for t, e in zip(times, elements)]
    return {**spec, "step_times_s": times, "valid_elements": elements, "losses": losses, "longest": longest_rows,
            "median_s_per_1000_elements": statistics.median(per_thousand)}


# ------------------------------------------------------------------ the driver


RUNS = [dict(name="1 rank", ranks=1, dp=1, sp=1, microbatches=0, fixed=False),
        dict(name="dp=2 (-n 2)", ranks=2, dp=2, sp=1, microbatches=0, fixed=False),
        dict(name="sp=2, M=4 (-n 2)", ranks=2, dp=1, sp=2, microbatches=4, fixed=False),
        dict(name="1 rank, every row one length (the batches' mean)", ranks=1, dp=1, sp=1, microbatches=0, fixed=True)]


def launch(spec: dict, workdir: Path) -> dict:
    path = workdir / f"{spec['name'][:8].replace(' ', '_').replace('=', '')}-{spec['ranks']}.json"
    return side_by_side.launch("mpirnn.tools.bench_lengths", spec, path)


def predicted_per_1000(run: dict, s: dict, cal) -> float | None:
    """The performance model's seconds per 1000 valid elements for a run: each timed step predicted
    as a step of its batch's longest row (what the step runs: Plan.for_length), divided by the
    step's valid elements; the median over the steps, as measured. The head is the series head
    at every step, an over-count for classify (its head reads one step per row) that is small
    beside the recurrence."""
    if cal is None:
        return None
    from mpirnn.perf.step_model import Layout, Shape, predict
    from mpirnn.tools.bench_predictions import units
    values = []
    for longest, elements in zip(run["longest"], run["valid_elements"]):
        model = Shape(s["cell"], s["layers"], s["hidden"], s["embed"], s["batch"], longest, vocab=None,
                      features=s["features"])
        m, c = units({**run, "pp": 1}, model)
        # The ranks keep freed memory, as training does (run_worker): no long-sequence term.
        layout = Layout(dp=run["dp"], sp=run["sp"], microbatches=m, chunks=c)
        values.append(1000 * predict(model, layout, cal).step_s / elements)
    return statistics.median(values)


def table(results: list[dict], s: dict) -> str:
    base = results[0]["median_s_per_1000_elements"]
    fixed = results[-1]["median_s_per_1000_elements"]
    lines = ["| W7 run | median s per 1000 valid elements | predicted (error) | speedup over 1 rank | vs one length "
             "| loss = 1 rank's |",
             "|---|---|---|---|---|---|"]
    for r in results:
        m = r["median_s_per_1000_elements"]
        same = "—" if r["fixed"] or r is results[0] else ("yes" if exact(r, results[0]) else "NO")
        p = r.get("predicted_s_per_1000_elements")
        predicted = "—" if p is None else f"{p:.4f} ({100 * (p / m - 1):+.0f}%)"
        lines.append(f"| {r['name']} | {m:.4f} | {predicted} | {base / m:.2f}× | {m / fixed:.2f} | {same} |")
    lines.append("")
    lines.append(f"padding computed per epoch: {100 * padding_share(s, True):.1f}% with data.bucket, "
                 f"{100 * padding_share(s, False):.1f}% without")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = side_by_side.parser_for("mpirnn.tools.bench_lengths", __doc__, steps=4, out="runs/bench/w7.json")
    args = parser.parse_args(argv)
    driven = side_by_side.drive(args, "mpirnn.tools.bench_lengths", run_worker, shape, RUNS, launch,
                                ("step_times_s", "valid_elements", "longest"))
    if driven is None:
        return 0
    s, cal, pooled = driven
    results = []
    for r in pooled:
        r["median_s_per_1000_elements"] = statistics.median(1000 * t / e for t, e in zip(r["step_times_s"],
                                                                                       r["valid_elements"]))
        r["predicted_s_per_1000_elements"] = predicted_per_1000(r, s, cal)
        results.append(r)
    text = table(results, s)
    print(text)
    side_by_side.write_results(args.out, {"shape": s, "cpu": cpu_model(), "runs": results, "table": text,
                                          "calibration": cal.path if cal else None,
                                          "padding_bucketed": padding_share(s, True),
                                          "padding_unbucketed": padding_share(s, False)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
