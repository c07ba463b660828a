#!/usr/bin/env bash
# The trunk comparison of docs/training.md: every model of benchmarks/train_ferplus.sh's two runs
# (merged: FER+ + CK+ folds 2-4; FER+ only), evaluated the same way, one JSON per cell under OUT/eval.
#
#   bash benchmarks/eval_trunks.sh RUN_FOLDER...    # each holds dan_ferplus_ck/ and/or dan_ferplus_only/
#
# merged model: FER+ val and CK+ fold 1 (val, per source), CK+ fold 0 on the 6 basic classes (test);
# FER+-only model: all of CK+48 (981 faces, 7 classes; cross-dataset), and CK+ fold 0 as above.
set -euo pipefail
cd "$(dirname "$0")/.."
FERPLUS=${FERPLUS:-../shared/data/ferplus}
CKPLUS=${CKPLUS:-Data/ckplus48_v1t0}
CKALL=${CKALL:-../shared/data/ck_plus_48}
evaluate() {  # checkpoint name args...
  local ckpt=$1 name=$2; shift 2
  [ -f "$ckpt" ] || { echo "skip: no $ckpt"; return 0; }
  local out; out="$(dirname "$ckpt")/eval/$name"
  python3 test.py --checkpoint "$ckpt" --output "$out" --json "$out.json" --no-tsne "$@" >/dev/null 2>&1 \
    || { echo "error: test.py failed on $ckpt ($name)"; return 1; }
  python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], sys.argv[3], '%d images: acc %.2f, balanced %.2f' % (m['images'], 100*m['accuracy'], 100*m['balanced_accuracy']), {k: round(100*v['accuracy'], 2) for k, v in m['per_source'].items()})" "$out.json" "$ckpt" "$name"
}
for run in "$@"; do
  evaluate "$run/dan_ferplus_ck/best.pth" val --data "$FERPLUS" "$CKPLUS" --split val
  evaluate "$run/dan_ferplus_ck/best.pth" ck_fold0 --data "$CKPLUS" --split test --exclude-classes contempt
  evaluate "$run/dan_ferplus_only/best.pth" ck_all --data "$CKALL" --split all
  evaluate "$run/dan_ferplus_only/best.pth" ck_fold0 --data "$CKPLUS" --split test --exclude-classes contempt
done
