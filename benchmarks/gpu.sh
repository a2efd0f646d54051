#!/usr/bin/env bash
# Everything benchmarks/RESULTS.md's GPU sections report, in one call on a one-GPU CUDA machine:
# the converted model's inference, the interleaved trainer step on Sana-600M, the GPU tests.
#   bash benchmarks/gpu.sh OUT_DIR [RUNS]    (RUNS: benchmarks.train_step --runs, its default
#                                              fp:eager,fp:graph,fp:compile,w4a8:eager,w4a8:graph)
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [RUNS]}
runs=${2:-fp:eager,fp:graph,fp:compile,w4a8:eager,w4a8:graph}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu \
    --format=csv
  echo "== converted W4A8 inference vs bf16 and torchao"
  timeout 140 python -m benchmarks.converted_inference --json "$out/inference.json" 2>&1 \
    | grep -v Warning | tail -14
  echo "== trainer step, interleaved: $runs"
  timeout 330 python -m benchmarks.train_step --runs "$runs" --json "$out/train_step.json" \
    2>&1 | tail -12
  echo "== GPU tests"
  timeout 300 python -m pytest -q -p no:cacheprovider --durations=5 tests/quant/test_kernels.py \
    tests/quant/test_ops.py tests/train/test_step.py tests/train/test_sharding.py \
    tests/train/test_distributed.py 2>&1 | tail -25
  nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv
} 2>&1 | tee "$out/log.txt"
