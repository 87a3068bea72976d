"""Where W3's sp=2 time goes: one rank's half of the sequence against the whole, alone.

    .venv/bin/python benchmarks/w3_breakdown.py     # one process, 1 thread, about 1 minute

W3 is minGRU 1 × 128, embedding 64, a series, batch 4, T = 16384. At sp=2 each rank runs
T/2 = 8192 steps plus what the cross-rank scan adds (mpirnn/parallel/linear_scan.py): the
segment's summary, and the correction of the prefix of its outputs that the incoming state
still reaches. This times, forward+backward of the whole model (no MPI, no optimizer):

- the serial step over T and over T/2: how close half the work comes to half the time;
- a segment's step over T/2 with the incoming state entered as under sp, two ways: the
  training code's one autograd Function (`SegmentScan`, with a one-rank communicator so the
  exchange is a copy) and the same steps as separate autograd ops (as before 2026-11-27);
- the in-segment chunked scan alone at several chunk lengths, over T and T/2.
"""

import torch
from mpi4py import MPI

from interleaved import interleaved_medians   # benchmarks/interleaved.py, beside this script
from mpirnn.distributed.device import keep_freed_memory
from mpirnn.models.model import RecurrentModel
from mpirnn.models.scan import default_chunk, enter_state, log_scan
from mpirnn.parallel.linear_scan import SegmentScan

B, T, H, E = 4, 16384, 128, 64


def serial_step(model, steps):
    x, y = torch.randn(B, steps, 1), torch.randn(B, steps, 1)

    def step():
        model.zero_grad()
        features = model.embed(x)
        out, _ = model.run_layers(features, model.zero_state(B, features))
        model.loss_sum(out, y).backward()
    return step


def segment_step_fused(model, steps):
    """As sp rank 1 in training: SegmentScan entered with a (fixed, random) incoming state.

    On a one-rank communicator the incoming state is the initial state passed in, so the
    prefix correction runs exactly as on a later segment.
    """
    x, y = torch.randn(B, steps, 1), torch.randn(B, steps, 1)
    incoming = torch.randn(B, H) - 1.0

    def step():
        model.zero_grad()
        log_a, log_b = model.log_gates(0, model.embed(x))
        log_h = SegmentScan.apply(log_a, log_b, incoming, MPI.COMM_SELF, None, default_chunk(steps))
        model.loss_sum(torch.exp(log_h), y).backward()
    return step


def segment_step(model, steps):
    """The same as separate autograd ops: scan from h = 0, summarise, enter the incoming state."""
    x, y = torch.randn(B, steps, 1), torch.randn(B, steps, 1)
    incoming = torch.randn(B, H) - 1.0

    def step():
        model.zero_grad()
        log_a, log_b = model.log_gates(0, model.embed(x))
        log_h_zero = log_scan(log_a, log_b, None)
        summary = log_a.sum(dim=1) + log_h_zero[:, -1]
        h = torch.exp(enter_state(log_a, log_h_zero, incoming + 0 * summary))
        model.loss_sum(h, y).backward()
    return step


def scan_only(steps, chunk):
    log_a, log_b = (-torch.rand(B, steps, H)).requires_grad_(), torch.randn(B, steps, H).requires_grad_()
    grad = torch.randn(B, steps, H)
    return lambda: log_scan(log_a, log_b, None, chunk=chunk).backward(grad)


def main() -> None:
    keep_freed_memory()   # as the trainer does: no page faults for memory freed last step
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = RecurrentModel("mingru", H, 1, E, features=1)
    parts = {"serial step, T": serial_step(model, T), "serial step, T/2": serial_step(model, T // 2),
             "sp segment step, T/2 (SegmentScan)": segment_step_fused(model, T // 2),
             "sp segment step, T/2 (separate ops)": segment_step(model, T // 2)}
    for steps in (T, T // 2):
        for chunk in (64, 91, 128):
            parts[f"scan alone, T={steps}, chunk {chunk}"] = scan_only(steps, chunk)
    times = interleaved_medians(parts, repeats=7)
    whole = times["serial step, T"]
    for name, seconds in times.items():
        print(f"{name:40s} {1e3 * seconds:8.1f} ms   whole serial step / this = {whole / seconds:5.2f}")


if __name__ == "__main__":
    main()
