#!/usr/bin/env bash
# Everything benchmarks/RESULTS.md's GPU sections report, in one call on a one-GPU CUDA machine:
# the converted model's inference (one transformer call; the pipeline's whole __call__), the
# fake-quant kernels, the interleaved trainer step on Sana-600M, the GPU tests.
#   bash benchmarks/gpu.sh OUT_DIR [PARTS] [STEP_SECONDS]
# PARTS: comma-separated, of inference,pipeline,kernels,step,tests (default all). STEP_SECONDS bounds the
# step benchmark's timed rounds (its JSON is rewritten after every round, so a cut run keeps
# what it finished). The tests run last, in five groups side by side (16 cores; each group
# uses little of the GPU), each with its own time limit ($TEST_SECONDS, default 300) and log.
# Run the tests after the timed parts (or in a call of their own), never beside them: they slow
# the builds and perturb the timings. The torchrun tests need clean-fid (carry its wheel).
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [PARTS] [STEP_SECONDS]}
parts=${2:-inference,pipeline,kernels,step,tests}
step_s=${3:-120}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
has() { [[ ",$parts," == *",$1,"* ]]; }
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu \
    --format=csv
  if has inference; then
    echo "== converted W4A8 inference vs bf16 and torchao"
    timeout 300 python -m benchmarks.converted_inference --rounds 3 --reps 5 --json "$out/inference.json" 2>&1 \
      | grep -v Warning | tail -18
  fi
  if has pipeline; then
    echo "== the pipeline's __call__ at 1024 px with each transformer"
    timeout 200 python -m benchmarks.pipeline_call --json "$out/pipeline_call.json" 2>&1 \
      | grep -v Warning | tail -8
  fi
  if has kernels; then
    echo "== fake-quant kernels, 8192x8192"
    timeout 100 python -m benchmarks.fake_quant --json "$out/fake_quant.json" 2>&1 \
      | grep -v Warning | tail -24
  fi
  if has step; then
    echo "== trainer step, interleaved (rounds stop after ${step_s} s)"
    timeout $((step_s + 240)) python -m benchmarks.train_step --rounds 12 --steps 4 \
      --max-seconds "$step_s" --json "$out/train_step.json" 2>&1 | grep -v Warning | tail -14
  fi
  nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv
} 2>&1 | tee "$out/log.txt"
if has tests; then
  groups=("quant|tests/quant|" "step|tests/train/test_step.py|"
          "fsdp|tests/train/test_sharding.py|two_gloo"
          "sharding|tests/train/test_sharding.py|not two_gloo"
          "distributed|tests/train/test_distributed.py|")
  for g in "${groups[@]}"; do
    IFS='|' read -r name path expr <<< "$g"
    timeout "${TEST_SECONDS:-300}" python -m pytest -q -p no:cacheprovider --durations=5 \
      "$path" ${expr:+-k "$expr"} > "$out/tests-$name.txt" 2>&1 &
  done
  wait
  tail -n 3 "$out"/tests-*.txt | tee -a "$out/log.txt"
fi
