#!/usr/bin/env bash
# The default model's recipe since faces in the wild joined the training (docs/training.md, "Faces in
# the wild"): the FER+ model fine-tuned on FER+ train, CK+48 folds 2-4 and SFEW 2.0 train framed as
# predict.py frames faces, grey, 2 epochs, selected on the mean of FER+ val, CK+ fold 1 and SFEW val;
# then its temperature fitted on val, and every figure of its card measured. Resumed where it
# stopped if run again. About 20 minutes of training and 3 of evaluation on 2 CPU cores.
#
#   bash benchmarks/train_wild.sh [OUT]        # OUT default runs/dan_wild
#
# Needs Data/ckplus48_v1t0 (benchmarks/recipe_trials.sh gives the command) and
#   python3 -m utils.inference.reframe --src ../shared/data/sfew --dst Data/sfew_framed
# DATA_ROOT points at another checkout's Data/ (a run from a git worktree).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/dan_wild}
DATA_ROOT=${DATA_ROOT:-Data}
FERPLUS=${FERPLUS:-../shared/data/ferplus}
DATA=("$FERPLUS" "$DATA_ROOT/ckplus48_v1t0" "$DATA_ROOT/sfew_framed")
# SFEW x8: 5,648 of the epoch's 35,229 faces (16 %), about CK+'s share (x8, 13 %) in the FER+ recipe:
# enough for the source-mean selection's third source to be learned, few enough repeats of 706
# faces (16 over the run) not to memorise them.
RECIPE=(--init Data/dan_ferplus.safetensors --img-size 112 --grayscale --oversample ckplus48=8 sfew=8
        --epochs 2 --batch-size 64 --optimizer sgd --lr 0.005 --sched cosine --warmup-epochs 0.1 --aug fer
        --select source-mean --cache yes --seed 0 --keep-epochs)
if [ -f "$OUT/last.pth" ]; then
  python3 train.py --resume "$OUT"
else
  python3 train.py --data "${DATA[@]}" "${RECIPE[@]}" --output "$OUT"
fi
MODEL=$OUT/best.safetensors
# the temperature: fitted on the val splits the selection used, stored in the file
python3 test.py --checkpoint "$MODEL" --data "${DATA[@]}" --split val --calibrate --output "$OUT/test-val"
python3 test.py --checkpoint "$MODEL" --data "$DATA_ROOT/ckplus48_v1t0" --split test --exclude-classes contempt \
  --output "$OUT/test-ck-fold0"
python3 test.py --checkpoint "$MODEL" --data "$FERPLUS" --split val --output "$OUT/test-ferplus-val"
python3 benchmarks/bench_folder.py --data ../shared/data/sfew --split val --checkpoint "$MODEL" \
  --json "$OUT/sfew_val_e2e.json" | tee "$OUT/sfew_val_e2e.txt"
