#!/usr/bin/env bash
# Everything benchmarks/RESULTS.md's GPU sections report, in one call on a CUDA machine:
# the GPU tests, the fake-quant kernel bandwidth, and `fraqat train`'s step on Sana-600M.
#   bash benchmarks/gpu.sh OUT_DIR [MODES]       (MODES default: eager,graph,compile)
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [MODES]}
modes=${2:-eager,graph,compile}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu \
    --format=csv
  echo "== GPU tests"
  timeout 240 python -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_ops.py \
    tests/test_train_step.py 2>&1 | tail -25
  echo "== kernel bandwidth"
  timeout 150 python -m benchmarks.fake_quant --json "$out/fake_quant.json" 2>&1 | tail -40
  echo "== Nsight Compute: kernel time and DRAM throughput (% of peak), 8192x8192"
  timeout 120 ncu --clock-control none -k regex:_kernel --metrics \
    gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed \
    python -m benchmarks.ncu_kernels 2>&1 | grep -E "_kernel|duration|dram__" | tail -60
  for mode in ${modes//,/ }; do
    echo "== trainer step, $mode"
    timeout 300 python -m benchmarks.train_step --modes "$mode" --json "$out/sana_$mode.json" \
      --profile "$out/profile_sana.txt" 2>&1 | tail -8
  done
} 2>&1 | tee "$out/log.txt"
