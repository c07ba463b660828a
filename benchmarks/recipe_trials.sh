#!/usr/bin/env bash
# The recipe trials of docs/training.md: each change alone on a short, low-resolution fine-tune
# from the FER2013 model, selected and scored on val splits only (FER+ val, CK+ fold 1).
#
#   bash benchmarks/recipe_trials.sh [OUT]     # OUT default runs/trials; about 4 minutes a trial on 2 cores
#
# Needs Data/ckplus48_v1t0 (CK+48 folds 2-4 / 1 / 0 as train / val / test):
#   python3 -m data.prepare folder --src ../shared/data/ck_plus_48/all --dst Data/ckplus48_v1t0 --source ckplus48 \
#       --subject-regex '^(S\d+)_' --folds-csv ../shared/data/ck_plus_48/folds.csv --fold 0 --val-fold 1
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/trials}
FERPLUS=${FERPLUS:-../shared/data/ferplus}
CKPLUS=${CKPLUS:-Data/ckplus48_v1t0}
BASE=(--data "$FERPLUS" "$CKPLUS" --oversample ckplus48=8 --init Data/dan_fer2013.safetensors
      --img-size 48 --epochs 1 --train-fraction 0.4 --batch-size 64 --optimizer sgd --lr 0.01 --sched cosine
      --warmup-epochs 0.2 --aug fer --select source-mean --cache yes --seed 0)
trial() {
  local name=$1; shift
  if [ -f "$OUT/$name/last.pth" ]; then echo "$name: done already"; return; fi
  rm -rf "$OUT/$name"
  echo "== $name: $*"
  python3 train.py "${BASE[@]}" "$@" --output "$OUT/$name" > "$OUT/$name.log" 2>&1
  tail -n 2 "$OUT/$name.log" | head -n 1
}
mkdir -p "$OUT"
trial base
trial hard-labels --soft-labels none
trial scale-jitter --scale-jitter 0.7 1.2
trial color --color-jitter 0.5
trial blur-jpeg --blur 0.3 --jpeg 0.3
trial mixup --mixup 0.2
trial cutmix --cutmix 1.0
trial label-smoothing --label-smoothing 0.1
trial logit-adjust --logit-adjust 1.0
trial balanced --balanced-sampler
