#!/usr/bin/env bash
# The GPU checks of issues 2, 3 and 5, as one script for a lent GPU machine (no network there):
#   - the MPI exactness and training-run tests with CUDA tensors at -n 1 and -n 2 (two ranks, one GPU)
#   - the demo on the GPU at -n 1 and -n 2 (tokens/s), and on that machine's CPU for comparison
#   - the launch line of slurm/job.sh run by hand with mpirun -n 2: both ranks bind to the one GPU
#   - tp's exchanges on CUDA tensors (tests/test_transport_exchange.py, benchmarks/tp_gpu_check.py: issue 22)
#   - python -m mpirnn.bench --device cuda --only W1,W3 (mpirnn vs plain PyTorch cuDNN at -n 1)
# Needs wheels for mpich, mpi4py and pytest-mpi in .gpu/wheels (pip download them here first).
#   bash benchmarks/gpu_check.sh          # results under $OUT (default /tmp/gpu-check)
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

PY=$(command -v python3)
nvidia-smi -L
"$PY" -m pip install -q --no-index --find-links .gpu/wheels mpich mpi4py pytest-mpi 2>&1 | tail -2
MPIRUN=$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")/mpirun
export PYTHONPATH=$PWD OMP_NUM_THREADS=4
"$PY" -c 'import torch, h5py; from mpi4py import MPI; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "| MPI", MPI.Get_library_version().splitlines()[0])'

section() { echo; echo "=== $* ($(date +%T))"; }

for n in 1 2; do
    section "MPI tests with CUDA tensors at -n $n"
    MPIRNN_TEST_DEVICE=cuda timeout 240 "$MPIRUN" -n $n "$PY" -m pytest -q -p no:cacheprovider --with-mpi -m mpi \
        tests/mpi 2>&1 | grep -E "passed|failed|error|Error|Greatest|Mismatched" | sort | uniq -c
done

section "demo on the GPU and on this machine's CPU"
"$PY" -m mpirnn.data prepare --out data/stdlib-bytes --stdlib --force | tail -1
common=(--set output.progress=false --set output.sample_bytes=200 --set train.steps=60)
for n in 1 2; do
    timeout 200 "$MPIRUN" -n $n "$PY" -m mpirnn.train "${common[@]}" --set output.metrics="$OUT/demo-gpu-n$n.jsonl" 2>&1 | tail -4
done
timeout 200 "$MPIRUN" -n 1 "$PY" -m mpirnn.train "${common[@]}" --set train.steps=8 --set train.device=cpu \
    --set train.threads=16 --set output.sample_bytes=0 --set output.metrics="$OUT/demo-cpu16-n1.jsonl" 2>&1 | tail -1
section "placement (the job script's launch line, by hand with mpirun -n 2)"
tail -1 "$OUT/demo-gpu-n2.jsonl" | "$PY" -c 'import json,sys; [print(p["rank"], p["local_rank"], p["device"]) for p in json.load(sys.stdin)["placement"]]'

section "tp's per-step exchanges: the transport's CUDA routes, and a W4 tp=2 step through each against 1 rank"
timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_transport_exchange.py tests/test_staging_pool.py 2>&1 | tail -2
timeout 300 "$MPIRUN" -n 2 "$PY" benchmarks/tp_gpu_check.py 2>&1 | tail -6

section "benchmark W1, W3 on CUDA against plain PyTorch"
timeout 240 "$PY" -m mpirnn.bench --device cuda --only W1,W3 --out "$OUT/bench-cuda.json" 2>&1 | tail -20
section "done"
