#!/usr/bin/env bash
# Quick start on a CPU: install, build a corpus from this machine's Python standard library, train a code
# tokenizer, tokenize to Megatron .bin/.idx, train the `tiny` preset, show that validation loss fell on held-out
# stdlib files, and print a sample of generated code.
#
#   bash examples/quickstart_cpu.sh            (a few minutes on 2 cores)
#
# Environment knobs: WORK (default runs/quickstart), ITERS (default 300), TOKENIZER_CHARS (characters the tokenizer
# trains on, default 20,000,000), SKIP_INSTALL=1.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-runs/quickstart}
ITERS=${ITERS:-300}
TOKENIZER_CHARS=${TOKENIZER_CHARS:-20000000}
PY=${PYTHON:-python}

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  echo "== installing (torch 2.13.0 CPU wheel, then this package)"
  $PY -m pip install -q torch==2.13.0
  $PY -m pip install -q -e .
fi

mkdir -p "$WORK"
if [[ ! -f "$WORK/corpus/valid.jsonl" ]]; then
  echo "== building the standard-library corpus (file-level train/valid/test split)"
  $PY tools/prepare_stdlib_corpus.py --output-dir "$WORK/corpus"
fi
if [[ ! -f "$WORK/tokenizer/tokenizer.json" ]]; then
  echo "== training a byte-level BPE code tokenizer (vocab 8192)"
  $PY tools/train_tokenizer.py --input "$WORK/corpus/train.jsonl" --vocab-size 8192 \
      --output-dir "$WORK/tokenizer" --max-chars "$TOKENIZER_CHARS"
fi
TOK=(--tokenizer-type HuggingFaceTokenizer --tokenizer-model "$WORK/tokenizer/tokenizer.json")
for split in train valid; do
  if [[ ! -f "$WORK/data/stdlib_${split}_text_document.idx" ]]; then
    echo "== tokenizing the $split split to .bin/.idx"
    $PY tools/preprocess_data.py --input "$WORK/corpus/$split.jsonl" --output-prefix "$WORK/data/stdlib_$split" \
        --json-keys text "${TOK[@]}" --append-eod --workers 2
  fi
done

SAVE="$WORK/ckpt-$(date +%Y%m%d-%H%M%S)"
echo "== training the tiny preset for $ITERS iterations -> $SAVE"
$PY pretrain_code.py --preset tiny "${TOK[@]}" \
    --train-data-path "$WORK/data/stdlib_train_text_document" \
    --valid-data-path "$WORK/data/stdlib_valid_text_document" \
    --train-iters "$ITERS" --eval-interval 50 --eval-iters 8 --log-interval 25 \
    --save "$SAVE" --tensorboard-dir "$SAVE/tensorboard"

echo "== did it learn? (validation loss on held-out standard-library files)"
$PY tools/summarize_run.py --save "$SAVE" --min-drop 0.4

echo "== a sample from the trained model (temperature 0.7, top-p 0.9; greedy decoding of a model this small loops):"
PROMPT=$'def read_lines(path):\n    """Return the lines of a text file."""\n'
printf '%s' "$PROMPT"
$PY tools/generate.py --load "$SAVE" --prompt "$PROMPT" --max-new-tokens 80 --temperature 0.7 --top-p 0.9 \
    --seed 1 --stop '\ndef ' '\nclass '

echo
echo "== done. Checkpoint: $SAVE  (TensorBoard: $SAVE/tensorboard)"
# --load alone takes the run's saved config; flags given beside it override it (here: train further)
echo "== resume: $PY pretrain_code.py --load $SAVE --train-iters $((ITERS + 20))"
