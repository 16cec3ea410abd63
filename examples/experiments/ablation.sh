#!/usr/bin/env bash
# One-knob ablation on the standard-library corpus at tiny scale, equal compute (preset tiny, ITERS steps of
# 8 x 128 tokens, same data order and LR schedule per seed; activations.sh and positions.sh run through it).
# Arms are "name=flags"; SEEDS seeds per arm; prints the final left-to-right validation loss per seed, the mean
# and the spread, and the commit (also in $WORK/commit.txt).
#
#   bash examples/experiments/ablation.sh block "sequential=--model.block sequential" "parallel=--model.block parallel"
set -euo pipefail
cd "$(dirname "$0")/../.."
TITLE=$1; shift
WORK=${WORK:-runs/activations}
ITERS=${ITERS:-100}
SEEDS=${SEEDS:-"1 2"}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
VOCAB_SIZE=4096 MAX_CHARS=5000000
source examples/experiments/prepare_stdlib.sh
git rev-parse HEAD > "$WORK/commit.txt"
COMMON=(--preset tiny "${TOK[@]}" --train-data-path "$WORK/data/stdlib_train_text_document"
        --valid-data-path "$WORK/data/stdlib_valid_text_document" --seq-length 128 --train-iters "$ITERS"
        --micro-batch-size 8 --global-batch-size 8 --lr-warmup-iters 20 --eval-interval "$ITERS" --eval-iters 8
        --log-interval 50 --training.progress_bar false)
names=()
for seed in $SEEDS; do
  for arm in "$@"; do
    name="${TITLE}_${arm%%=*}"
    [[ $seed == "${SEEDS%% *}" ]] && names+=("${arm%%=*}")
    read -r -a flags <<< "${arm#*=}"
    if [[ ! -f "$WORK/${name}_seed$seed/latest" ]]; then
      rm -rf "${WORK:?}/${name}_seed$seed"
      $PY pretrain_code.py "${COMMON[@]}" "${flags[@]}" --seed "$seed" --save "$WORK/${name}_seed$seed" \
          > "$WORK/${name}_seed$seed.log" 2>&1 &
    fi
  done
  wait
done
$PY - "$WORK" "$ITERS" "$SEEDS" "$TITLE" "${names[@]}" <<'PYEOF'
import json, os, sys
work, iters, seeds, title, arms = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4], sys.argv[5:]
print(f"commit {open(os.path.join(work, 'commit.txt')).read().strip()}, {iters} steps, seeds {' '.join(seeds)}")
print(f"| {title} | final validation loss per seed | mean | spread (max - min) |")
print("|---|---|---:|---:|")
for arm in arms:
    vals = []
    for seed in seeds:
        recs = [json.loads(l) for l in open(os.path.join(work, f"{title}_{arm}_seed{seed}", "metrics.jsonl"))]
        vals.append([r["loss"] for r in recs if r["kind"] == "valid" and r["iteration"] == iters][-1])
    print(f"| {arm} | {', '.join(f'{v:.4f}' for v in vals)} | {sum(vals) / len(vals):.4f} | "
          f"{max(vals) - min(vals):.4f} |")
PYEOF
