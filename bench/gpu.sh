#!/usr/bin/env bash
# One command for a lent GPU machine, under five minutes: prunelib's dense evaluator at fp32, bf16 and fp16
# for whisper-base, SparseGPT's calibration time, and faster-whisper on the same CTranslate2 weights when it
# is importable. Writes bench/GPU.md (or the path given as the first argument). Needs the project's
# requirements (transformers 4.57.6 among them) and the model from the hub or a local folder (--model).
#   bash bench/gpu.sh                      # bench/GPU.md
#   bash bench/gpu.sh /tmp/gpu.md --limit 32 --model ./build/whisper-base
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
out=${1:-bench/GPU.md}
shift || true
nvidia-smi -L || { echo "bench/gpu.sh: no NVIDIA GPU is visible (nvidia-smi failed)" >&2; exit 2; }
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
export PYTHONUNBUFFERED=1
timeout 290 "$PY" bench/gpu.py --out "$out" "$@"
