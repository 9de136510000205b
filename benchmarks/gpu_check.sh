#!/usr/bin/env bash
# One prepared GPU check (issue 11): step cost of fixmatch vs cfsg_clip on ViT-B/16 at 224 px
# (fp32 and bf16, eager and torch.compile), prediction and loader throughput, loader CPU-ms per image,
# and whether the GPU waits for data: loader-fed vs synthetic-batch steps/s of cfsg_clip, USB's PIL
# path vs augment_device: cuda (the JSON's "feed"; fed_over_synthetic well below 1 = the GPU waits).
# Finishes in under 8 minutes: the Python driver keeps a 450 s budget and this wrapper kills
# it at 470 s (the JSON is rewritten after every piece, so a cut-short run keeps its figures).
#
#   bash benchmarks/gpu_check.sh [OUT.json]        # default: gpu_check.json
#   bash benchmarks/gpu_check.sh --dry-run OUT     # CPU, tiny net: checks that every piece runs
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
DRY=()
if [ "${1:-}" = "--dry-run" ]; then DRY=(--dry-run); shift; fi
OUT=${1:-gpu_check.json}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 WANDB_MODE=disabled
if [ ${#DRY[@]} -eq 0 ]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
timeout --signal=TERM --kill-after=10 470 "$PY" benchmarks/gpu_check.py "${DRY[@]}" --budget 450 --out "$OUT"
echo "gpu_check: wrote $OUT"
