"""Where a pipeline step's time goes: one bench workload traced on every rank, summed by kind.

    mpirun -n 2 python -m mpirnn.tools.pipeline_trace [--workload W5] [--pp 2] [--chunks 8] [--steps 3]
                                                      [--precision float32] [--trace DIR]

Builds the step exactly as `python -m mpirnn.bench` does (mpirnn/tools/workloads.py), turns the
run's tracer on (mpirnn/distributed/trace.py) and, over the timed steps (medians), prints for
each rank: the step's wall time; its compute by kind (embedding, each unit's forward, the loss
and head, backward, the optimizer step); its MPI waits by what they wait for; and what is left,
time inside the step that no span covers (Python, autograd's engine, allocation between spans).
Then the pipeline's bound from the ranks' compute (as the bench's `pipeline_bound`), and what the
measured step loses against it. With --trace DIR the last step's spans are written per rank
(open them in https://ui.perfetto.dev). docs/performance.md shows a breakdown measured with it.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

KINDS = (("embed", "embedding"), ("forward", "forward"), ("loss backward", "loss backward"),
         ("loss", "loss and head"), ("backward", "backward"), ("optimizer", "optimizer"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mpirnn.tools.pipeline_trace", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="W5")
    parser.add_argument("--pp", type=int, default=0, help="pipeline stages (default: the world size)")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--microbatches", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--tiny", action="store_true", help="toy shapes (the tests)")
    parser.add_argument("--trace", help="write the last step's spans here, one Chrome trace JSON per rank")
    return parser.parse_args(argv)


def kind_of(name: str) -> str:
    """A compute span's kind from its name ("forward 0.3", "loss backward 0.7", ...)."""
    for prefix, kind in KINDS:
        if name.startswith(prefix):
            return kind
    return re.sub(r"[ .\d]+$", "", name) or "other"


def breakdown(events: list[dict], start_us: float, end_us: float) -> dict:
    """{"compute": {kind: s}, "wait": {label: s}} for the spans that lie inside [start, end]."""
    compute, wait = {}, {}
    for event in events:
        if event.get("ph") != "X" or event["ts"] < start_us or event["ts"] + event["dur"] > end_us:
            continue
        seconds = event["dur"] / 1e6
        if event["cat"] == "mpi":
            label = re.sub(r" \d+(\.\d+)?\b.*", "", event["name"])   # "receive inputs 0.3 from stage 0" -> "receive inputs"
            wait[label] = wait.get(label, 0.0) + seconds
        else:
            kind = kind_of(event["name"])
            compute[kind] = compute.get(kind, 0.0) + seconds
    return {"compute": compute, "wait": wait}


def nested_free(events: list[dict]) -> list[dict]:
    """Compute spans with the ones inside another compute span dropped (the loss backward run inside
    a backward span is counted once)."""
    spans = sorted((e for e in events if e.get("ph") == "X" and e["cat"] != "mpi"), key=lambda e: (e["ts"], -e["dur"]))
    kept, reach = [], -1.0
    for span in spans:
        if span["ts"] + span["dur"] <= reach:
            continue
        kept.append(span)
        reach = max(reach, span["ts"] + span["dur"])
    return kept + [e for e in events if e.get("cat") == "mpi"]


def median_parts(parts: list[dict]) -> dict:
    names = sorted({k for p in parts for k in p})
    return {k: statistics.median(p.get(k, 0.0) for p in parts) for k in names}


def run(args) -> int:
    import torch
    from mpi4py import MPI

    from mpirnn.distributed.device import choose_device
    from mpirnn.distributed.mesh import Comms
    from mpirnn.distributed.trace import Tracer
    from mpirnn.grid import Grid
    from mpirnn.tools.workloads import build_step

    world = MPI.COMM_WORLD
    torch.set_num_threads(1)
    pp = args.pp or world.size
    comms = Comms.create(Grid(world.size, dp=world.size // pp, pp=pp), world)
    comms.timer.tracer = Tracer(comms.rank, enabled=True)
    tracer = comms.timer.tracer
    spec = dict(workload=args.workload, tiny=args.tiny, microbatches=args.microbatches, chunks=args.chunks,
                precision=args.precision, plain=False)
    model, step, runner = build_step(spec, comms, choose_device("cpu", comms.local_rank))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step(prime=True)
    walls, computes, waits, lefts = [], [], [], []
    for index in range(args.warmup + args.steps):
        optimizer.zero_grad(set_to_none=True)
        world.Barrier()
        tracer.events.clear()
        started = time.perf_counter()
        step()
        with tracer.span("optimizer"):
            optimizer.step()
        wall = time.perf_counter() - started
        world.Barrier()
        if index < args.warmup:
            continue
        parts = breakdown(nested_free(tracer.events), 0.0, float("inf"))
        walls.append(wall)
        computes.append(parts["compute"])
        waits.append(parts["wait"])
        lefts.append(wall - sum(parts["compute"].values()) - sum(parts["wait"].values()))
    runner.reducer.remove()
    if args.trace:
        tracer.write(args.trace)
    mine = {"rank": comms.rank, "stage": comms.coords["pp"], "wall": statistics.median(walls),
            "compute": median_parts(computes), "wait": median_parts(waits), "left": statistics.median(lefts)}
    every = world.gather(mine, root=0)
    comms.free()
    if world.rank == 0:
        print(report(every, args))
    return 0


def report(ranks: list[dict], args) -> str:
    step = max(r["wall"] for r in ranks)
    lines = [f"{args.workload} pp={args.pp or len(ranks)}, C={args.chunks}, {args.precision}: median step "
             f"{step:.3f} s over {args.steps} steps (slowest rank)"]
    stages = []
    for r in ranks:
        compute = sum(r["compute"].values())
        stages.append(compute + r["left"])  # what this rank spends busy: spans plus the gaps between them
        parts = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["compute"].items(), key=lambda kv: -kv[1]))
        waited = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["wait"].items(), key=lambda kv: -kv[1])) or "none"
        lines.append(f"  rank {r['rank']} (stage {r['stage']}): wall {r['wall']:.3f} s = compute {compute:.3f} "
                     f"({parts}) + MPI waits {sum(r['wait'].values()):.3f} ({waited}) + outside any span "
                     f"{r['left']:.3f}")
    if len(ranks) > 1:
        C, total, slowest = args.chunks, sum(stages), max(stages)
        ideal = slowest * (C - 1) / C + total / C
        lines.append(f"  stages busy {' / '.join(f'{s:.3f}' for s in stages)} s: the bound's step "
                     f"max·(C-1)/C + sum/C = {ideal:.3f} s, {total / ideal:.2f}× over their sum; measured "
                     f"{step:.3f} s, {100 * (step / ideal - 1):.0f}% above the bound")
    return "\n".join(lines)


def main(argv=None) -> int:
    from mpirnn.distributed.launch import run_guarded
    args = parse_args(argv)
    return run_guarded(lambda _argv: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
