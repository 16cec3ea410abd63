"""Print training samples of a dataset as the model sees them: raw, then transformed by an objective (causal,
FIM or MIM), decoded, with sentinels visible and the tokens that carry no loss shown in [brackets].

    python tools/inspect_samples.py --data-path runs/x/data/stdlib_train_text_document \\
        --tokenizer-type HuggingFaceTokenizer --tokenizer-model runs/x/tokenizer/tokenizer.json \\
        --objective fim --fim-rate 1.0 --index 3 --count 2 --seq-length 128

Samples are those of the whole dataset read as one split (one pass, sample order by --seed), so sample N is the
same every time; the objective's randomness is rng(seed, epoch, N), as in training. Layout per objective:
causal: the S+1 tokens, the first in brackets (it is never a target); fim: the transformed S+1 tokens, <fim_pad>
targets in brackets; mim: the forward row's S targets (after <l2r>) and the backward row's S targets (after
<r2l>, shown token by token separated by '|', in the order the model reads them).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", required=True, help="dataset prefix (PREFIX.bin / PREFIX.idx)")
    p.add_argument("--tokenizer-type", required=True,
                   choices=["GPT2BPETokenizer", "HuggingFaceTokenizer", "SentencePieceTokenizer"])
    p.add_argument("--tokenizer-model")
    p.add_argument("--vocab-file")
    p.add_argument("--merge-file")
    p.add_argument("--objective", choices=["causal", "fim", "mim"], default="causal")
    p.add_argument("--index", type=int, default=0, help="first sample to show")
    p.add_argument("--count", type=int, default=1, help="number of samples")
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--fim-rate", type=float, default=0.5)
    p.add_argument("--fim-spm-rate", type=float, default=0.5)
    p.add_argument("--fim-fragment-rate", type=float, default=None)
    p.add_argument("--fim-split-sample", default=None, help="file separator token for per-file FIM")
    p.add_argument("--no-raw", action="store_true", help="show only the transformed samples")
    return p.parse_args(argv)


def render(tokenizer, ids, keep, sep: str = "") -> str:
    """Decode token by token; tokens with keep False are wrapped in [brackets] (runs merged)."""
    out, run, run_keep = [], [], None
    for t, k in zip(ids, keep):
        k = bool(k)
        if run and k != run_keep:
            out.append(_piece(tokenizer, run, run_keep, sep))
            run = []
        run.append(int(t))
        run_keep = k
    if run:
        out.append(_piece(tokenizer, run, run_keep, sep))
    return sep.join(out)


def _piece(tokenizer, run, keep, sep):
    text = sep.join(tokenizer.decode([t]) for t in run) if sep else tokenizer.decode(run)
    return text if keep else f"[{text}]"


def show(args, tokenizer, dataset, i: int) -> str:
    import torch

    from megatron_code.data.objectives.fim import FIMConfig, apply_fim
    from megatron_code.data.objectives.mim import mim_batch
    from megatron_code.data.objectives.rng import sample_rng

    tokens = np.asarray(dataset[i]["tokens"], dtype=np.int64)
    epoch = dataset.epoch_of(i)
    lines = [f"===== sample {i} (epoch {epoch}, {len(tokens)} tokens) objective={args.objective}"]
    if not args.no_raw:
        lines += ["----- raw", tokenizer.decode(tokens.tolist())]
    if args.objective == "causal":
        keep = np.ones(len(tokens), dtype=bool)
        keep[0] = False
        lines += ["----- causal (first token is input only)", render(tokenizer, tokens, keep)]
    elif args.objective == "fim":
        cfg = FIMConfig(rate=args.fim_rate, spm_rate=args.fim_spm_rate, fragment_rate=args.fim_fragment_rate,
                        split_token=args.fim_split_sample)
        out, mask = apply_fim(tokens, sample_rng(args.seed, epoch, i), cfg, tokenizer)
        keep = mask > 0
        keep[0] = False
        lines += [f"----- fim (rate {args.fim_rate}, spm {args.fim_spm_rate}; [..] = no loss)",
                  render(tokenizer, out, keep)]
    else:
        sp = tokenizer.special_tokens
        b = mim_batch(torch.from_numpy(tokens[None]), None, sp["<l2r>"], sp["<r2l>"], tokenizer.pad, tokenizer.eod)
        lab, lm = b["labels"].numpy(), b["loss_mask"].numpy() > 0
        lines += ["----- mim forward: <l2r> then targets", "<l2r>" + render(tokenizer, lab[0], lm[0]),
                  "----- mim backward: <r2l> then targets in reading order (right to left), token|token",
                  "<r2l>|" + render(tokenizer, lab[1], lm[1], sep="|"),
                  f"----- agreement positions: {int(b['agree_mask'].sum())} of {lab.shape[1]} "
                  f"(EOD and pad targets excluded)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_code.data.gpt_dataset import DatasetConfigError, GPTDataset
    from megatron_code.data.indexed import IndexedDataset, IndexedDatasetError, IndexedDatasetNotFound
    from megatron_code.data.objectives.fim import FIMError
    from megatron_code.data.tokenizer import TokenizerError, TokenizerFileNotFound, build_tokenizer

    try:
        tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_file, args.merge_file)
        if args.objective == "mim":
            missing = [s for s in ("<l2r>", "<r2l>") if s not in tokenizer.special_tokens]
            if missing:
                raise FIMError(f"the tokenizer lacks {missing}: MIM needs a tokenizer from tools/train_tokenizer.py")
        indexed = IndexedDataset(args.data_path)
        dataset = GPTDataset(indexed, (0, len(indexed)), args.seq_length, args.seed, None)
        if not 0 <= args.index < len(dataset) or args.count < 1:
            raise DatasetConfigError(f"--index {args.index} is outside the {len(dataset)} samples of "
                                     f"{args.seq_length}+1 tokens (and --count must be >= 1)")
        for i in range(args.index, min(len(dataset), args.index + args.count)):
            print(show(args, tokenizer, dataset, i))
    except (TokenizerError, TokenizerFileNotFound, IndexedDatasetError, IndexedDatasetNotFound, DatasetConfigError,
            FIMError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
