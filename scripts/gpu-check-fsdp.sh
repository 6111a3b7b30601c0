#!/usr/bin/env bash
# The distributed training check for a machine with NVIDIA GPUs (none is lent where this is built):
# one node of two processes, each on a GPU of its own with NCCL, trains with DDP and with FSDP and
# must give the one-process adapter within float rounding; a node passes bad input on as exit 2.
# Needs 2 GPUs and this checkout's environment with a CUDA build of torch (skaffold's gpu profile
# builds one for the images). Usage: scripts/gpu-check-fsdp.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}
gpus=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
if [ "$gpus" -lt 2 ]; then
    echo "gpu-check-fsdp: needs 2 GPUs (one per rank), found $gpus" >&2
    exit 2
fi
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "NCCL", torch.cuda.nccl.version(), torch.cuda.get_device_name(0))'
exec "$PYTHON" -m pytest -q tests/stages/test_distributed_training.py \
    -k "one_process_trains_with_ddp_and_with_fsdp or bad_input"
