"""Convert between our checkpoints and Hugging Face `transformers` model directories.

    # ours (any TP/PP/ZeRO layout) -> transformers (GPT-NeoX, Phi, Llama or Cohere, chosen from the architecture)
    python tools/convert_checkpoint.py --to hf --load CKPT_DIR --save OUT_DIR [--target LlamaForCausalLM]

    # transformers -> ours (a DeepSpeed checkpoint at iteration 0 that pretrain_code.py --load continues)
    python tools/convert_checkpoint.py --from hf --load HF_DIR --save CKPT_DIR [--config JOB.yaml]
    python pretrain_code.py --config CKPT_DIR/iter_0000000/config.yaml --load CKPT_DIR --save NEW_DIR ...

An architecture that no target expresses exactly is refused with a message saying why. Errors a user can cause end
with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


# Megatron formats (megatron_code/convert/megatron_lm.py; docs/megatron.md)
FOREIGN = ["megatron-lm", "megatron-deepspeed", "ds-universal"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--to", choices=["hf"] + FOREIGN, help="export one of our checkpoints")
    way.add_argument("--from", dest="from_", choices=["hf"] + FOREIGN,
                     help="import a transformers directory or a Megatron-LM checkpoint directory")
    p.add_argument("--load", required=True, help="source: our checkpoint dir (--to) or a transformers dir (--from)")
    p.add_argument("--save", required=True, help="destination directory")
    p.add_argument("--target", default=None, help="force a transformers architecture (export only)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="export only: tensor dtype (float32 is exact; the others are rounded once)")
    p.add_argument("--no-tokenizer", action="store_true", help="export only: write the model without tokenizer files")
    p.add_argument("--config", default=None,
                   help="import only: a job YAML whose non-model sections (precision, ZeRO, batch, optimizer) the "
                        "new checkpoint is written with (its model section is replaced by the imported one)")
    p.add_argument("--overwrite", action="store_true", help="export only: write into a --save directory that is not "
                   "empty (files of the same name are replaced)")
    p.add_argument("--qkv-layout", choices=["blocks", "per-head"], default="blocks",
                   help="megatron-deepspeed only: fused QKV rows as current Megatron-DeepSpeed splits them ([q; k; v] "
                        "blocks per TP shard) or Megatron-LM's per-head order (older Megatron-DeepSpeed)")
    p.add_argument("--ckpt-format", choices=["torch", "torch_dist"], default="torch",
                   help="--to megatron-lm: the legacy per-rank files (torch) or the distributed checkpoint "
                        "(torch_dist: global tensors, loads at any TP x PP; --tensor/--pipeline-model-parallel-size "
                        "name the layout whose RNG state it carries); --from reads either")
    p.add_argument("--use-distributed-optimizer", action="store_true",
                   help="--to megatron-lm --ckpt-format torch: write the Adam state as Megatron-LM's distributed "
                        "optimizer saves it (distrib_optim.pt; load with --use-distributed-optimizer)")
    p.add_argument("--no-load-optim", action="store_true",
                   help="--from megatron-deepspeed / megatron-lm: import the weights only (Megatron-DeepSpeed's ZeRO "
                        "optimizer shards are otherwise converted through DeepSpeed's ds_to_universal; Megatron-LM's "
                        "Adam state is read as its optimizer wrote it)")
    p.add_argument("--tensor-model-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from megatron_code.config.base import ConfigError
    from megatron_code.convert import hf

    try:
        if args.to in FOREIGN or args.from_ in FOREIGN:
            return _megatron(args)
        if args.to:
            if args.config or args.tensor_model_parallel_size != 1 or args.pipeline_model_parallel_size != 1:
                raise ConfigError("--config / --tensor-model-parallel-size / --pipeline-model-parallel-size apply "
                                  "to --from hf only (export reads any layout by itself)")
            if os.path.exists(args.save) and (not os.path.isdir(args.save) or os.listdir(args.save)) \
                    and not args.overwrite:
                raise ConfigError(f"--save {args.save} is not an empty directory: the export would replace or mix "
                                  f"with what is there; choose a new directory, or pass --overwrite")
            target = hf.export_checkpoint(args.load, args.save, args.target, with_tokenizer=not args.no_tokenizer,
                                         dtype=args.dtype)
            print(f"exported {args.load} -> {args.save} as {target}")
        else:
            base = None
            if args.config:
                from megatron_code.config.job import JobConfig

                if not os.path.isfile(args.config):
                    raise ConfigError(f"--config {args.config}: file not found")
                base = JobConfig.load(args.config)
            path = hf.import_to_checkpoint(args.load, args.save, args.tensor_model_parallel_size,
                                           args.pipeline_model_parallel_size, base_job=base)
            print(f"imported {args.load} -> {path}")
            print(f"continue with: python pretrain_code.py --config {os.path.join(path, 'config.yaml')} "
                  f"--load {args.save} --save NEW_DIR ...")
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _megatron(args) -> int:
    """--from/--to megatron-lm: weights, iteration and consumed samples at any TP x PP on either side."""
    from megatron_code.convert import megatron_deepspeed as mds
    from megatron_code.convert import megatron_lm as mlm

    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    fmt = args.from_ or args.to
    if args.to and args.ckpt_format == "torch_dist" and fmt != "megatron-lm":
        raise mlm.MegatronCheckpointError("--ckpt-format torch_dist is Megatron-LM's distributed checkpoint: use it "
                                          "with --to megatron-lm")
    if args.use_distributed_optimizer and (args.to != "megatron-lm" or args.ckpt_format != "torch"):
        raise mlm.MegatronCheckpointError("--use-distributed-optimizer applies to --to megatron-lm --ckpt-format torch "
                                          "only (an import reads distrib_optim.pt by itself)")
    if args.from_ == "ds-universal":
        from megatron_code.convert import ds_universal
        from megatron_code.convert import megatron_deepspeed_universal as mdsu

        folder = ds_universal.find_universal(args.load)
        client = mdsu.client_state(folder)  # a Megatron-DeepSpeed run's folder: its names and args
        job, state = (mdsu.read_megatron_deepspeed_universal(folder, client, args.qkv_layout) if client is not None
                      else ds_universal.read_ds_universal(args.load))
        if client is not None and args.config:
            from megatron_code.config.job import JobConfig

            base = JobConfig.load(args.config)
            base.model = job.model
            job, args.config = base, None
        if job is None and not args.config:
            raise mlm.MegatronCheckpointError(f"{args.load} carries no job config (not written from one of our "
                                              f"checkpoints): pass --config JOB.yaml describing the model")
        if args.config:
            from megatron_code.config.job import JobConfig
            job = JobConfig.load(args.config)
        path = mlm.write_ours(job, state, args.save)
        print(f"imported {args.load} (DeepSpeed universal, {'with' if state.exp_avg else 'without'} Adam moments) "
              f"-> {path}; it loads at any TP x PP x ZeRO layout")
        return 0
    if args.from_:
        job, state = (mlm.read_megatron_lm(args.load, weights_only=args.no_load_optim) if fmt == "megatron-lm" else
                      mds.read_megatron_deepspeed(args.load, args.qkv_layout, load_optim=not args.no_load_optim))
        if args.config:
            from megatron_code.config.job import JobConfig

            base = JobConfig.load(args.config)
            base.model = job.model
            job = base
        path = mlm.write_ours(job, state, args.save)
        it = state.client_state["iteration"]
        print(f"imported {args.load} ({fmt}, {state.client_state['imported_from'].split('(')[-1].rstrip(')')}) "
              f"-> {path} at iteration {it}")
        fresh = state.exp_avg is None  # Megatron-LM and Megatron-DeepSpeed ZeRO saves carry the Adam state
        print(f"continue with: python pretrain_code.py --config {os.path.join(path, 'config.yaml')} --load "
              f"{args.save}{' --no-load-optim' if fresh else ''} --save NEW_DIR ... "
              f"({'Adam moments start fresh' if fresh else 'with its Adam state'})")
        return 0
    from megatron_code.training.checkpoint import load_consolidated, resolve_checkpoint

    if fmt == "ds-universal":
        from megatron_code.convert import ds_universal
        from megatron_code.parallel.reshard import read_full_state
        from megatron_code.training.checkpoint import load_job_config

        root, tag = resolve_checkpoint(args.load)
        job = load_job_config(root, tag)
        state = read_full_state(os.path.join(root, tag), job)
        tok = os.path.join(root, tag, "tokenizer")
        path = ds_universal.write_ds_universal(job, state, args.save, tok if os.path.isdir(tok) else None)
        print(f"exported {args.load} -> {path} (DeepSpeed universal; "
              f"{'with' if state.exp_avg else 'without'} Adam moments)")
        return 0

    job, sd, _ = load_consolidated(args.load)
    root, tag = resolve_checkpoint(args.load)
    with open(os.path.join(root, tag, "meta.json")) as f:
        meta = json.load(f)
    it, consumed = int(meta.get("iteration") or 0), int(meta.get("consumed_samples") or 0)
    from megatron_code.parallel.reshard import read_full_state

    full = read_full_state(os.path.join(root, tag), job, opt_order=_adam_order(job))  # the Adam state, if saved
    if fmt == "megatron-lm":
        optim = ({"exp_avg": full.exp_avg, "exp_avg_sq": full.exp_avg_sq} if full.exp_avg is not None else None)
        if args.ckpt_format == "torch_dist":
            from megatron_code.convert import megatron_torch_dist as mtd

            path = mtd.write_torch_dist(job, sd, args.save, iteration=it, consumed=consumed, optim=optim,
                                        step=full.step, client_state=full.client_state, tp=tp, pp=pp)
            print(f"exported {args.load} -> {path} (Megatron-LM torch_dist, {'with' if optim else 'without'} Adam "
                  f"state, RNG state for TP{tp} x PP{pp}; load with --ckpt-format torch_dist at any TP x PP"
                  f"{'' if optim else ' with --no-load-optim'}: Megatron-LM restores the RNG at TP{tp} x PP{pp} "
                  f"and ignores it at other layouts)")
            return 0
        path = mlm.write_megatron_lm(job, sd, args.save, tp=tp, pp=pp, iteration=it, consumed=consumed, optim=optim,
                                     step=full.step, client_state=full.client_state,
                                     distributed_optimizer=args.use_distributed_optimizer)
        print(f"exported {args.load} -> {path} (Megatron-LM legacy layout, TP{tp} x PP{pp}, "
              + (f"Adam state as the {'distributed' if args.use_distributed_optimizer else 'non-distributed'} "
                 f"optimizer's, RNG state" if optim else "RNG state, no optimizer state: load with --no-load-optim")
              + "; load with --ckpt-format torch --use-mcore-models --transformer-impl local"
              + (" --use-distributed-optimizer" if args.use_distributed_optimizer else "") + ")")
    else:
        path = mds.write_megatron_deepspeed(job, sd, args.save, tp=tp, pp=pp, iteration=it, consumed=consumed,
                                            qkv_layout=args.qkv_layout, optim=full if full.exp_avg else None)
        print(f"exported {args.load} -> {path} (Megatron-DeepSpeed, TP{tp} x PP{pp}"
              + (", --no-pipeline-parallel" if pp == 1 else "") + "; weights only: --no-load-optim --no-load-rng)")
        if full.exp_avg:
            print(f"with the Adam state: {args.save}/global_step{it}_universal (load at any TP x PP with "
                  f"--load {args.save} --universal-checkpoint --no-load-rng)")
    return 0


def _adam_order(job):
    """Parameter names in the optimizer's order (a ZeRO-0 save keys Adam state by position); None at TP > 1."""
    import torch

    from megatron_code.model import GPT
    from megatron_code.training.optimizer import param_groups

    if job.parallel.tensor_parallel != 1:
        return None
    with torch.device("meta"):
        meta = GPT(job.model)
    names = {id(p): n for n, p in meta.named_parameters()}
    return [names[id(p)] for g in param_groups(meta, job.optim.weight_decay, job.optim.decoupled_lr is not None)
            for p in g["params"]]


if __name__ == "__main__":
    sys.exit(main())
