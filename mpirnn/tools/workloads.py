"""The benchmark's workloads, run inside the MPI worker processes that `python -m mpirnn.bench` starts.

A run spec (a dict, made by mpirnn.bench) names a workload from SHAPES, a grid (dp, sp),
the microbatch count, optionally a scan method (linear cells) or the plain-PyTorch
baseline, and how many steps to warm up and time. A run builds the model from a Config
as training does, draws a synthetic global batch from a fixed seed (the same on every
rank, each rank keeping its rows and time segment), and times what a training step
does apart from reading data: the StepRunner call (forward, backward, boundary
exchanges, gradient allreduce) plus the Adam step.

Memory is measured on the first step of the run, in a fresh process when the spec says
`fresh`, two ways: the peak RSS during forward+backward above the RSS just before it
(Linux: the high-water mark is reset through /proc/self/clear_refs), and the bytes of
the distinct tensors autograd saves for backward (a saved-tensors hook), which is the
activation memory itself and free of allocator noise. On CUDA the first is the
allocator's peak above its level before the step.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from mpirnn.config import Config
from mpirnn.distributed.device import choose_device, flush_denormals
from mpirnn.models import build_model
from mpirnn.grid import Grid
from mpirnn.tools.shapes import shape_of

# MPI (mpi4py, the mesh, the step runner) is imported inside the functions that need it:
# the PyTorch DDP peer (mpirnn/tools/ddp_peer.py, under torchrun, no MPI) reuses the rest.

SEED = 0
VOCAB = 256      # byte tokens
FEATURES = 1     # one continuous series for the long-sequence workloads


def expand(specs: list[dict]) -> list[dict]:
    """A spec with method "each" becomes one spec per serial scan method (auto is an alias of one)."""
    from mpirnn.models.scan import METHODS
    out = []
    for spec in specs:
        if spec.get("method") == "each":
            out += [{**spec, "method": m, "name": f"{spec['name']}, {m}"} for m in METHODS if m != "auto"]
        else:
            out.append(spec)
    return out


def make_batch(shape: dict, dtype=torch.float32):
    """The global (inputs, targets), identical on every rank: next-token or next-value prediction."""
    generator = torch.Generator().manual_seed(SEED)
    B, T = shape["batch"], shape["seq_len"]
    if shape["data"] == "tokens":
        data = torch.randint(0, VOCAB, (B, T + 1), generator=generator)
    else:
        data = torch.randn(B, T + 1, FEATURES, generator=generator, dtype=dtype)
    return data[:, :-1], data[:, 1:]


def make_model(shape: dict, device, horizon: int = 1, quantiles: tuple = ()):
    """`horizon`, `quantiles`: a series head's train.horizon and train.quantiles (mpirnn/models/series_head.py)."""
    cfg = Config()
    for key in ("cell", "hidden", "layers", "embed"):
        setattr(cfg.model, key, shape[key])
    cfg.train.seed = SEED
    cfg.train.horizon = horizon
    if quantiles:
        cfg.train.loss, cfg.train.quantiles = "quantile", list(quantiles)
    tokens = shape["data"] == "tokens"
    return build_model(cfg, vocab_size=VOCAB if tokens else None, features=None if tokens else FEATURES,
                       device=device)


class PlainModel(nn.Module):
    """Plain PyTorch on the same shapes: one fused multi-layer module (cuDNN on GPU), no mpirnn.

    minGRU has no fused module, so W3's plain baseline is nn.GRU, the closest fused cell.
    """

    def __init__(self, shape: dict):
        super().__init__()
        torch.manual_seed(SEED)
        tokens = shape["data"] == "tokens"
        self.input = nn.Embedding(VOCAB, shape["embed"]) if tokens else nn.Linear(FEATURES, shape["embed"])
        fused = nn.LSTM if shape["cell"] == "lstm" else nn.GRU
        self.rnn = fused(shape["embed"], shape["hidden"], shape["layers"], batch_first=True)
        self.head = nn.Linear(shape["hidden"], VOCAB if tokens else FEATURES)
        self.tokens = tokens

    def forward(self, inputs, targets):
        prediction = self.head(self.rnn(self.input(inputs))[0])
        if self.tokens:
            return F.cross_entropy(prediction.reshape(-1, VOCAB), targets.reshape(-1), reduction="sum")
        return F.mse_loss(prediction, targets, reduction="sum")


@contextlib.contextmanager
def scan_method(method: str | None):
    """Make every log_scan call (serial cell and cross-rank scan alike) use `method`."""
    if method is None:
        yield
        return
    from mpirnn.models import linear_cells, scan
    original = scan.log_scan
    scan.log_scan = linear_cells.log_scan = functools.partial(original, method=method)
    try:
        yield
    finally:
        scan.log_scan = linear_cells.log_scan = original


# ------------------------------------------------------------------ memory


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of a block above the level just before it, in bytes (host RSS, or the CUDA allocator)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.method = "cuda max_memory_allocated" if self.cuda else "peak RSS (VmHWM reset via clear_refs)"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
            return self
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # resets VmHWM to the current RSS
        except OSError:
            self.method = "peak RSS (ru_maxrss; fresh process)"
        self.before = (_status_kib("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.before
        else:
            import resource
            peak = _status_kib("VmHWM")
            peak = peak * 1024 if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.bytes = peak - self.before


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward inside the block (parameters excluded)."""

    def __init__(self, model):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, int] = {}
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.params:
            self.storages[storage.data_ptr()] = max(self.storages.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        self.bytes = sum(self.storages.values())


# ------------------------------------------------------------------ one run


def busy_cpu_s() -> float:
    """CPU seconds the machine's cores have been busy or stolen by the hypervisor since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as stat:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, stat.readline().split()[1:9])
    except (OSError, ValueError):
        return 0.0
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def build_step(spec: dict, comms, device):
    """(model, step function returning this rank's loss share) for a spec."""
    from mpirnn.parallel.step import StepRunner
    shape = shape_of(spec["workload"], spec["tiny"])
    inputs, targets = make_batch(shape)
    norm = float(targets.numel())
    if spec.get("plain"):
        model = PlainModel(shape).to(device)
        inputs, targets = inputs.to(device), targets.to(device)

        def plain_step(prime=False):
            loss = model(inputs[:, :2], targets[:, :2]) if prime else model(inputs, targets) / norm
            loss.backward()
            return loss.detach().double().cpu()
        return model, plain_step, None

    from mpirnn.parallel.plan import make_plan
    from mpirnn.parallel.shard import stage_model
    plan = make_plan(comms.grid, comms.coords, batch_size=shape["batch"], seq_len=shape["seq_len"],
                     layers=shape["layers"], cell=shape["cell"], microbatches=spec["microbatches"],
                     chunks=spec.get("chunks", 0), hidden=shape["hidden"])
    group = None
    if comms.grid.tp > 1:
        from mpirnn.parallel.tensor import TensorGroup
        group = TensorGroup(comms.axis["tp"], shape["hidden"], comms.timer)
    horizon, quantiles = spec.get("horizon", 1), tuple(spec.get("quantiles", ()))
    model = stage_model(make_model(shape, device, horizon, quantiles), plan, group)
    rows, segment = slice(*plan.rows), slice(*plan.segment)
    if horizon > 1:   # a direct multi-step head's targets (mpirnn/data/horizon.py), cut as training's are
        from mpirnn.data.horizon import HorizonTargets, targets_per_window
        norm = float(shape["batch"] * targets_per_window(shape["seq_len"], horizon) * FEATURES)
        whole = HorizonTargets(targets.contiguous(), 0, shape["seq_len"], shape["seq_len"], horizon)
        targets = whole[rows, segment].to(device) if plan.last_stage else None
    else:
        targets = targets[rows, segment].contiguous().to(device) if plan.last_stage else None
    # Inputs are read on the first stage, targets on the last (as training does).
    inputs = inputs[rows, segment].contiguous().to(device) if plan.first_stage else None
    state = model.zero_state(plan.local_rows, torch.empty(0, device=device), range(*plan.layers))
    runner = StepRunner(model, plan, comms, bucket_mb=4.0, precision=precision_of(spec, device))

    def cut(tensor):
        if tensor is None or not isinstance(tensor, torch.Tensor):
            return None if tensor is None else tensor[:, :2]
        return tensor[:, :2].contiguous()

    def step(prime=False):
        # A few time steps first: one-time allocations (thread pools, kernels) before memory is read.
        # Not with pp: the stages agree on the shapes of the activations they exchange.
        if prime and plan.grid.pp == 1:
            return runner(cut(inputs), cut(targets), state, norm)[0]
        return runner(inputs, targets, state, norm)[0]
    return model, step, runner


def precision_of(spec: dict, device):
    """The spec's train.precision as training would run it; `--bf16 on` on a CPU without native bf16
    times the emulated policy (mpirnn/models/precision.py), which training itself refuses."""
    from mpirnn.models.precision import for_device
    return for_device(spec.get("precision", "float32"), device, emulate=True)


def run_spec(spec: dict, world) -> dict | None:
    """Warm-up and timed steps of one spec on the MPI communicator `world`; the summary on rank 0 (None elsewhere)."""
    from mpirnn.distributed.mesh import Comms
    torch.set_num_threads(spec["threads"])
    flush_denormals()   # as training does (a classifier's backward would crawl through subnormals)
    comms = Comms.create(Grid(world.size, dp=spec["dp"], sp=spec["sp"], pp=spec.get("pp", 1), tp=spec.get("tp", 1)),
                         world)
    device = choose_device(spec["device"], comms.local_rank)
    runner = None
    try:
        with scan_method(spec.get("method")):
            model, step, runner = build_step(spec, comms, device)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            step(prime=True)
            times, losses, waits, own_cpu, busy = [], [], [], [], []
            for index in range(spec["warmup"] + spec["steps"]):
                optimizer.zero_grad(set_to_none=True)
                comms.world.Barrier()
                comms.timer.take()
                cpu, machine = time.process_time(), busy_cpu_s()
                started = time.perf_counter()
                if index == 0:
                    with PeakMemory(device) as peak, SavedBytes(model) as saved:
                        loss = step()
                else:
                    loss = step()
                optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - started
                if index >= spec["warmup"]:
                    times.append(elapsed)
                    waits.append(comms.timer.take())  # this rank's seconds blocked in MPI: bubble + transfers
                    comms.world.Barrier()  # the window for the CPU accounting closes when every rank is done
                    own_cpu.append(time.process_time() - cpu)
                    busy.append(busy_cpu_s() - machine)
                losses.append(float(loss))
    finally:
        if runner is not None:
            runner.reducer.remove()
    wait = statistics.median(waits) if waits else 0.0
    # Parameters and the optimizer's state on this rank (what tensor parallelism divides).
    state_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    mine = torch.tensor([*losses, *times, *own_cpu, *busy, state_bytes, wait, peak.bytes, saved.bytes],
                        dtype=torch.float64)
    every = torch.empty((world.size, mine.numel()), dtype=torch.float64)
    world.Allgather(mine.numpy(), every.numpy())
    comms.free()
    if world.rank:
        return None
    n, k = len(losses), len(times)
    step_times = every[:, n:n + k].max(dim=0).values  # a step ends when its slowest rank does
    # CPU that other processes took while cores this run needs were busy: the noise of a shared machine.
    foreign = every[0, n + 2 * k:n + 3 * k] - every[:, n + k:n + 2 * k].sum(dim=0)
    spare = max(0, (os.cpu_count() or 1) - world.size * spec["threads"]) * step_times
    return {**spec, "losses": every[:, :n].sum(dim=0).tolist(), "step_times_s": step_times.tolist(),
            "contended_cpu_s": (foreign - spare).clamp(min=0).tolist(),
            "mpi_wait_s_per_rank": every[:, -3].tolist(),  # median over the timed steps
            "state_bytes_per_rank": every[:, -4].tolist(),
            "peak_bytes_per_rank": every[:, -2].tolist(), "saved_bytes_per_rank": every[:, -1].tolist(),
            "memory_method": peak.method, "device_name": str(device)}
