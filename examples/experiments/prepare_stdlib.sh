# Sourced by the experiment scripts: the standard-library corpus, a code BPE tokenizer and the Megatron data for
# train/valid under $WORK, each step skipped when its output exists (experiments sharing a WORK share them).
# Needs WORK, PY and the tokenizer's VOCAB_SIZE and MAX_CHARS; sets TOK (the tokenizer flags).
mkdir -p "$WORK"
if [[ ! -f "$WORK/corpus/test.jsonl" ]]; then
  $PY tools/prepare_stdlib_corpus.py --output-dir "$WORK/corpus"
fi
if [[ ! -f "$WORK/tokenizer/tokenizer.json" ]]; then
  $PY tools/train_tokenizer.py --input "$WORK/corpus/train.jsonl" --vocab-size "$VOCAB_SIZE" \
      --output-dir "$WORK/tokenizer" --max-chars "$MAX_CHARS"
fi
TOK=(--tokenizer-type HuggingFaceTokenizer --tokenizer-model "$WORK/tokenizer/tokenizer.json")
for split in train valid; do
  if [[ ! -f "$WORK/data/stdlib_${split}_text_document.idx" ]]; then
    $PY tools/preprocess_data.py --input "$WORK/corpus/$split.jsonl" --output-prefix "$WORK/data/stdlib_$split" \
        --json-keys text "${TOK[@]}" --append-eod --workers 2 --no-progress
  fi
done
