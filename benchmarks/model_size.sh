#!/usr/bin/env bash
# The model-size axis of the schedule ablation: the same sweep on a wider/deeper teacher.
#
# Builds the teacher in a scratch copy of the project with bigger pretrain.* values (prepare,
# pretrain, calibrate and teacher stages, the pipeline's own code), then runs
# `benchmarks/schedule_sweep.py --set size` on it. Meant for the GPU machine:
#
#   bash benchmarks/model_size.sh OUT.json [WIDTH LAYERS HEADS]     # default 256 8 4
#
# Environment: PYTHON (python3), DEVICE (cuda), PRETRAIN_STEPS (3000), SEEDS ("0 1 2"), WORKERS (6), and
# SWEEP_ARGS (extra arguments for schedule_sweep.py, e.g. "-S train.steps=10" for a smoke run).
set -euo pipefail
out=$(realpath "$1"); width=${2:-256}; layers=${3:-8}; heads=${4:-4}
work=$(mktemp -d)
cp -r fraqat benchmarks params.yaml "$work"/
cd "$work"
export PYTHONPATH="$work:${PYTHONPATH:-}"
"${PYTHON:-python3}" - "$width" "$layers" "$heads" "${DEVICE:-cuda}" "${PRETRAIN_STEPS:-3000}" <<'PY'
import sys

import yaml

width, layers, heads, device, steps = sys.argv[1:]
p = yaml.safe_load(open("params.yaml"))
p["device"] = device
p["pretrain"].update(width=int(width), layers=int(layers), heads=int(heads), steps=int(steps),
                     lr=5e-4, batch_size=256)
yaml.safe_dump(p, open("params.yaml", "w"))
print("model-size sweep:", p["pretrain"], "on", device)
PY
for stage in prepare pretrain calibrate teacher; do "${PYTHON:-python3}" -m fraqat.cli "$stage"; done
# shellcheck disable=SC2086
"${PYTHON:-python3}" benchmarks/schedule_sweep.py --set size --seeds ${SEEDS:-0 1 2} \
    --workers "${WORKERS:-6}" -S device="${DEVICE:-cuda}" ${SWEEP_ARGS:-} --json "$out"
"${PYTHON:-python3}" - "$out" "$width" "$layers" "$heads" <<'PY'
import json
import sys

from fraqat.models.registry import load_teacher

out, width, layers, heads = sys.argv[1], *map(int, sys.argv[2:])
d = json.load(open(out))
d["teacher"] = {**json.load(open("data/teacher/fraqat.json")), "width": width, "layers": layers,
                "heads": heads}
d["label"] = f"width {width}, {layers} layers"
d["params_count"] = sum(p.numel() for p in load_teacher("data/teacher").transformer.parameters())
json.dump(d, open(out, "w"), indent=2)
PY
