#!/usr/bin/env bash
# AR vs FIM vs MIM on the standard-library corpus (RESULTS.md, section "Objectives"). The exact commands behind
# the numbers there.
#
#   bash examples/experiments/objectives.sh          (~15 min on 2 cores shared with others)
#
# Equal training tokens = equal token positions through the model: every run takes ITERS steps of 8 rows x 128
# tokens (8 x 128 = 1024 token positions with a loss per step) on the same LR schedule. AR and FIM read 8 samples
# per step; MIM reads 4 samples per step, each twice (left-to-right and right-to-left), so it has the same compute
# and the same number of trained token positions but sees half as many distinct data tokens. MIM_DATA_MATCHED=1
# adds a MIM run with 8 samples per step (16 rows: twice the compute, the same data as AR/FIM).
#
# Validation (every 100 iterations, 8 batches of held-out stdlib files) is left-to-right next-token loss for all
# runs: the trainer evaluates MIM with its forward direction only. Infilling: the stdlib span benchmark
# (evaluation/infilling.py) on the corpus test split, greedy, prefix/suffix cut to 96 tokens each.
#
# Environment knobs: WORK (default runs/objectives), ITERS (default 200), MIM_DATA_MATCHED (0/1), PARALLEL (1:
# train the runs at the same time, one thread each -- what RESULTS.md used on a shared 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-runs/objectives}
ITERS=${ITERS:-200}
PY=${PYTHON:-python}
PARALLEL=${PARALLEL:-1}
if [[ "$PARALLEL" == 1 ]]; then export OMP_NUM_THREADS=1; else export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}; fi
export TOKENIZERS_PARALLELISM=false

VOCAB_SIZE=8192 MAX_CHARS=20000000
source examples/experiments/prepare_stdlib.sh

COMMON=(--preset tiny "${TOK[@]}" --train-data-path "$WORK/data/stdlib_train_text_document"
        --valid-data-path "$WORK/data/stdlib_valid_text_document" --seq-length 128 --train-iters "$ITERS"
        --lr-warmup-iters 20 --eval-interval 100 --eval-iters 8 --log-interval 50 --seed 1234
        --training.progress_bar false)

train() {  # name, extra flags...
  local name=$1; shift
  if [[ ! -f "$WORK/$name/latest" ]]; then
    rm -rf "${WORK:?}/$name"
    if [[ "$PARALLEL" == 1 ]]; then
      /usr/bin/time -f "$name: %e s wall" $PY pretrain_code.py "${COMMON[@]}" "$@" --save "$WORK/$name" \
          --save-interval "$ITERS" > "$WORK/$name.log" 2>&1 &
    else
      /usr/bin/time -f "$name: %e s wall" $PY pretrain_code.py "${COMMON[@]}" "$@" --save "$WORK/$name" \
          --save-interval "$ITERS" > "$WORK/$name.log" 2>&1
    fi
  fi
}
train ar  --micro-batch-size 8 --global-batch-size 8
train fim --micro-batch-size 8 --global-batch-size 8 --fim-rate 0.5 --fim-spm-rate 0.5
train mim --micro-batch-size 4 --global-batch-size 4 --mim --mim-beta 1.0 --mim-divergence tv
if [[ "${MIM_DATA_MATCHED:-0}" == 1 ]]; then
  train mim_data --micro-batch-size 8 --global-batch-size 8 --mim --mim-beta 1.0 --mim-divergence tv
fi
wait
for name in ar fim mim; do [[ -f "$WORK/$name/latest" ]] || { echo "training $name failed: see $WORK/$name.log"; exit 1; }; done

EVAL=(--benchmark stdlib --corpus-test "$WORK/corpus/test.jsonl" --single-per-doc 3 --multi-per-doc 2
      --max-new-tokens 48 --max-prefix-tokens 96 --max-suffix-tokens 96 --no-progress)
infill() {  # run, mode
  $PY tools/evaluate_infilling.py "${EVAL[@]}" --load "$WORK/$1" --mode "$2" --output "$WORK/infill_$1_$2.json"
}
infill ar l2r
infill fim fim-psm
infill fim fim-spm
infill fim l2r
infill mim mim
infill mim mim-l2r
if [[ "${MIM_DATA_MATCHED:-0}" == 1 ]]; then
  infill mim_data mim
fi

echo "== left-to-right validation loss (from SAVE/metrics.jsonl)"
for run in ar fim mim mim_data; do
  [[ -f "$WORK/$run/metrics.jsonl" ]] || continue
  $PY - "$WORK/$run/metrics.jsonl" "$run" <<'EOF'
import json, sys
recs = [json.loads(x) for x in open(sys.argv[1])]
valid = [(r["iteration"], round(r["loss"], 4)) for r in recs if r["kind"] == "valid"]
train = [r for r in recs if r["kind"] == "train"]
parts = {k: round(train[-1][k], 4) for k in ("fwd_ce", "bwd_ce", "agreement") if k in train[-1]}
print(f"{sys.argv[2]:<9} valid {valid}  last train loss {train[-1]['loss']:.4f} {parts}")
EOF
done
