#!/usr/bin/env bash
# RoPE vs learned absolute positions vs T5 relative position bias (the democratization study's Fig. 3.1) on the
# standard-library corpus, equal compute: every run is the tiny preset for ITERS steps of 8 x 128 tokens, same data
# order, same LR schedule; only the position encoding and the seed differ. SEEDS seeds per arm; the table reports
# the mean and the spread (min-max) of the final left-to-right validation loss, plus the commit of the numbers.
#
#   bash examples/experiments/positions.sh   (WORK=runs/activations, shared with activations.sh; ITERS=100,
#                                             SEEDS="1 2" by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-runs/activations}
ITERS=${ITERS:-100}
SEEDS=${SEEDS:-"1 2"}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$WORK"
git rev-parse HEAD > "$WORK/commit.txt"
if [[ ! -f "$WORK/corpus/test.jsonl" ]]; then
  $PY tools/prepare_stdlib_corpus.py --output-dir "$WORK/corpus"
fi
if [[ ! -f "$WORK/tokenizer/tokenizer.json" ]]; then
  $PY tools/train_tokenizer.py --input "$WORK/corpus/train.jsonl" --vocab-size 4096 --output-dir "$WORK/tokenizer" \
      --max-chars 5000000
fi
TOK=(--tokenizer-type HuggingFaceTokenizer --tokenizer-model "$WORK/tokenizer/tokenizer.json")
for split in train valid; do
  if [[ ! -f "$WORK/data/stdlib_${split}_text_document.idx" ]]; then
    $PY tools/preprocess_data.py --input "$WORK/corpus/$split.jsonl" --output-prefix "$WORK/data/stdlib_$split" \
        --json-keys text "${TOK[@]}" --append-eod --workers 2 --no-progress
  fi
done
COMMON=(--preset tiny "${TOK[@]}" --train-data-path "$WORK/data/stdlib_train_text_document"
        --valid-data-path "$WORK/data/stdlib_valid_text_document" --seq-length 128 --train-iters "$ITERS"
        --micro-batch-size 8 --global-batch-size 8 --lr-warmup-iters 20 --eval-interval "$ITERS" --eval-iters 8
        --log-interval 50 --training.progress_bar false)
for seed in $SEEDS; do
  for act in rope learned t5; do
    name="${act}_seed$seed"
    if [[ ! -f "$WORK/$name/latest" ]]; then
      rm -rf "${WORK:?}/$name"
      $PY pretrain_code.py "${COMMON[@]}" --model.position_embedding "$act" --seed "$seed" --save "$WORK/$name" \
          > "$WORK/$name.log" 2>&1 &
    fi
  done
  wait
done
$PY - "$WORK" "$ITERS" "$SEEDS" <<'PYEOF'
import json, os, sys
work, iters, seeds = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
print(f"commit {open(os.path.join(work, 'commit.txt')).read().strip()}, {iters} steps, seeds {' '.join(seeds)}")
print("| positions | final validation loss per seed | mean | spread (max - min) |")
print("|---|---|---:|---:|")
for act in ("rope", "learned", "t5"):
    vals = []
    for seed in seeds:
        recs = [json.loads(l) for l in open(os.path.join(work, f"{act}_seed{seed}", "metrics.jsonl"))]
        vals.append([r["loss"] for r in recs if r["kind"] == "valid" and r["iteration"] == iters][-1])
    print(f"| {act} | {', '.join(f'{v:.4f}' for v in vals)} | {sum(vals) / len(vals):.4f} | "
          f"{max(vals) - min(vals):.4f} |")
PYEOF
