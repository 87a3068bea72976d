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
