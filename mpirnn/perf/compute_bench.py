"""Compute measurements of one rank for a calibration: fused layers, linear cells, head, input, Adam.

    python -m mpirnn.plan --calibrate          # runs measure() in a fresh process, one thread

Every figure is the fastest of a few repetitions after a warm-up, timed on the CPU as
this thread's CPU time (torch runs one-thread work in the calling thread), so other
processes on a shared machine do not inflate it; on a GPU, as wall time after a
synchronisation. Another process on the other core still slows a run down (shared caches,
memory, perhaps a shared physical core), so the whole set is measured twice, some
seconds apart, and each figure is the fastest of both passes. A fused layer is timed over a short and a long sequence at each (rows,
hidden): the difference gives the cost per time step, the rest the cost per call (oneDNN reorders the weights and allocates its workspace on every
call, which on a CPU costs as much as tens of time steps and makes many small
microbatches expensive).
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
from torch import nn
from torch.nn import functional as F

from mpirnn.perf.calibration import CALIBRATED_HIDDEN, GATES, PROJECTIONS

FUSED = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
SIZES = {  # (full, quick): the quick set only exercises the machinery
    "rows": ([1, 2, 4, 8, 16, 32, 64], [1, 4]),
    "hidden": (list(CALIBRATED_HIDDEN), [16, 32]),
    "steps": ((8, 256), (2, 10)),   # the short run's steps, and at most this many in the long one
    "reps": (3, 2),
    "passes": (2, 1),
}


class Timer:
    """Times named measurements; a name measured again keeps its fastest time over every pass."""

    def __init__(self, device: torch.device, reps: int, forward=None):
        self.device, self.reps = device, reps
        # Around every measured forward, never a backward: train.precision's autocast (a training step
        # runs its forward under it and its backward outside, custom autograd Functions included).
        self.forward = forward or contextlib.nullcontext
        self.fastest: dict[tuple, float] = {}
        self.choices: dict[tuple, int] = {}   # sizes picked in the first pass, kept for the next

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def clock(self) -> float:
        return time.perf_counter() if self.device.type == "cuda" else time.thread_time()

    def best(self, key: tuple, fn, reps: int | None = None) -> float:
        """Fastest of `reps` runs (default: the timer's) after one warm-up, and of any earlier pass
        over `key`, in seconds."""
        fn()
        self.sync()
        best = self.fastest.get(key, math.inf)
        for _ in range(reps or self.reps):
            started = self.clock()
            fn()
            self.sync()
            best = min(best, self.clock() - started)
        self.fastest[key] = best
        return best


def _layer_pass(timer, layer, x, grad):
    def run():
        with timer.forward():
            out = layer(x)[0]
        out.to(grad.dtype).backward(grad)   # cast back to the master dtype, as a layer's outputs are
    return run


def fused_layer(timer: Timer, cell: str, rows: int, steps: int, d_in: int, hidden: int,
                bidirectional: bool = False, reps: int | None = None) -> float:
    layer = FUSED[cell](d_in, hidden, batch_first=True, bidirectional=bidirectional).to(timer.device)
    x = torch.randn(rows, steps, d_in, device=timer.device, requires_grad=True)
    grad = torch.randn(rows, steps, hidden * (2 if bidirectional else 1), device=timer.device)
    return timer.best(("fused", cell, rows, steps, d_in, hidden, bidirectional), _layer_pass(timer, layer, x, grad),
                      reps)


def fused_table(timer: Timer, cell: str, rows_list, hidden_list, steps: tuple[int, int]) -> dict:
    """Per (hidden, rows) with d_in = hidden: seconds per time step and per call, each fitted over
    the rows as a + b·rows (the measured points are kept beside the fit)."""
    short, most = steps
    step_s, call_s, measured_step, measured_call = [], [], [], []
    for hidden in hidden_list:
        step_line, call_line = [], []
        for rows in rows_list:
            t_short = fused_layer(timer, cell, rows, short, hidden, hidden)
            # About 40 ms for the long run (at least 8 more steps): thin batches cost a little less per step
            # over long sequences than over short ones, and long sequences are what sp is for.
            long = timer.choices.setdefault(("long", cell, rows, hidden),
                                            min(most, short + max(8, round(0.04 / (t_short / short)))))
            t_long = fused_layer(timer, cell, rows, long, hidden, hidden)
            per_step = (t_long - t_short) / (long - short)
            if per_step <= 0:   # noise swamped the difference: charge everything to the steps
                per_step, call = t_long / long, 0.0
            else:
                call = max(0.0, t_short - short * per_step)
            step_line.append(per_step)
            call_line.append(call)
        measured_step.append(step_line)
        measured_call.append(call_line)
        step_s.append(affine(rows_list, step_line))
        call_s.append(affine(rows_list, call_line))
    return {"hidden": list(hidden_list), "rows": list(rows_list), "step_s": step_s, "call_s": call_s,
            "step_s_measured": measured_step, "call_s_measured": measured_call}


# The long-sequence probe: an LSTM layer of 128 units over 16 rows, at sequences of 2^18 to 2^24
# elements (rows × steps × hidden), in a process with glibc's default allocator (the calibration's
# other measurements keep freed memory: mpirnn/perf/processes.py). A call's large activations go
# over glibc's mmap threshold (at most 32 MiB) and are faulted in, zero-filled, on every call, so a
# time step of a long call costs more (docs/performance.md, "The long-sequence term").
LONG_SEQUENCE = {"rows": (16, 4), "hidden": (128, 16), "steps": ((128, 512, 2048, 8192), (8, 32, 128))}


def long_sequence(device: str = "cpu", quick: bool = False, cell: str = "lstm") -> dict:
    """What a time step of a long call costs beyond a short one's under the allocator this process
    runs with: per row-step and per hidden unit, [elements, extra seconds] from the shortest
    sequence (0 there) up, never falling (noise would bend it back); with the minor page faults per
    element beside. Two passes of one run each after a warm-up (the longest takes about a second)."""
    import resource
    pick = 1 if quick else 0
    timer = Timer(torch.device(device), 1)
    rows, hidden, all_steps = (LONG_SEQUENCE[key][pick] for key in ("rows", "hidden", "steps"))
    faults = []
    for _ in range(SIZES["passes"][pick]):
        faults = []
        for steps in all_steps:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            fused_layer(timer, cell, rows, steps, hidden, hidden)
            faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 2 / (rows * steps * hidden))
    per_row_step = [timer.fastest[("fused", cell, rows, steps, hidden, hidden, False)] / (rows * steps)
                    for steps in all_steps]
    points, extra = [], 0.0
    for steps, cost in zip(all_steps, per_row_step):
        extra = max(extra, (cost - per_row_step[0]) / hidden)
        points.append([rows * steps * hidden, extra])
    return {"cell": cell, "rows": rows, "hidden": hidden, "points": points, "faults_per_element": faults,
            "allocator": "glibc default"}


def bidirectional_factor(timer: Timer, cell: str, quick: bool) -> float:
    """A bidirectional fused layer's forward+backward over one direction's (16 rows, 128 units, 128
    steps; the input 256 wide, as a layer above a bidirectional one reads): about 2."""
    rows, hidden, steps = (4, 16, 16) if quick else (16, 128, 128)
    both = fused_layer(timer, cell, rows, steps, 2 * hidden, hidden, bidirectional=True)
    one = fused_layer(timer, cell, rows, steps, 2 * hidden, hidden)
    return both / one


def affine(rows: list[int], values: list[float]) -> list[float]:
    """a + b·rows fitted to the values with the least relative squares: a fixed cost (per time step:
    latency, the thin-batch penalty a/rows per row) plus a cost per row. One point disturbed by another
    process (±10 % on a shared machine) then moves the fit a little instead of the curve a lot."""
    if len(rows) < 2:
        return list(values)
    floor = max(max(values) * 1e-3, 1e-9)   # weights 1/v²: keep them finite
    sw = swr = swrr = swv = swrv = 0.0
    for r, v in zip(rows, values):
        w = 1.0 / max(v, floor) ** 2
        sw, swr, swrr, swv, swrv = sw + w, swr + w * r, swrr + w * r * r, swv + w * v, swrv + w * r * v
    b = max(0.0, (sw * swrv - swr * swv) / (sw * swrr - swr**2))
    a = max(0.0, (swv - swr * b) / sw)
    return [a + b * r for r in rows]


def input_mac(timer: Timer, rows: int, hidden: int, steps: int) -> float:
    """Seconds per multiply-add of a fused layer's input projection (forward+backward), from d_in = h vs h/4."""
    full = fused_layer(timer, "lstm", rows, steps, hidden, hidden)
    quarter = fused_layer(timer, "lstm", rows, steps, hidden // 4, hidden)
    macs = steps * rows * GATES["lstm"] * hidden * (hidden - hidden // 4)
    return max(0.0, (full - quarter) / macs)


def linear_layer(timer: Timer, cell: str, rows: int, steps: int, hidden: int) -> dict:
    """minGRU/minLSTM per element (rows·steps·hidden) and per gate multiply-add, from two input widths;
    and per element on a segment of the cross-rank scan (scan from zero, then correct the prefix the
    incoming state reaches). Long sequences: the per-call cost is negligible there and not fitted."""
    from mpirnn.models.linear_cells import MinGRU, MinLSTM
    from mpirnn.models.scan import enter_state, log_scan
    make = {"mingru": MinGRU, "minlstm": MinLSTM}[cell]

    def segment_pass(layer, x, grad):
        incoming = torch.randn(x.shape[0], hidden, device=timer.device)

        def run():
            with timer.forward():
                log_a, log_b = layer.gates(x)
                log_h_zero = log_scan(log_a, log_b, None)
                # + sum(log a) · 0: the segment summary's reduction is part of the real graph
                out = torch.exp(enter_state(log_a, log_h_zero, incoming + log_a.sum(dim=1) * 0))
            out.to(grad.dtype).backward(grad)
        return run

    def per_element(d_in, segment=False):
        layer = make(d_in, hidden).to(timer.device)
        x = torch.randn(rows, steps, d_in, device=timer.device, requires_grad=True)
        grad = torch.randn(rows, steps, hidden, device=timer.device)
        seconds = timer.best(("linear", cell, rows, steps, d_in, hidden, segment),
                             segment_pass(layer, x, grad) if segment else _layer_pass(timer, layer, x, grad))
        return seconds / (rows * steps * hidden)

    narrow, wide = hidden // 2, hidden * 2
    at_narrow, at_wide = per_element(narrow), per_element(wide)
    mac = max(0.0, (at_wide - at_narrow) / (PROJECTIONS[cell] * (wide - narrow)))
    gates = mac * PROJECTIONS[cell] * narrow
    return {"element_s": max(0.0, at_narrow - gates), "mac_s": mac, "call_s": 0.0,
            "segment_element_s": max(0.0, per_element(narrow, segment=True) - gates)}


def head(timer: Timer, tokens: int, hidden: int, vocab: int | None) -> float:
    """Head and loss forward+backward, seconds per token."""
    out = vocab or 1
    layer = nn.Linear(hidden, out).to(timer.device)
    x = torch.randn(tokens, hidden, device=timer.device, requires_grad=True)
    if vocab:
        target = torch.randint(0, vocab, (tokens,), device=timer.device)
        loss = lambda: F.cross_entropy(layer(x), target, reduction="sum")  # noqa: E731
    else:
        target = torch.randn(tokens, 1, device=timer.device)
        loss = lambda: F.mse_loss(layer(x), target, reduction="sum")  # noqa: E731
    def run():
        with timer.forward():
            value = loss()
        value.backward()
    return timer.best(("head", tokens, hidden, vocab), run) / tokens


def input_layer(timer: Timer, tokens: int, embed: int, vocab: int | None) -> float:
    """Embedding (tokens) or input projection (series) forward+backward, seconds per token·embed element."""
    if vocab:
        layer, x = nn.Embedding(vocab, embed).to(timer.device), torch.randint(0, vocab, (tokens,), device=timer.device)
    else:
        layer, x = nn.Linear(1, embed).to(timer.device), torch.randn(tokens, 1, device=timer.device)
    grad = torch.randn(tokens, embed, device=timer.device)
    def run():
        with timer.forward():
            out = layer(x)
        out.to(grad.dtype).backward(grad)
    return timer.best(("input", tokens, embed, vocab), run) / (tokens * embed)


def adam(timer: Timer, elements: int, tensors: int) -> float:
    params = [nn.Parameter(torch.randn(elements // tensors, device=timer.device)) for _ in range(tensors)]
    for p in params:
        p.grad = torch.randn_like(p)
    return timer.best(("adam", elements, tensors), torch.optim.Adam(params, lr=1e-3).step)


def unit_overhead(timer: Timer) -> float:
    """A whole tiny model's forward, loss and backward on one token, less its one fused layer call
    (the calibration charges that per call already): what every unit pays besides its arithmetic."""
    from mpirnn.models.model import RecurrentModel
    model = RecurrentModel("lstm", 4, 1, 4, vocab_size=8).to(timer.device)
    x = torch.randint(0, 8, (1, 1), device=timer.device)
    def run():
        with timer.forward():
            loss = model(x, x)[0]
        loss.backward()
    whole = timer.best(("tiny model",), run)
    layer = fused_layer(timer, "lstm", 1, 1, 4, 4)
    return max(0.0, whole - layer)


class LoneComm:
    """A tp communicator of `size` ranks played by one process: buffers of the right shapes, no
    transfers. Timing mpirnn's tensor-parallel layer with it gives one rank's compute and copies."""

    def __init__(self, size: int):
        self.size, self.rank = size, 0

    def Allgather(self, send, recv):  # noqa: N802 - mpi4py's names
        recv[0] = send

    def Reduce_scatter_block(self, send, recv, op=None):  # noqa: N802
        recv[...] = send[0]

    def Allreduce(self, send, recv, op=None):  # noqa: N802
        pass


class _Run:
    """A tensor-parallel layer called like a module: layer(x) -> (outputs, final)."""

    def __init__(self, layer, state):
        self.layer, self.state = layer, state

    def __call__(self, x):
        return self.layer.run(x, self.state)


def tp_steps(timer: Timer, shapes, degrees=(2, 4), steps: int = 32) -> list[list[float]]:
    """[rows, hidden, K, one fused step / K, one tp step] for mpirnn's sharded LSTM layer on one rank."""
    from mpirnn.distributed.transport import GroupExchange
    from mpirnn.parallel.tensor import ShardedRecurrentLayer, TensorGroup
    points = []
    for rows, hidden in shapes:
        full = nn.LSTM(hidden, hidden, batch_first=True).to(timer.device)
        x = torch.randn(rows, steps, hidden, device=timer.device, requires_grad=True)
        grad = torch.randn(rows, steps, hidden, device=timer.device)
        fused = fused_layer(timer, "lstm", rows, steps, hidden, hidden) / steps
        for k in degrees:
            # Device-direct even on a GPU: host staging is a link of the calibration (links.staging),
            # so the step model counts it once, on the messages, not here in the compute too.
            comm = LoneComm(k)
            group = TensorGroup(comm, hidden, exchange=GroupExchange(comm, device_direct=True))
            layer = ShardedRecurrentLayer(full, "lstm", group)
            state = torch.zeros(2, rows, hidden // k, device=timer.device)
            tp = timer.best(("tp", rows, hidden, k, steps), _layer_pass(timer, _Run(layer, state), x, grad)) / steps
            points.append([rows, hidden, k, fused / k, tp])
    return points


def tp_fit(points: list[list[float]]) -> dict:
    """A tp step as overhead + factor · (fused step / K), least relative squares over the points."""
    xs, ys = [p[3] for p in points], [p[4] for p in points]
    sw = sx = sxx = sy = sxy = 0.0
    for x, y in zip(xs, ys):
        w = 1.0 / y**2
        sw, sx, sxx, sy, sxy = sw + w, sx + w * x, sxx + w * x * x, sy + w * y, sxy + w * x * y
    factor = max(0.5, (sw * sxy - sx * sy) / (sw * sxx - sx**2))
    return {"overhead_s": max(0.0, (sy - sx * factor) / sw), "matmul_factor": factor, "measured": points}


def cell_loop_step(timer: Timer, steps: int = 32) -> float:
    """Python and autograd overhead per time step of a cell stepped in a loop (what tp would run)."""
    cell = nn.LSTMCell(16, 16).to(timer.device)
    x = torch.randn(steps, 1, 16, device=timer.device, requires_grad=True)

    def run():
        h = c = torch.zeros(1, 16, device=timer.device)
        outs = []
        with timer.forward():
            for t in range(steps):
                h, c = cell(x[t], (h, c))
                outs.append(h)
            total = torch.stack(outs).sum()
        total.backward()
    return timer.best(("cell loop", steps), run) / steps


def measure(device: str = "cpu", quick: bool = False, cells=None, hidden=None, precision: str = "float32") -> dict:
    """The calibration's "compute" section for this process's device and thread count.

    cells / hidden: measure only these fused cells and hidden sizes (a benchmark needs few).
    precision: train.precision's policy around every measurement (mpirnn/models/precision.py):
    under bf16 the matmuls and, where native, the fused layers run under autocast while the
    scans, the optimizer and the copies stay float32, as in a training step.
    """
    from mpirnn.models.precision import for_device
    pick = 1 if quick else 0
    timer = Timer(torch.device(device), SIZES["reps"][pick], forward=for_device(precision, device).autocast)
    started = time.perf_counter()
    for _ in range(SIZES["passes"][pick]):
        compute = collect(timer, quick, cells, sorted(hidden or SIZES["hidden"][pick]))
    compute["threads"] = torch.get_num_threads()
    compute["passes"] = SIZES["passes"][pick]
    compute["seconds_taken"] = time.perf_counter() - started
    return compute


def collect(timer: Timer, quick: bool, cells, hidden_list: list[int]) -> dict:
    """One pass over every measurement; figures are the fastest over this and earlier passes."""
    pick = 1 if quick else 0
    rows_list, steps = SIZES["rows"][pick], SIZES["steps"][pick]
    torch.manual_seed(0)
    h_mid, r_mid = hidden_list[-2] if len(hidden_list) > 1 else hidden_list[0], rows_list[-2]
    fused = [cell for cell in FUSED if cells is None or cell in cells]
    compute = {"fused": {cell: fused_table(timer, cell, rows_list, hidden_list, steps) for cell in fused}}
    compute["input_mac_s"] = input_mac(timer, r_mid, h_mid, 8 if quick else 64)
    if fused:
        compute["bidirectional_factor"] = {cell: bidirectional_factor(timer, cell, quick) for cell in fused}
    lin_rows, lin_steps, lin_hidden = (2, 64, 16) if quick else (4, 4096, 128)
    compute["linear"] = {cell: linear_layer(timer, cell, lin_rows, lin_steps, lin_hidden) for cell in PROJECTIONS
                         if cells is None or cell in cells}
    head_hidden = hidden_list if quick or len(hidden_list) < 4 else list(CALIBRATED_HIDDEN)
    compute["head"] = {
        "tokens": {"vocab": 256, "hidden": head_hidden,
                   "token_s": [head(timer, 128 if quick else 2048, h, 256) for h in head_hidden]},
        "series": {"hidden": head_hidden, "token_s": [head(timer, 256 if quick else 16384, h, None) for h in head_hidden]},
    }
    tokens = 256 if quick else 8192
    compute["input"] = {"tokens_element_s": input_layer(timer, tokens, 64, 256),
                        "series_element_s": input_layer(timer, tokens, 64, None)}
    big = 2**16 if quick else 2**20
    compute["adam_param_s"] = adam(timer, big, 8) / big
    compute["adam_tensor_s"] = max(0.0, (adam(timer, 512, 256) - 512 * compute["adam_param_s"]) / 256)
    a, b = torch.randn(big, device=timer.device), torch.randn(big, device=timer.device)
    compute["accumulate_element_s"] = timer.best(("add", big), lambda: a.add_(b)) / big
    compute["unit_overhead_s"] = unit_overhead(timer)
    compute["cell_loop_step_s"] = cell_loop_step(timer)
    if cells is None or "lstm" in cells:
        try:
            compute["tp_step"] = tp_fit(tp_steps(timer, [(4, 32), (8, 64)] if quick else [(8, 128), (32, 256)]))
        except ImportError:   # no tensor-parallel layer in this version: the model falls back on the cell loop
            pass
    return compute
