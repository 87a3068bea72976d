"""W7's predictions with a calibration and with the same calibration less its long-sequence term
(what the model predicted before it had one), beside the measured medians.

    .venv/bin/python benchmarks/w7_term.py benchmarks/results/cpu-2026-12-06-w6/w7.json \
        benchmarks/results/cpu-2026-12-06-w6/calibration.json

(docs/performance.md, "W7 and the long-sequence term")
"""
import copy
import json
import sys

from mpirnn.perf.calibration import Calibration, load
from mpirnn.tools.bench_lengths import predicted_per_1000

res = json.load(open(sys.argv[1]))
cal = load(sys.argv[2])
data = copy.deepcopy(cal.data)
data["compute"].pop("long_sequence", None)
without = Calibration(data)
print("| W7 run | measured s per 1000 valid elements | predicted, with the long-sequence term (error) "
      "| without it, as before (error) |")
print("|---|---|---|---|")
for r in res["runs"]:
    m = r["median_s_per_1000_elements"]
    a = predicted_per_1000(r, res["shape"], cal)
    b = predicted_per_1000(r, res["shape"], without)
    print(f"| {r['name']} | {m:.4f} | {a:.4f} ({100 * (a / m - 1):+.0f}%) | {b:.4f} ({100 * (b / m - 1):+.0f}%) |")
