#!/usr/bin/env bash
# Issue 23's GPU check: one script for a machine with a GPU, about 8 minutes.
#
#   1. the test suite's fast loop (`-m "not slow"`);
#   2. `python -m benchmarks b9 --quick` (the race's every part, tiny, one process a run);
#   3. B11 on the GPU: a whole-network training step of VGG19 and ResNet50 (random
#      weights) at 224 px, batch 32, float32 against mixed_float16 and mixed_bfloat16.
#
# It needs what CI needs: tltk installed as the README says (TensorFlow with its GPU
# build), and ../shared beside the checkout for step 2. Logs and result files go to $OUT
# when it is set (the device tool's folder), else to benchmarks/results/gpu-check/.
# Each step is limited in time, and a failed step does not stop the next one.
#
# Example:
#   $ bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/gpu-check}"
mkdir -p "$out"
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1

if ! python -c "import tensorflow as tf, sys; sys.exit(not tf.config.list_physical_devices('GPU'))"; then
  echo "gpu_check: TensorFlow sees no GPU here; install tltk with a GPU build of TensorFlow" \
       "(pip install -e . 'tensorflow[and-cuda]') and rerun" | tee "$out/summary.txt"
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/summary.txt"

step() {  # step NAME SECONDS COMMAND...: run it with a limit, log it, note its exit code
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - started)) s" | tee -a "$out/summary.txt"
  tail -3 "$out/$name.log"
}

step fast-loop 180 python -m pytest -q -m "not slow" -p no:cacheprovider
step b9-quick 180 python -m benchmarks b9 --quick
step b11-gpu 120 python -m benchmarks b11 --families=vgg19,resnet50 --size=224 --batch=32 \
  --variants=float32,fp16,bf16 --name=b11_precision_gpu
cp benchmarks/results/b9_fair_race_quick.json benchmarks/results/b11_precision_gpu.json \
  "$out/" 2>/dev/null
exit 0
