#!/usr/bin/env bash
# Demo throughput at -n 1, 2, 4: the embedded default (byte LSTM 2x256, batch 32, T=128), 30 steps
# each, one after another; prints the median tokens/s of steps 6-30 (after warm-up) per rank count.
#   bash benchmarks/demo_throughput.sh            (after `make setup`; prepares the corpus if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MPIRUN=${MPIEXEC:-.venv/bin/mpirun}
out=runs/demo-throughput
mkdir -p "$out"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
for n in 1 2 4; do
    "$MPIRUN" -n $n "$PY" -m mpirnn.train --set train.steps=30 --set output.sample_bytes=0 \
        --set output.progress=false --set output.metrics="$out/n$n.jsonl" >/dev/null
    "$PY" - "$out/n$n.jsonl" $n <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steps = [r for r in rows if not r.get("summary")][5:]
print(f"-n {sys.argv[2]}: median {statistics.median(r['tokens_per_s'] for r in steps):,.0f} tokens/s, "
      f"median step {statistics.median(r['step_time_s'] for r in steps):.3f} s, "
      f"median MPI wait {statistics.median(r['comm_time_s'] for r in steps):.3f} s")
PY
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
