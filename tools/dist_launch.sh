#!/usr/bin/env bash
# Single-node training over torchrun (python -m torch.distributed.run), one process per GPU.
# The training script picks the backend (nccl with CUDA, gloo without), so this also runs on CPU.
set -euo pipefail

usage() {
    cat >&2 <<USAGE
usage: $0 SCRIPT CONFIG NPROC [ARGS...]
  SCRIPT  training script, e.g. main_pg_seg.py
  CONFIG  config file, passed to SCRIPT as --cfg CONFIG
  NPROC   processes on this node (one per GPU)
  ARGS    passed on to SCRIPT, e.g. --resume ckpt.pth --eval
env: PORT (rendezvous port, default 29500), PYTHON (interpreter, default python)
example: $0 main_pg_seg.py configs/group_vit_gcc_yfcc_30e.yml 8
USAGE
    exit 2
}

fail() { echo "error: $1" >&2; usage; }

[[ $# -ge 3 ]] || fail "expected at least 3 arguments, got $#"
SCRIPT=$1
CONFIG=$2
NPROC=$3
[[ $NPROC =~ ^[1-9][0-9]*$ ]] || fail "NPROC must be a positive integer, got '$NPROC'"
[[ -f $SCRIPT ]] || fail "SCRIPT not found: $SCRIPT"
[[ -f $CONFIG ]] || fail "CONFIG not found: $CONFIG"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

exec "$PYTHON" -m torch.distributed.run \
    --nnodes=1 --nproc_per_node="$NPROC" \
    --master_addr=127.0.0.1 --master_port="${PORT:-29500}" \
    "$SCRIPT" --cfg "$CONFIG" "${@:4}"
