"""What machine this process runs on: its CPU model, as calibrations and the metrics name it.

Pure and light (no torch, no MPI), so the rank records of mpirnn/distributed/placement.py and
the calibration lookup of mpirnn/perf/calibration.py read the same name.
"""

from __future__ import annotations


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


# What oneDNN needs to run bf16 matmuls and its fused bf16 LSTM in hardware (docs/precision.md).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(flags: set[str] | None = None) -> list[str]:
    """The flags among NATIVE_BF16_FLAGS this CPU has: empty where bf16 would be emulated."""
    flags = cpu_flags() if flags is None else flags
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
