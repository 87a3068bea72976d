"""GPU check of tensor parallelism's per-step exchanges: a W4 tp=2 step through each route the
transport offers (mpirnn/distributed/transport.py, GroupExchange), timed and checked against 1 rank.

    mpirun -n 2 python benchmarks/tp_gpu_check.py              # on a GPU machine (both ranks may share one GPU)
    mpirun -n 2 python benchmarks/tp_gpu_check.py --tiny       # a dry run of the script itself on a CPU

On CUDA the routes are "staged" (pinned host buffers, what runs without CUDA-aware MPI) and,
when `MPI.Query_cuda_support()` says so, "device" (MPI reads and writes GPU memory). On a CPU
they are "host" (the tensors' own memory) and "staged" (the GPU path's copies run on CPU
tensors). For each route: the loss and the gradients of the replicated embedding and head
(they depend on every exchange, forward and backward) against a 1-rank run of the same step
(rtol 1e-5, the exactness contract of docs/design.md); the routes against each other bit for
bit; and the median step time of each, interleaved step by step (plain SGD at lr 0: every step
is the same step). Exits 1 when a check fails.
"""

import argparse
import statistics
import sys
import time

import torch
from mpi4py import MPI

from mpirnn.distributed.device import choose_device
from mpirnn.distributed.mesh import Comms
from mpirnn.distributed.transport import cuda_aware
from mpirnn.grid import Grid
from mpirnn.parallel.tensor import TensorGroup
from mpirnn.tools.workloads import build_step


def replicated_grads(model) -> list[torch.Tensor]:
    """Gradients of the embedding and head: the same on every tp rank and on one rank."""
    return [p.grad.detach().double().cpu().clone() for m in (model.input, model.head) for p in m.parameters()]


def one_step(model, step, world) -> tuple[float, list[torch.Tensor], float]:
    for p in model.parameters():
        p.grad = None
    world.Barrier()
    started = time.perf_counter()
    loss = float(step())
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = world.allreduce(time.perf_counter() - started, op=MPI.MAX)
    return world.allreduce(loss), replicated_grads(model), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="W4's toy sizes (a dry run)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per route")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    world = MPI.COMM_WORLD
    torch.set_num_threads(1)
    spec = dict(workload="W4", tiny=args.tiny, microbatches=0, dp=1, sp=1, pp=1, tp=world.size, threads=1,
                device=args.device)
    comms = Comms.create(Grid(world.size, dp=1, sp=1, pp=1, tp=world.size), world)
    device = choose_device(args.device, comms.local_rank)
    model, step, _ = build_step(spec, comms, device)
    groups = {id(m.group): m.group for m in model.modules() if isinstance(getattr(m, "group", None), TensorGroup)}
    exchanges = [g.exchange for g in groups.values()]

    # The serial reference: the same step on one rank, on every rank (each checks its own copy).
    self_comms = Comms.create(Grid(1, dp=1, sp=1, pp=1, tp=1), MPI.COMM_SELF)
    serial_model, serial_step, _ = build_step({**spec, "tp": 1}, self_comms, device)
    serial_loss, serial_grads, _ = one_step(serial_model, serial_step, MPI.COMM_SELF)

    if device.type == "cuda":
        routes = {"staged": dict(device_direct=False, stage_host=False)}
        if cuda_aware():
            routes["device"] = dict(device_direct=True, stage_host=False)
    else:
        routes = {"host": dict(device_direct=False, stage_host=False), "staged": dict(device_direct=False, stage_host=True)}

    def use(name):
        for exchange in exchanges:
            exchange.device_direct, exchange.stage_host = routes[name]["device_direct"], routes[name]["stage_host"]

    results, times, ok = {}, {name: [] for name in routes}, True
    step(prime=True)
    for name in routes:
        use(name)
        results[name] = one_step(model, step, world)
    for index in range(args.steps):
        for name in (list(routes) if index % 2 else list(reversed(routes))):
            use(name)
            times[name].append(one_step(model, step, world)[2])

    lines = [f"W4{' (tiny)' if args.tiny else ''} tp={world.size} on {device}, MPI CUDA-aware: {cuda_aware()}, "
             f"{MPI.Get_library_version().splitlines()[0]}"]
    for name, (loss, grads, _) in results.items():
        close = abs(loss - serial_loss) <= 1e-5 * abs(serial_loss) and all(
            torch.allclose(g, s, rtol=1e-5, atol=1e-7) for g, s in zip(grads, serial_grads))
        worst = max(float((g - s).abs().max()) for g, s in zip(grads, serial_grads))
        ok &= close
        lines.append(f"  {name:7s} step median {statistics.median(times[name]):.4f} s over {args.steps}; loss "
                     f"{loss:.8f} vs 1 rank {serial_loss:.8f}; largest gradient difference {worst:.2e}: "
                     f"{'exact' if close else 'NOT EXACT'}")
    names = list(results)
    for other in names[1:]:
        same = results[other][0] == results[names[0]][0] and all(
            torch.equal(a, b) for a, b in zip(results[other][1], results[names[0]][1]))
        ok &= same
        lines.append(f"  {other} against {names[0]}: {'bit-identical' if same else 'DIFFERENT BITS'}")
    if world.rank == 0:
        print("\n".join(lines), flush=True)
    return 0 if world.allreduce(int(not ok)) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
