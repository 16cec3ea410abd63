"""Train phi-1's quality classifier: a random forest on mean-pooled final hidden states of a code model.

    python tools/train_quality_classifier.py --labels labels.jsonl --embedding-model ckpt/ --output quality.joblib

labels.jsonl: one {"text": ..., "label": 0|1} per line (1 = keep). --embedding-model: one of our checkpoint
directories or a local Hugging Face model directory. Prints the held-out accuracy (a stratified, seeded split)
and saves the model; use it in a pipeline with `- classifier: {model: quality.joblib, threshold: 0.5}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", required=True, help='JSONL of {"text", "label": 0|1}')
    ap.add_argument("--embedding-model", required=True, help="our checkpoint directory or a local HF model directory")
    ap.add_argument("--output", required=True, help="where to save the classifier (joblib)")
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trees", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=256, help="embed the first N tokens of each text")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    if os.path.exists(args.output) and not args.overwrite:
        print(f"error: {args.output} exists: choose another --output or pass --overwrite", file=sys.stderr)
        return 1
    if not 0 < args.test_fraction < 1:
        print("error: --test-fraction must be in (0, 1)", file=sys.stderr)
        return 2
    from megatron_code.curation.classifier import ClassifierError, train

    try:
        result = train(args.labels, args.embedding_model, args.output, test_fraction=args.test_fraction,
                       seed=args.seed, n_estimators=args.trees, max_tokens=args.max_tokens)
    except (ClassifierError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"held-out accuracy {result['held_out_accuracy']:.3f} on {result['held_out']} examples "
          f"(trained on {result['train']}); saved {result['model']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
