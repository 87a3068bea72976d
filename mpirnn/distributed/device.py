"""Which device and how many threads a rank uses.

Node-local rank comes from MPI's shared-memory split (works under mpirun, srun and any
other launcher), not from launcher-specific environment variables.
"""

from __future__ import annotations

import ctypes
import os

import torch

from mpirnn.errors import ConfigError


def cores_per_rank(local_size: int) -> int:
    """Cores this rank may use: Slurm's allocation if set, else its CPU affinity shared by the node's ranks."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    return max(1, available // max(1, local_size))


def choose_device(requested: str, local_rank: int) -> torch.device:
    """cuda:(local_rank % visible GPUs) when asked for or available, else the CPU."""
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise ConfigError("train.device = cuda but no CUDA device is visible to this rank; use auto or cpu")
    if requested == "cpu" or not has_cuda:
        return torch.device("cpu")
    # TF32 would make float32 results depend on batch splits far beyond rtol 1e-5: the
    # exactness contract needs true float32 in cuDNN's RNNs and in matrix products.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    index = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


# glibc's own settings, read at process start; a user who sets one keeps it (keep_freed_memory).
MALLOC_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> str:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    A training step frees and reallocates the same large activation tensors every step;
    by default glibc maps each one fresh and the step pays hundreds of thousands of page
    faults (measured: 1-rank CPU steps 1.3-2x slower on the benchmark shapes; a BiLSTM tagger
    over 16 rows x 4,096 steps 4.6 s against 2.7 s). The price is that memory freed at the
    peak stays with the process, as with jemalloc/tcmalloc. `mallopt` is the runtime form of
    the MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_ environment variables (the benchmarks'
    KEEP_MEMORY, mpirnn/perf/processes.py), so training runs as the benchmarks measure it.

    Returns "kept", "user" (the user set glibc's MALLOC_* variables: theirs stand) or
    "unavailable" (not glibc).
    """
    if any(name in os.environ for name in MALLOC_SETTINGS):
        return "user"
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return "unavailable"
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Large blocks from the heap rather than mmap, so freeing one keeps it; a trim threshold of
    # -1 never gives the heap's free top back (mallopt(3)), even past 2 GiB of activations.
    done = mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, -1)
    return "kept" if done else "unavailable"


def flush_denormals() -> None:
    """Compute subnormal floats as zero on this CPU (x86's flush-to-zero and denormals-are-zero).

    A gradient that enters a recurrent layer at few time steps (a classifier's loss at each row's
    last step) shrinks step by step backward until it is subnormal, and x86 CPUs compute
    subnormal numbers 10-100x slower. Measured on an Intel Xeon (one thread): fwd+bwd of a 2x256
    nn.LSTM over 32 rows x 256 steps took 7.06 s with the gradient at the last step only, against
    0.48 s with flushing, the time of a gradient at every step. Only magnitudes below float32's
    1.2e-38 (float64's 2.2e-308) change, so no loss or gradient does at any precision that shows.
    """
    torch.set_flush_denormal(True)


def bind(requested: str, threads: int, local_rank: int, local_size: int) -> torch.device:
    """Pin this rank to its device and set its torch thread count; returns the device."""
    torch.set_num_threads(threads or cores_per_rank(local_size))
    flush_denormals()
    device = choose_device(requested, local_rank)
    if device.type == "cpu":
        keep_freed_memory()
    return device
