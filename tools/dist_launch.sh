#!/usr/bin/env bash
# Single-node training over torchrun, one process per GPU: dist_mn_launch.sh with one node (rank 0, 127.0.0.1).
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
[[ $3 =~ ^[1-9][0-9]*$ ]] || fail "NPROC must be a positive integer, got '$3'"
[[ -f $1 ]] || fail "SCRIPT not found: $1"
[[ -f $2 ]] || fail "CONFIG not found: $2"

exec "$(dirname "${BASH_SOURCE[0]}")/dist_mn_launch.sh" "$1" "$2" 0 1 "$3" 127.0.0.1 "${@:4}"
