#!/usr/bin/env bash
# The GPU check (experiments/devices.py): every experiment at smoke scale on CUDA (twice: equal tables), one
# paper-scale epoch of SimCLR and of the dSprites beta-VAE, the paper-scale MNIST example check; writes
# results/DEVICES.md. Under 8 minutes on one GPU; any CUDA error stops it with a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=disabled
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"   # deterministic cuBLAS
if [ -z "${LABELFREE_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  LABELFREE_DATA_DIR="$(cd ../shared/data && pwd)"
  export LABELFREE_DATA_DIR
fi
timeout 480 python -m experiments.devices "$@"
