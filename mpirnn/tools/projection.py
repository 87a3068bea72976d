"""Project the benchmark shapes onto GPUs: the best grid and its efficiency from 1 to 1024 GPUs.

    python -m mpirnn.plan --project [--calibration GPU.json] [--gpus-per-node 8] [--max-gpus 1024] [--json]

Uses a GPU calibration: the newest one measured on a GPU in the calibration folders
(mpirnn/perf/calibration.py search_dirs)
(`python -m mpirnn.plan --calibrate --device cuda` on the GPU machine), else the one derived
here from what was measured on an H100 (`h100_calibration`, every figure with its source).
Links: NVLink 4 inside a node, NDR InfiniBand between nodes, and mpirnn's host staging of
GPU messages (MPICH from PyPI is not CUDA-aware) on top of both (mpirnn/perf/links.py).
"""

from __future__ import annotations

import json
from dataclasses import replace

from mpirnn.perf import calibration as calibration_file
from mpirnn.perf.calibration import FORMAT, GATES, Calibration
from mpirnn.perf.links import HOST_STAGING, NDR_INFINIBAND, NVLINK4
from mpirnn.perf.step_model import Shape

# ---------------------------------------------------------------- an H100 from measured step times

W1_STEPS_S = (0.0194, 0.0208)     # W1 at 1 rank: benchmarks/results/h100-2026-11-26{,-final}/bench-cuda.json
W3_STEP_S = 0.0244                # W3 at 1 rank, chunked scan: the same files (0.0249 and 0.0244)
FP32_FLOPS = 67e12 * 0.5          # H100 SXM FP32 peak (NVIDIA datasheet), half of it reached (assumed);
                                  # TF32 stays off: mpirnn disables it for exactness
HBM_BYTES_S = 3.35e12             # H100 SXM HBM3 bandwidth (NVIDIA datasheet)
HIDDEN = [64, 128, 256, 512, 1024]
ROWS = [1, 8, 32, 128, 512, 2048, 8192]


def h100_calibration() -> dict:
    """A GPU calibration derived from the measured H100 step times plus datasheet figures.

    A fused cuDNN layer's time step is latency-bound at these sizes: W1's 1-rank step
    (2 layers × 256 steps of 32 rows) took 0.0194–0.0208 s, i.e. ~39 µs per layer-step,
    which is taken as the floor of every (rows, hidden) until the step's arithmetic at half
    the FP32 peak takes longer. Everything not measured is an assumption, named as such.
    """
    floor = sum(W1_STEPS_S) / len(W1_STEPS_S) / (2 * 256)

    def table(cell):
        steps = [[max(floor, 12 * r * GATES[cell] * h * h / FP32_FLOPS) for r in ROWS] for h in HIDDEN]
        return {"hidden": HIDDEN, "rows": ROWS, "step_s": steps, "call_s": [[1e-4] * len(ROWS) for _ in HIDDEN]}

    mac = 6 / FP32_FLOPS   # forward, input-gradient and weight-gradient products, 2 FLOPs each
    compute = {
        "fused": {cell: table(cell) for cell in GATES},
        "input_mac_s": mac,
        "linear": {cell: {"element_s": W3_STEP_S / (4 * 16384 * 128), "mac_s": mac, "call_s": 0.0}
                   for cell in ("mingru", "minlstm")},
        "head": {"tokens": {"vocab": 256, "hidden": HIDDEN, "token_s": [mac * h * 256 + 5e-10 for h in HIDDEN]},
                 "series": {"hidden": HIDDEN, "token_s": [mac * h + 1e-10 for h in HIDDEN]}, "call_s": 5e-5},
        "input": {"tokens_element_s": 8 / HBM_BYTES_S, "series_element_s": 8 / HBM_BYTES_S},
        "adam_param_s": 28 / HBM_BYTES_S,        # read p, g, m, v; write p, m, v (fp32)
        "adam_tensor_s": 2e-6,                   # foreach Adam: a few launches per tensor group (assumed)
        "accumulate_element_s": 12 / HBM_BYTES_S,
        "unit_overhead_s": 2e-4,                 # Python and ~30 kernel launches per unit (assumed)
        "cell_loop_step_s": 1e-4,                # ~20 small kernels per time step, forward and backward (assumed)
        "tp_step": {"overhead_s": 1e-4, "matmul_factor": 1.0},   # the same, for a tp step (assumed)
        "slowdown": {"busy": 1, "factor": 1.0},  # one rank per GPU
    }
    return {"format": FORMAT,
            "host": {"cpu": "NVIDIA H100 80GB HBM3 (derived)", "device": "cuda", "cores": 16, "date": "2026-11-26",
                     "threads_per_rank": 1},
            "source": "derived by mpirnn.tools.projection.h100_calibration from the H100 bench runs of "
                      "2026-11-26 (W1 and W3 1-rank steps) and datasheet figures; not a measurement of every entry",
            "compute": compute,
            "links": {"intra": NVLINK4.to_dict(), "inter": NDR_INFINIBAND.to_dict(), "staging": HOST_STAGING.to_dict()},
            "async_progress": 0.0}


def gpu_calibration(path: str | None = None) -> Calibration:
    if path:
        return calibration_file.load(path)
    measured = []
    for candidate in sorted(path for folder in calibration_file.search_dirs() for path in folder.glob("*.json")):
        data = json.loads(candidate.read_text())
        if data.get("host", {}).get("device") == "cuda":
            measured.append((data["host"].get("date", ""), candidate))
    if measured:
        return calibration_file.load(max(measured)[1])
    return Calibration(h100_calibration(), "h100_calibration() (derived)")


# ---------------------------------------------------------------- the projection


def shapes() -> dict[str, Shape]:
    from mpirnn.tools.bench_predictions import shape_for
    from mpirnn.tools.shapes import SHAPES
    w1 = shape_for(SHAPES["W1"])
    return {"W1": w1, "W2": shape_for(SHAPES["W2"]), "W1 weak (batch 32 per GPU)": w1}


def gpu_counts(most: int) -> list[int]:
    counts, n = [], 1
    while n <= most:
        counts.append(n)
        n *= 2
    return counts


def project(shape: Shape, cal: Calibration, gpus: int, per_node: int, weak: bool = False) -> dict:
    """The best grid for `gpus` GPUs, `per_node` to a node (fewer on one node)."""
    from mpirnn.perf.ranking import rank_grids, serial
    scaled = replace(shape, batch=shape.batch * gpus) if weak else shape
    nodes = max(1, gpus // per_node)
    best = rank_grids(scaled, gpus, cal, nodes)[0]
    one = serial(shape, cal)
    # Strong scaling: the 1-GPU time over N × the N-GPU time. Weak: the 1-GPU time of one GPU's share.
    efficiency = one.step_s / best.step_s if weak else one.step_s / (gpus * best.step_s)
    return {**best.to_dict(), "gpus": gpus, "nodes": nodes, "efficiency": efficiency}


def _percent(share: float) -> str:
    return f"{100 * share:.0f}%" if share >= 0.095 else f"{100 * share:.2g}%"


def markdown(name: str, rows: list[dict]) -> str:
    lines = [f"**{name}**", "", "| GPUs | nodes | best dp×sp×pp×tp | M | C | step ms | tokens/s | efficiency |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r["grid"]
        lines.append(f"| {r['gpus']} | {r['nodes']} | {g['dp']}×{g['sp']}×{g['pp']}×{g['tp']} | {r['microbatches']} | "
                     f"{r['chunks']} | {1e3 * r['step_time_s']:.3g} | {r['tokens_per_s']:,.0f} | "
                     f"{_percent(r['efficiency'])} |")
    return "\n".join(lines)


def main(path: str | None, per_node: int, most: int, as_json: bool) -> int:
    cal = gpu_calibration(path)
    result = {}
    for name, shape in shapes().items():
        weak = "weak" in name
        result[name] = [project(shape, cal, n, per_node, weak) for n in gpu_counts(most)]
    if as_json:
        print(json.dumps({"calibration": cal.path, "gpus_per_node": per_node, "shapes": result}, indent=1))
        return 0
    print(f"calibration: {cal.path}; {per_node} GPUs per node\n")
    print("\n\n".join(markdown(name, rows) for name, rows in result.items()))
    return 0
