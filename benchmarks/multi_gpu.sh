#!/usr/bin/env bash
# The GPU runs of benchmarks/multi_gpu.py, one part per machine kind (benchmarks/MULTI_GPU.md).
#   bash benchmarks/multi_gpu.sh ddp OUT     # 4 GPUs: DDP scaling on 1, 2, 4 GPUs (Sana-600M)
#   bash benchmarks/multi_gpu.sh flux OUT    # 4 GPUs: FLUX.1-schnell 12 B under FSDP
#   bash benchmarks/multi_gpu.sh light OUT   # 2 GPUs: Sana-1.6B, SD3.5-Medium, `fraqat train`
# Each launch has its own time limit and log; a failed launch (e.g. out of memory) leaves no
# JSON and is listed as failed; the table merges what finished. MULTI_GPU_ARGS=--tiny: a CPU
# dry run of the same launches at toy sizes.
set -u
part=${1:?part: ddp | flux | light}
out=${2:?output folder}
mkdir -p "$out"
launch() {  # launch NAME SECONDS NPROC ARGS...
  local name=$1 limit=$2 n=$3
  shift 3
  local t0=$SECONDS
  timeout "$limit" python3 -m torch.distributed.run --standalone --nproc-per-node "$n" \
    -m benchmarks.multi_gpu "$@" ${MULTI_GPU_ARGS:-} --json "$out/$name.json" > "$out/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s"
}
case $part in
  ddp)
    for n in 1 2 4; do launch "ddp-$n" 150 "$n" ddp --steps 12 --warmup 3; done ;;
  flux)
    launch fsdp-flux-1024 120 4 fsdp --model flux-schnell --image-tokens 1024 --steps 6 --warmup 2
    launch fsdp-flux-1024-ckpt 120 4 fsdp --model flux-schnell --image-tokens 1024 --steps 6 \
      --warmup 2 --checkpointing
    launch fsdp-flux-4096-ckpt 120 4 fsdp --model flux-schnell --image-tokens 4096 --steps 6 \
      --warmup 2 --checkpointing
    launch fsdp-flux-4096 100 4 fsdp --model flux-schnell --image-tokens 4096 --steps 6 \
      --warmup 2 ;;
  light)
    launch fsdp-sana-1.6b 130 2 fsdp --model sana-1.6b --batch 8 --steps 10 --warmup 3
    launch fsdp-sd3.5-medium 150 2 fsdp --model sd3.5-medium --batch 1 --steps 10 --warmup 3
    # `fraqat train` itself under FSDP on 2 GPUs vs 1 GPU (a gpu-marked test; needs pydantic)
    timeout 150 python3 -m pytest -q -s -p no:cacheprovider -m gpu tests/test_sharding.py \
      > "$out/fsdp-trainer.log" 2>&1
    echo "fsdp-trainer test: exit $?"; grep -E "FSDP trainer|passed|failed" "$out/fsdp-trainer.log" ;;
  *) echo "unknown part $part (allowed: ddp, flux, light)" >&2; exit 2 ;;
esac
shopt -s nullglob
python3 -m benchmarks.multi_gpu table "$out"/*.json --json "$out/multi_gpu-$part.json"
