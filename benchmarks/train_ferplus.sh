#!/usr/bin/env bash
# The shipped FER+ model (FER+ train + CK+48 folds 2-4) and its ablation (FER+ train only), one after
# the other, each resumed where it stopped if the script is run again. See docs/training.md.
#
#   bash benchmarks/train_ferplus.sh [OUT]      # OUT default runs; about 35 + 30 minutes on 2 CPU cores
#
# START sets where the weights start (default: the FER2013 model at 112 px); the face-trunk runs of
# docs/training.md use the same data and schedule from dlib's face-recognition trunk:
#   START="--trunk face_resnet --pretrained Data/face_resnet_faceapi.safetensors" bash benchmarks/train_ferplus.sh runs/face_pre
#   START="--trunk face_resnet --pretrained none" bash benchmarks/train_ferplus.sh runs/face_rand
#
# EPOCHS and LR change the schedule (default 2 epochs at lr 0.01); the second stage of the shipped
# model continues the first stage's weights for 5 more epochs at half the rate, and the ablation
# continues its own first stage (START_ONLY, default START) (docs/training.md):
#   START="--init runs/dan_ferplus_ck/best.safetensors --img-size 112" \
#   START_ONLY="--init runs/dan_ferplus_only/best.safetensors --img-size 112" EPOCHS=5 LR=0.005 \
#     EXTRA="--blur 0.3 --jpeg 0.3 --keep-epochs" bash benchmarks/train_ferplus.sh runs/stage2
#
# Needs Data/ckplus48_v1t0 (see benchmarks/recipe_trials.sh for the data.prepare command).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs}
FERPLUS=${FERPLUS:-../shared/data/ferplus}
CKPLUS=${CKPLUS:-Data/ckplus48_v1t0}
START=${START:---init Data/dan_fer2013.safetensors --img-size 112}
START_ONLY=${START_ONLY:-$START}
RECIPE=(--epochs ${EPOCHS:-2} --batch-size 64 --optimizer sgd --lr ${LR:-0.01}
        --sched cosine --warmup-epochs 0.2 --aug fer --select source-mean --cache yes --seed 0 ${EXTRA:-})
run() {
  local out=$1; shift
  if [ -f "$out/last.pth" ]; then
    python3 train.py --resume "$out"
  else
    python3 train.py "$@" "${RECIPE[@]}" --output "$out"
  fi
}
run "$OUT/dan_ferplus_ck" $START --data "$FERPLUS" "$CKPLUS" --oversample ckplus48=8
run "$OUT/dan_ferplus_only" $START_ONLY --data "$FERPLUS"
