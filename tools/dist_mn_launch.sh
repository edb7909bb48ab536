#!/usr/bin/env bash
# Multi-node training over torchrun: run once on every node with its own NODE_RANK.
# The training script picks the backend (nccl with CUDA, gloo without), so this also runs on CPU.
set -euo pipefail

usage() {
    cat >&2 <<USAGE
usage: $0 SCRIPT CONFIG NODE_RANK NNODES NPROC_PER_NODE MASTER_ADDR [ARGS...]
  SCRIPT          training script, e.g. main_pg_seg.py
  CONFIG          config file, passed to SCRIPT as --cfg CONFIG
  NODE_RANK       rank of this node, 0 .. NNODES-1 (node 0 hosts the rendezvous)
  NNODES          number of nodes
  NPROC_PER_NODE  processes per node (one per GPU)
  MASTER_ADDR     address of node 0, reachable from every node
  ARGS            passed on to SCRIPT
env: PORT (rendezvous port on node 0, default 29500), PYTHON (interpreter, default python)
example (2 nodes x 8 GPUs):
  (node0)\$ $0 main_pg_seg.py configs/group_vit_gcc_yfcc_30e.yml 0 2 8 10.0.0.1
  (node1)\$ $0 main_pg_seg.py configs/group_vit_gcc_yfcc_30e.yml 1 2 8 10.0.0.1
USAGE
    exit 2
}

fail() { echo "error: $1" >&2; usage; }

[[ $# -ge 6 ]] || fail "expected at least 6 arguments, got $#"
SCRIPT=$1
CONFIG=$2
NODE_RANK=$3
NNODES=$4
NPROC_PER_NODE=$5
MASTER_ADDR=$6
[[ $NNODES =~ ^[1-9][0-9]*$ ]] || fail "NNODES must be a positive integer, got '$NNODES'"
[[ $NODE_RANK =~ ^[0-9]+$ ]] && (( NODE_RANK < NNODES )) || fail "NODE_RANK must be in 0..$((NNODES - 1)), got '$NODE_RANK'"
[[ $NPROC_PER_NODE =~ ^[1-9][0-9]*$ ]] || fail "NPROC_PER_NODE must be a positive integer, got '$NPROC_PER_NODE'"
[[ -n $MASTER_ADDR && $MASTER_ADDR != -* ]] || fail "MASTER_ADDR must be a host name or address, got '$MASTER_ADDR'"
[[ -f $SCRIPT ]] || fail "SCRIPT not found: $SCRIPT"
[[ -f $CONFIG ]] || fail "CONFIG not found: $CONFIG"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# how long torchrun lets its workers finish a step and write a checkpoint after it got SIGTERM, before SIGKILL
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-120}

# Preemption (utils/signals.py): the workers stop on SIGTERM/SIGUSR1 after a checkpoint and create this file;
# torchrun exits 1 whatever their statuses, so the file is what turns into exit status 3 here.
PREEMPTED=3
export PGSEG_PREEMPTED_MARKER
PGSEG_PREEMPTED_MARKER=$(mktemp -u "${TMPDIR:-/tmp}/pgseg-preempted.XXXXXXXX")
# SLURM signals every process of the step: torchrun must not die of SIGUSR1 (it ignores what it inherits ignored)
trap '' USR1
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \
    --master_addr="$MASTER_ADDR" --master_port="${PORT:-29500}" \
    "$SCRIPT" --cfg "$CONFIG" "${@:7}" &
LAUNCHER=$!
# a signal sent to this script alone goes to the workers (not to torchrun: a second SIGTERM cuts its grace period)
trap 'pkill -TERM -P "$LAUNCHER" || true' TERM
trap 'pkill -USR1 -P "$LAUNCHER" || true' USR1
status=0
while true; do
    wait "$LAUNCHER" && status=0 || status=$?
    kill -0 "$LAUNCHER" 2>/dev/null || break  # wait returned for a trapped signal: torchrun still runs
done
if [[ -e $PGSEG_PREEMPTED_MARKER ]]; then
    rm -f "$PGSEG_PREEMPTED_MARKER"
    echo "preempted: the workers wrote a checkpoint and stopped; exit status $PREEMPTED (the same command resumes)" >&2
    exit $PREEMPTED
fi
exit "$status"
