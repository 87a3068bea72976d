"""Time the exact log-space scan methods side by side (forward, forward + backward).

Inputs are a minGRU layer's gates on random inputs, so a and b have realistic ranges.
Each row also reports the float32 error of log h against a float64 run of the same
method (max |d log h| = max relative error of h), which is where "logcumsumexp" loses.

    python benchmarks/scan_methods.py                     # T=16384, B=4, H=128, 1 and 2 threads
    python benchmarks/scan_methods.py --T 4096 --threads 2 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mpirnn.models.linear_cells import MinGRU
from mpirnn.models.scan import default_chunk, log_scan


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=16384, help="sequence length")
    parser.add_argument("--B", type=int, default=4, help="batch")
    parser.add_argument("--H", type=int, default=128, help="hidden size")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads")
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 32, 64, 128, 256],
                        help="chunk lengths to try for the chunked method")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def make_gates(args, dtype):
    """(log_a, log_b) leaves from a seeded minGRU on N(0, 1) inputs.

    Drawn in float64 and cast, so that the float32 and float64 runs see the same numbers.
    """
    torch.manual_seed(0)
    cell = MinGRU(args.H, args.H).double()
    x = torch.randn(args.B, args.T, args.H, dtype=torch.float64)
    with torch.no_grad():
        log_a, log_b = cell.gates(x)
    return tuple(t.to(dtype=dtype, device=args.device).requires_grad_() for t in (log_a, log_b))


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(fn, repeats, device):
    """Median wall time and median process CPU time of fn(), in ms, after one warm-up.

    CPU time (all threads of this process) is the steadier number on a shared machine:
    other processes stretch the wall clock but not the work this one does.
    """
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return 1e3 * statistics.median(walls), 1e3 * statistics.median(cpus)


def variants(args):
    """(label, kwargs for log_scan) for every method and chunk length."""
    out = [("logcumsumexp", {"method": "logcumsumexp"})]
    out += [(f"chunked C={c}", {"method": "chunked", "chunk": c}) for c in args.chunks]
    out.append((f"auto (C={default_chunk(args.T)})", {"method": "auto"}))
    return out


def float32_error(kwargs, a32, b32, a64, b64):
    """max |log h (float32) - log h (float64)| for one method."""
    with torch.no_grad():
        low = log_scan(a32, b32, **kwargs).double()
        high = log_scan(a64, b64, **kwargs)
    return (low - high).abs().max().item()


def main(argv=None):
    args = parse_args(argv)
    a32, b32 = make_gates(args, torch.float32)
    a64, b64 = make_gates(args, torch.float64)
    weight = torch.randn_like(a32)
    print(f"log_scan, B={args.B} T={args.T} H={args.H} float32, device={args.device}, "
          f"median of {args.repeats} runs (ms); "
          f"f32 err = max |log h(float32) - log h(float64)|")
    print(f"{'method':<18} {'threads':>7} {'fwd wall':>9} {'f+b wall':>9} {'f+b cpu':>9} {'f32 err':>8}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for label, kwargs in variants(args):
            def forward():
                with torch.no_grad():
                    log_scan(a32, b32, **kwargs)

            def forward_backward():
                loss = (log_scan(a32, b32, **kwargs) * weight).sum()
                torch.autograd.grad(loss, [a32, b32])

            fwd, _ = median_ms(forward, args.repeats, args.device)
            both, both_cpu = median_ms(forward_backward, args.repeats, args.device)
            err = float32_error(kwargs, a32, b32, a64, b64)
            print(f"{label:<18} {threads:>7} {fwd:>9.1f} {both:>9.1f} {both_cpu:>9.1f} {err:>8.1e}",
                  flush=True)


if __name__ == "__main__":
    main()
