#!/usr/bin/env bash
# Faces in the wild: the trials that chose the default model's colour, framing, class balance,
# resolution and trunk (docs/training.md, "Faces in the wild"). Every arm fine-tunes the shipped
# FER+ model on the same short schedule: a quarter of FER+ train (fixed by the seed), CK+48 folds 2-4
# and SFEW train, 2 epochs, selected on the mean of FER+ val, CK+ fold 1 and SFEW val; each arm is
# then read end to end on SFEW val with benchmarks/bench_folder.py. About 6 minutes an arm on 2 CPU
# cores at 112 px. The face-trunk arm starts from dlib's face-recognition network instead (needs
# Data/face_resnet_faceapi.safetensors: docs/convert.md).
#
#   bash benchmarks/wild_trials.sh [OUT] [ARM...]     # OUT default runs/wild; ARM default: all, in order
#
# Needs Data/ckplus48_v1t0 (benchmarks/recipe_trials.sh gives the command) and SFEW's faces framed
# as predict.py frames them:
#   python3 -m tools.reframe --src ../shared/data/sfew --dst Data/sfew_framed
# DATA_ROOT points at another checkout's Data/ (a run from a git worktree).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/wild}
shift || true
DATA_ROOT=${DATA_ROOT:-Data}
FERPLUS=${FERPLUS:-../shared/data/ferplus}
CKPLUS=$DATA_ROOT/ckplus48_v1t0
SFEW=$DATA_ROOT/sfew_framed
START=(--init Data/dan_ferplus.safetensors --img-size 112)
SHORT=(--source-fraction ferplus=0.25 --oversample ckplus48=2 sfew=2)
RECIPE=(--epochs 2 --batch-size 64 --optimizer sgd --lr 0.005 --sched cosine --warmup-epochs 0.1 --aug fer
        --select source-mean --cache yes --seed 0)
COLOUR=(--no-grayscale --colour-aug 0.5 --grey-prob 0.2)
GREY=(--grayscale)  # grey read SFEW val better end to end than colour (docs/training.md): the arms after it use it

arm() {  # NAME, then train.py options
  local name=$1 out=$OUT/$1; shift
  if [ -f "$out/log.jsonl" ] && [ "$(wc -l < "$out/log.jsonl")" -ge 2 ]; then
    echo "== $name: done"
  elif [ -f "$out/last.pth" ]; then
    python3 train.py --resume "$out"
  else
    python3 train.py "${START[@]}" "${RECIPE[@]}" "$@" --output "$out"
  fi
  python3 benchmarks/bench_folder.py --data ../shared/data/sfew --split val --checkpoint "$out/best.safetensors" \
    --json "$out/sfew_val_e2e.json" | tee "$out/sfew_val_e2e.txt"
}

run_arm() {
  case $1 in
    grey)        arm grey --data "$FERPLUS" "$CKPLUS" "$SFEW" "${SHORT[@]}" "${GREY[@]}" ;;
    colour)      arm colour --data "$FERPLUS" "$CKPLUS" "$SFEW" "${SHORT[@]}" "${COLOUR[@]}" ;;
    # SFEW's own crops (143x181, hair and neck) instead of predict.py's framing
    colour_raw)  arm colour_raw --data "$FERPLUS" "$CKPLUS" ../shared/data/sfew "${SHORT[@]}" "${COLOUR[@]}" ;;
    logit_adj)   arm logit_adj --data "$FERPLUS" "$CKPLUS" "$SFEW" "${SHORT[@]}" "${GREY[@]}" --logit-adjust 1 ;;
    balanced)    arm balanced --data "$FERPLUS" "$CKPLUS" "$SFEW" "${SHORT[@]}" "${GREY[@]}" --balanced-sampler ;;
    px160)       arm px160 --data "$FERPLUS" "$CKPLUS" "$SFEW" "${SHORT[@]}" "${GREY[@]}" --img-size 160 ;;
    # dlib's face-recognition trunk (pretrained on colour faces; docs/convert.md), heads from scratch:
    # it has not seen an expression, so it starts at lr 0.01 as the FER+ model did from FER2013's
    face_trunk)  START=(--trunk face_resnet --pretrained "$DATA_ROOT/face_resnet_faceapi.safetensors" --img-size 150)
                 arm face_trunk --data "$FERPLUS" "$CKPLUS" "$SFEW" "${SHORT[@]}" "${GREY[@]}" --lr 0.01 ;;
    *) echo "unknown arm $1" >&2; exit 2 ;;
  esac
}

ARMS=("$@")
[ ${#ARMS[@]} -gt 0 ] || ARMS=(grey colour colour_raw logit_adj balanced px160 face_trunk)
for a in "${ARMS[@]}"; do run_arm "$a"; done
