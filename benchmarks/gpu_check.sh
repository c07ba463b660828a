#!/bin/bash
# The GPU half of the speed work in one call (sized for about 8 minutes on an H100/H200): the
# benchmark with torch.compile at 224 px, predict.py on CUDA, and fp16 autocast + GradScaler
# training (the path of GPUs without bf16) with a resume. Everything lands in $OUT.
#
#   OUT=runs/gpu-check bash benchmarks/gpu_check.sh [DATASET]   # DATASET: a folder with train/ (optional;
#                                                                # generated 48x48 images otherwise)
set -u
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - T0 )) s)"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'bf16', torch.cuda.is_bf16_supported())"

step "benchmark (training at 224 px with the speed-ups and torch.compile, data pipeline, inference)"
timeout 420 python3 -m benchmarks.bench --device cuda --compile --sizes 224 ${1:+--data "$1"} --skip accuracy \
    --json "$OUT/bench.json" > "$OUT/bench.md" 2> "$OUT/bench.err"
echo "rc=$?"
cat "$OUT/bench.md"
tail -n 5 "$OUT/bench.err"

step "predict.py on CUDA (PyTorch backend)"
python3 predict.py --device cuda --backend torch --params Data/samples/astronaut.jpg --json \
    > "$OUT/predict.json" 2> "$OUT/predict.err"
echo "rc=$?"
cat "$OUT/predict.json"
tail -n 3 "$OUT/predict.err"

step "fp16 autocast + GradScaler: 2 epochs, then resumed to 3"
DATA=$(mktemp -d)
python3 - "$DATA" <<'PY'
import shutil
import sys
from pathlib import Path

from benchmarks.bench import write_synthetic_dataset

root = write_synthetic_dataset(Path(sys.argv[1]), 64)
shutil.copytree(root / "train", root / "val")
PY
python3 train.py --data "$DATA" --epochs 2 --img-size 112 --batch-size 64 --amp-dtype fp16 --pretrained none \
    --output "$OUT/fp16" > "$OUT/fp16.log" 2>&1
echo "rc=$?"
python3 train.py --resume "$OUT/fp16" --epochs 3 --amp-dtype fp16 >> "$OUT/fp16.log" 2>&1
echo "resume rc=$?"
grep -v "%|" "$OUT/fp16.log" | tail -n 12
cat "$OUT/fp16/log.jsonl"
rm -rf "$DATA"
step "done"
