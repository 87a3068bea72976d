#!/usr/bin/env bash
# Runs the mpirnn trainer under Slurm; every argument goes to `python -m mpirnn.train`.
#
#   sbatch slurm/job.sh --config run.toml --set train.steps=100
#   sbatch --nodes=4 --gpus-per-node=4 --ntasks-per-node=4 slurm/job.sh --config run.toml
#
# Node, task and GPU counts live only in the #SBATCH lines below or on the sbatch command
# line (which overrides them); the body never repeats them: srun takes the allocation's.
# GPUs: add --gpus-per-node=G (and --ntasks-per-node=G) to sbatch. The trainer binds each rank
# to GPU (node-local rank mod visible GPUs), the node-local rank coming from MPI's
# Split_type(COMM_TYPE_SHARED), so nothing here maps ranks to devices.
#
# Where the project is: $MPIRNN_HOME if set; else the submit directory or one above it when it
# holds mpirnn/ (sbatch runs a copy of this script, so its own location says nothing); else
# the directory of the script as submitted (from `scontrol show job`). The Python used is
# $MPIRNN_PYTHON, else the project's .venv, else python3 on PATH.
#
# Preemption and time limits: Slurm sends USR1 to this shell 60 s before the limit
# (--signal=B:USR1@60, "B:" = batch shell only). The shell forwards it to srun, which passes it
# to every rank; the ranks agree on it at the next step boundary, write a checkpoint (set
# checkpoint.dir), note the stop in $MPIRNN_STOP_FILE and exit 0 (not 128+USR1 = 138 as under
# mpirun: srun's --kill-on-bad-exit would kill the ranks still finishing as soon as the first
# exited non-zero). The script then requeues the job (--requeue);
# the next run resumes (checkpoint.resume=true is added when SLURM_RESTART_COUNT > 0). A run
# that finishes before it sees the signal exits 0 and is not requeued. Output is appended
# across requeues (--open-mode=append). A fresh (not requeued) run refuses a checkpoint.dir that
# holds another run's checkpoints: resubmit with --set checkpoint.resume=true to continue that
# run, or --set checkpoint.overwrite=true to replace it.
#
# PMI: srun starts the ranks with --mpi=$MPIRNN_SRUN_MPI (default pmi2: the pip MPICH speaks
# PMI2). An Open MPI build, or a site MPICH built for PMIx, wants MPIRNN_SRUN_MPI=pmix;
# `srun --mpi=list` shows what the cluster offers. See slurm/README.md for a real cluster.
#
# Site settings: a real cluster usually wants some of these; drop one '#' to enable a line
# (sbatch reads only lines that start with exactly '#SBATCH'). With GPUs, make the
# --ntasks-per-node line below equal to --gpus-per-node (one rank per GPU).
##SBATCH --partition=gpu
##SBATCH --account=myproject
##SBATCH --gpus-per-node=4
#
#SBATCH --job-name=mpirnn
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --output=mpirnn-%j.out
#SBATCH --signal=B:USR1@60
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail

# The site's modules, before Python is looked for (a module may provide python3). Load the
# ones mpi4py was built with (slurm/README.md: building mpi4py against the site's MPI). Some
# module systems read unset variables: hence the set +u around them.
# set +u; module load gcc/12 openmpi/4.1 cuda/12.4; set -u

die() { echo "job.sh: $*" >&2; exit 2; }

is_home() { [[ -f $1/mpirnn/__init__.py ]]; }

find_home() {
    if [[ -n ${MPIRNN_HOME:-} ]]; then
        is_home "$MPIRNN_HOME" || die "MPIRNN_HOME=$MPIRNN_HOME has no mpirnn/ package"
        echo "$MPIRNN_HOME"; return
    fi
    local d cmd
    for d in "${SLURM_SUBMIT_DIR:-$PWD}" "${SLURM_SUBMIT_DIR:-$PWD}/.."; do
        if is_home "$d"; then (cd "$d" && pwd); return; fi
    done
    # The path the user gave sbatch (Command=...), or this file itself when run without sbatch.
    if [[ -n ${SLURM_JOB_ID:-} ]]; then
        cmd=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -n 1)
    else
        cmd=${BASH_SOURCE[0]}
    fi
    if [[ -n ${cmd:-} ]] && is_home "$(dirname "$cmd")/.."; then
        (cd "$(dirname "$cmd")/.." && pwd); return
    fi
    die "cannot find the mpirnn project: set MPIRNN_HOME or submit from the repository"
}

MPIRNN_HOME=$(find_home)
if [[ -n ${MPIRNN_PYTHON:-} ]]; then
    python=$MPIRNN_PYTHON
elif [[ -x $MPIRNN_HOME/.venv/bin/python ]]; then
    python=$MPIRNN_HOME/.venv/bin/python
else
    python=$(command -v python3) || die "no python3: set MPIRNN_PYTHON"
fi
export MPIRNN_HOME PYTHONPATH=$MPIRNN_HOME${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1   # lines reach the output file as they happen, not at exit

# Threads per rank = CPUs per task (the trainer's train.threads=0 reads SLURM_CPUS_PER_TASK
# too). Since Slurm 22.05 srun no longer inherits --cpus-per-task from the batch allocation;
# SRUN_CPUS_PER_TASK passes it on to the tasks.
threads=${SLURM_CPUS_PER_TASK:-1}
export OMP_NUM_THREADS=$threads
if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi

# UCX (the transport layer of MPICH's pip wheel) with its default "all transports" publishes
# an address that Slurm's pmi2 plugin mangled on the test cluster ("value not properly
# terminated", then a UCX assertion in MPI_Init). Without InfiniBand, shared memory and TCP
# are all UCX would use anyway, so name just those; a site's own UCX_TLS always wins.
if [[ -z ${UCX_TLS:-} ]] && [[ -z $(ls -A /sys/class/infiniband 2>/dev/null) ]]; then
    export UCX_TLS=self,sm,tcp
fi

# Which PMI srun speaks to the ranks with: a variable, not a fixed string (see the header).
srun_mpi=${MPIRNN_SRUN_MPI:-pmi2}

args=("$@")
if [[ ${SLURM_RESTART_COUNT:-0} -gt 0 ]]; then
    # A requeued run continues from the newest checkpoint (a later --set could still override).
    args=(--set checkpoint.resume=true "${args[@]}")
fi

echo "job.sh: job ${SLURM_JOB_ID:-none} restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-?}," \
     "${SLURM_NTASKS:-?} tasks x $threads threads; srun --mpi=$srun_mpi; project $MPIRNN_HOME; python $python"

# The traps are set before srun starts: an untrapped USR1 would kill this shell, job and all.
srun_pid="" signalled=""
forward() {
    signalled=$1
    echo "job.sh: got SIG$1, forwarding it to the ranks" >&2
    if [[ -n $srun_pid ]]; then kill -s "$1" "$srun_pid" 2>/dev/null || true; fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# srun runs in the background so that this shell can run its traps while waiting: bash defers
# a trap until the foreground command ends, and the signal would arrive too late.
# --kill-on-bad-exit: one rank that dies ends the whole step (no rank hangs in a collective;
# the trainer itself calls MPI_Abort on a one-rank error, this covers crashes).
# The mpirun alternative (MPICH's hydra; no PMI plugin needed, but Slurm then neither tracks
# nor signals the tasks, so preemption needs care):
#   "$MPIRNN_HOME/.venv/bin/mpirun" -n "$SLURM_NTASKS" -ppn "$SLURM_NTASKS_PER_NODE" \
#       "$python" -m mpirnn.train "${args[@]}"
# The trainer writes this file when it stopped on a signal after saving a checkpoint.
export MPIRNN_STOP_FILE="${SLURM_SUBMIT_DIR:-$PWD}/.mpirnn-stopped-${SLURM_JOB_ID:-$$}"
rm -f "$MPIRNN_STOP_FILE"
srun --mpi="$srun_mpi" --kill-on-bad-exit=1 "$python" -m mpirnn.train "${args[@]}" &
srun_pid=$!

# wait returns early (status > 128) whenever a trapped signal arrives: keep waiting while srun
# lives, then collect its status (bash keeps it after reaping the process).
while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid" || true; done
wait "$srun_pid" && rc=0 || rc=$?
echo "job.sh: srun exited with status $rc"

stopped_cleanly=""
if [[ -f $MPIRNN_STOP_FILE || $rc -eq $((128 + 10)) ]]; then stopped_cleanly=yes; fi
rm -f "$MPIRNN_STOP_FILE"
if [[ $signalled == USR1 && -n $stopped_cleanly ]]; then
    # The trainer stopped at our request after a checkpoint: queue the rest.
    echo "job.sh: requeueing job $SLURM_JOB_ID to resume from its checkpoint"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
