#!/usr/bin/env bash
# The GPU figures in one device call (no GPU was lent to the session that wrote this; run it where one is):
# kd_step (bf16 autocast + channels_last on CUDA, peak memory), input_pipeline (the CPU side feeding the GPU),
# concurrent_trials as K processes sharing the GPU (K=4 is what `resources.gpu: 0.25` packs) with peak memory per
# trial, and, where Ray is installed, the same through Ray Tune with `gpu: 1/K`. Every command has its own timeout
# so one hang cannot eat the call; the whole script fits in ~9 minutes on one modern GPU.
#   bash benchmarks/gpu_check.sh [python]        (run from the repository root or anywhere)
set -u
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-python}}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" RAY_AUTH_MODE=disabled
run() { echo "\$ $*"; timeout "$@" || echo "(exit $?)"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
CPUS=$(nproc)
run 120 "$PY" benchmarks/kd_step.py --batch 256 --steps 60 --warmup 10 --threads "$CPUS"
run 90 "$PY" benchmarks/kd_step.py --teacher resnet56 --student resnet20 --batch 256 --steps 60 --warmup 10 --threads "$CPUS"
run 120 "$PY" benchmarks/input_pipeline.py --images 40960
run 180 "$PY" benchmarks/concurrent_trials.py --mode processes --trials 1,2,4 --teacher resnet32x4 --student resnet8x4 \
  --batch 256 --images 65536 --precision bf16 --loader-workers 2 --threads 2 --cpus "$CPUS"
if "$PY" -c "import ray.tune" 2>/dev/null; then
  run 150 "$PY" benchmarks/concurrent_trials.py --mode ray --trials 1,4 --teacher resnet32x4 --student resnet8x4 \
    --batch 256 --images 65536 --precision bf16 --loader-workers 2 --threads 2 --cpus "$CPUS"
else
  echo "ray is not installed here: the processes mode above stands for the gpu: 0.25 packing"
fi
