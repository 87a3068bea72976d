"""The benchmark's PyTorch peer: the same data-parallel step with torch DistributedDataParallel (gloo).

    torchrun --standalone --nproc-per-node=2 -m mpirnn.tools.ddp_peer --worker SPECS --result OUT
    (python -m mpirnn.bench starts it for W1 and dp; tests/test_bench_smoke.py runs it at toy sizes)

Everything but the parallel machinery is the MPI workers' (mpirnn/tools/workloads.py): the
model built by mpirnn.models.build_model from the same Config and seed, the same synthetic
global batch with each rank keeping its rows, one torch thread per rank, Adam, the same
warm-up and timed steps, a step timed from a barrier to the end of optimizer.step() on the
slowest rank. DDP keeps its defaults (25 MiB buckets, gradients averaged), so each rank's
loss is scaled by the world size: the average of the ranks' gradients is then their sum,
as in mpirnn, and the loss trajectory can be checked against the 1-rank run's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mpirnn.grid import Grid, rows_of
from mpirnn.tools.shapes import shape_of
from mpirnn.tools.workloads import PeakMemory, SavedBytes, busy_cpu_s, make_batch, make_model


def build(spec: dict, rank: int, world: int):
    shape = shape_of(spec["workload"], spec["tiny"])
    inputs, targets = make_batch(shape)
    norm = float(targets.numel())
    rows = slice(*rows_of(shape["batch"], Grid(world, dp=world), rank))
    inputs, targets = inputs[rows].contiguous(), targets[rows].contiguous()
    model = make_model(shape, torch.device("cpu"))
    ddp = DistributedDataParallel(model)

    def step(prime=False):
        x, y = (inputs[:, :2].contiguous(), targets[:, :2].contiguous()) if prime else (inputs, targets)
        loss = ddp(x, y)[0] / norm
        (loss * world).backward()   # DDP averages over ranks: this makes it the sum of the ranks' gradients
        return loss.detach().double()
    return model, step


def run_spec(spec: dict) -> dict | None:
    """Warm-up and timed steps of one spec; the summary on rank 0 (None elsewhere), as workloads.run_spec."""
    torch.set_num_threads(spec["threads"])
    rank, world = dist.get_rank(), dist.get_world_size()
    model, step = build(spec, rank, world)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step(prime=True)
    times, losses, own_cpu, busy = [], [], [], []
    for index in range(spec["warmup"] + spec["steps"]):
        optimizer.zero_grad(set_to_none=True)
        dist.barrier()
        cpu, machine = time.process_time(), busy_cpu_s()
        started = time.perf_counter()
        if index == 0:
            with PeakMemory(torch.device("cpu")) as peak, SavedBytes(model) as saved:
                loss = step()
        else:
            loss = step()
        optimizer.step()
        elapsed = time.perf_counter() - started
        if index >= spec["warmup"]:
            times.append(elapsed)
            dist.barrier()
            own_cpu.append(time.process_time() - cpu)
            busy.append(busy_cpu_s() - machine)
        losses.append(float(loss))
    mine = torch.tensor([*losses, *times, *own_cpu, *busy, 0.0, peak.bytes, saved.bytes], dtype=torch.float64)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    if rank:
        return None
    every = torch.stack(every)
    n, k = len(losses), len(times)
    step_times = every[:, n:n + k].max(dim=0).values
    foreign = every[0, n + 2 * k:n + 3 * k] - every[:, n + k:n + 2 * k].sum(dim=0)
    spare = max(0, (os.cpu_count() or 1) - world * spec["threads"]) * step_times
    return {**spec, "losses": every[:, :n].sum(dim=0).tolist(), "step_times_s": step_times.tolist(),
            "contended_cpu_s": (foreign - spare).clamp(min=0).tolist(),
            "mpi_wait_s_per_rank": every[:, -3].tolist(),   # not measured for DDP: zeros
            "peak_bytes_per_rank": every[:, -2].tolist(), "saved_bytes_per_rank": every[:, -1].tolist(),
            "memory_method": peak.method, "device_name": "cpu"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpirnn.tools.ddp_peer")
    parser.add_argument("--worker", required=True, help="JSON list of run specs (made by mpirnn.bench)")
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    dist.init_process_group("gloo")
    try:
        done = []
        for spec in json.loads(Path(args.worker).read_text()):
            summary = run_spec(spec)
            if dist.get_rank() == 0:
                done.append(summary)
                Path(args.result).write_text(json.dumps(done))
        # Both ranks leave together: a rank tearing gloo down while its peer still finishes the last
        # collective makes the peer fail ("connection closed"), and torchrun then reports the launch failed.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
