#!/usr/bin/env bash
# SLURM training: one srun task per node, each running tools/dist_mn_launch.sh with the node rank,
# node count and master address taken from SLURM's variables. Works from a login node (srun allocates)
# and inside an sbatch/salloc allocation. A run stopped by a preemption signal (exit status 3, after a checkpoint) is
# requeued with `scontrol requeue`; the requeued job resumes where it stopped.
set -euo pipefail

usage() {
    cat >&2 <<USAGE
usage: $0 SCRIPT CONFIG NNODES GPUS_PER_NODE PARTITION [ARGS...]
  SCRIPT         training script, e.g. main_pg_seg.py
  CONFIG         config file, passed to SCRIPT as --cfg CONFIG
  NNODES         number of nodes
  GPUS_PER_NODE  GPUs (= processes) per node
  PARTITION      SLURM partition
  ARGS           passed on to SCRIPT
env: JOB_NAME (default pgseg), CPUS_PER_TASK (default 6 per GPU), SRUN_ARGS (extra srun options),
     PORT (default 20000 + job id % 10000), PYTHON (interpreter, default python)
example: $0 main_pg_seg.py configs/group_vit_gcc_yfcc_30e.yml 2 8 gpu
USAGE
    exit 2
}

fail() { echo "error: $1" >&2; usage; }

[[ $# -ge 5 ]] || fail "expected at least 5 arguments, got $#"
SCRIPT=$1
CONFIG=$2
NNODES=$3
GPUS_PER_NODE=$4
PARTITION=$5
[[ $NNODES =~ ^[1-9][0-9]*$ ]] || fail "NNODES must be a positive integer, got '$NNODES'"
[[ $GPUS_PER_NODE =~ ^[1-9][0-9]*$ ]] || fail "GPUS_PER_NODE must be a positive integer, got '$GPUS_PER_NODE'"
[[ -n $PARTITION && $PARTITION != -* ]] || fail "PARTITION must be a partition name, got '$PARTITION'"
[[ -f $SCRIPT ]] || fail "SCRIPT not found: $SCRIPT"
[[ -f $CONFIG ]] || fail "CONFIG not found: $CONFIG"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ -z ${SLURM_TRAIN_STEP:-} ]]; then
    command -v srun >/dev/null || { echo "error: srun not found: run this on a SLURM login node" >&2; exit 2; }
    export SLURM_TRAIN_STEP=1
    # SRUN_ARGS is split into words on purpose
    exec srun --partition="$PARTITION" --job-name="${JOB_NAME:-pgseg}" --nodes="$NNODES" \
        --ntasks-per-node=1 --gres=gpu:"$GPUS_PER_NODE" \
        --cpus-per-task="${CPUS_PER_TASK:-$((6 * GPUS_PER_NODE))}" --kill-on-bad-exit=1 ${SRUN_ARGS:-} \
        "$HERE/slurm_train.sh" "$@"
fi

for var in SLURM_NODEID SLURM_NNODES SLURM_JOB_NODELIST SLURM_JOB_ID; do
    [[ -n ${!var:-} ]] || { echo "error: $var is not set inside the srun step" >&2; exit 2; }
done
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk 'NR == 1')
export PORT=${PORT:-$((20000 + SLURM_JOB_ID % 10000))}
PREEMPTED=3
# SLURM signals every process of the step before killing it; this script must live on to requeue the job
trap ':' TERM USR1
status=0
"$HERE/dist_mn_launch.sh" "$SCRIPT" "$CONFIG" "$SLURM_NODEID" "$SLURM_NNODES" "$GPUS_PER_NODE" \
    "$MASTER_ADDR" "${@:6}" || status=$?
if (( status == PREEMPTED && SLURM_NODEID == 0 )); then
    if scontrol requeue "$SLURM_JOB_ID"; then
        echo "requeued job $SLURM_JOB_ID: it resumes from the checkpoint just written" >&2
    else
        echo "error: could not requeue job $SLURM_JOB_ID (a batch job submitted with sbatch --requeue can be);" \
            "run the same command again to resume" >&2
    fi
fi
exit "$status"
