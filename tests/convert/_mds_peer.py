"""Runs Megatron-DeepSpeed's own training code (pretrain_gpt.py's model_provider / forward_step through their
megatron.training.pretrain, DeepSpeed engine, ZeRO-1, save_checkpoint) on CPU with gloo, for the converter tests
and for regenerating the committed fixtures (tests/fixtures/megatron_deepspeed/make_fixtures.py).

    MEGATRON_DEEPSPEED_DIR=/path/to/Megatron-DeepSpeed torchrun --nproc_per_node TP*PP \
        tests/convert/_mds_peer.py --save DIR --tp 2 --pp 2 --precision bf16 --iters 2 [--load DIR --universal]

Their code is not changed. Where it does not run on a CPU-only machine as shipped, this helper redirects from the
outside (each is listed in docs/megatron.md):
1. megatron/training.py imports the ViT kNN monitor (torchvision) at module level; GPT never calls it: a stand-in
   module is registered.
2. megatron/training.py imports deepspeed.compression.compress (removed in DeepSpeed 0.19) for
   --compression-training only: a stand-in module is registered.
3. ParallelAttention.forward slices q, k, v out of the fused projection as strided views and the local
   CoreAttention .view()s them, which fails for any non-contiguous tensor (their CUDA runs take flash attention or
   the rotary path, which copies): CoreAttention gets contiguous copies (the same values).
The model is GPTModelPipe (or GPTModel with --no-pipeline-parallel) with RMSNorm, SwiGLU, learned absolute positions
and untied embeddings: on CPU their LayerNorm is torch.nn.LayerNorm, which GPTModelPipe's final-norm spec calls with
a sequence_parallel argument it does not take, and their rotary path is broken on main (RotaryEmbedding returns
[cos, sin] while apply_rotary_pos_emb takes angles; update_rotary_pos_emb calls .to on that list).
The training data are fixed random token rows (their GPTDataset needs a preprocessed corpus).
"""

import argparse
import json
import os
import sys
import types

import numpy as np
import torch

MDS = os.environ["MEGATRON_DEEPSPEED_DIR"]
sys.path.insert(0, MDS)

# the model (also read by the tests: our equivalent configuration)
MODEL = ["--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2", "--ffn-hidden-size", "32",
         "--seq-length", "16", "--max-position-embeddings", "16", "--tokenizer-type", "NullTokenizer",
         "--vocab-size", "64", "--make-vocab-size-divisible-by", "16", "--normalization", "rmsnorm", "--swiglu",
         "--untie-embeddings-and-output-weights", "--disable-bias-linear", "--hidden-dropout", "0",
         "--attention-dropout", "0"]

GPT_DROPS = {"--normalization", "rmsnorm", "--swiglu", "--untie-embeddings-and-output-weights", "--disable-bias-linear"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--save", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--load", default=None)
    p.add_argument("--universal", action="store_true")
    p.add_argument("--no-pipeline-parallel", action="store_true")
    p.add_argument("--no-load-rng", action="store_true")
    p.add_argument("--gpt", action="store_true", help="GPT-2 style: LayerNorm, GELU, tied embeddings, biases")
    p.add_argument("--resave", default=None, help="with --load: save again with their save_checkpoint right after "
                   "their load_checkpoint, then exit (what was loaded, in their own format)")
    a = p.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # DeepSpeed's CPU accelerator counts "devices" from LOCAL_SIZE (its launcher sets it); Megatron derives each
    # rank's local rank from that count
    os.environ.setdefault("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", "1"))
    ds = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "steps_per_print": 1000,
          "zero_optimization": {"stage": 1}, "bf16": {"enabled": a.precision == "bf16"}, "gradient_clipping": 1.0}
    if a.precision == "bf16":  # Megatron-DeepSpeed's bf16 runs use DeepSpeed's BF16_Optimizer (ZeRO-1 semantics)
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    cfg = os.path.join(a.save + ".ds_config.json")
    os.makedirs(os.path.dirname(os.path.abspath(cfg)), exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        json.dump(ds, open(cfg, "w"))
    dp = world // (a.tp * a.pp)
    model = MODEL if not a.gpt else [f for f in MODEL if f not in GPT_DROPS] + ["--normalization", "layernorm"]
    sys.argv = ["pretrain_gpt.py", *model, "--micro-batch-size", "2", "--global-batch-size", str(4),
                "--train-iters", "8", "--exit-interval", str(a.iters), "--lr", "1e-2", "--lr-decay-style", "constant", "--lr-decay-iters", "8", "--seed", "1234",
                "--tensor-model-parallel-size", str(a.tp), "--pipeline-model-parallel-size", str(a.pp),
                "--deepspeed", "--deepspeed_config", cfg, "--zero-stage", "1", "--save", a.save,
                "--save-interval", "1000", "--log-interval", "1", "--eval-iters", "0", "--eval-interval", "1000",
                "--no-masked-softmax-fusion", "--no-bias-gelu-fusion", "--no-bias-dropout-fusion",
                "--no-gradient-accumulation-fusion", "--use-cpu-initialization", "--distributed-backend", "gloo"]
    sys.argv += ["--bf16"] if a.precision == "bf16" else []
    sys.argv += ["--load", a.load] if a.load else []
    sys.argv += ["--universal-checkpoint"] if a.universal else []
    sys.argv += ["--no-pipeline-parallel"] if a.no_pipeline_parallel else []
    sys.argv += ["--no-load-rng"] if a.no_load_rng else []
    assert dp >= 1

    # redirect 1 and 2 (see the module docstring)
    for name, attrs in (("megatron.model.vision.knn_monitor", ("compute_feature_bank",)),
                        ("deepspeed.compression.compress", ("init_compression", "redundancy_clean"))):
        mod = types.ModuleType(name)
        for attr in attrs:
            setattr(mod, attr, None)
        sys.modules[name] = mod
    from megatron.model import transformer

    core_forward = transformer.CoreAttention.forward  # redirect 3

    def contiguous_core_attention(self, q, k, v, mask):
        return core_forward(self, q.contiguous(), k.contiguous(), v.contiguous(), mask)

    transformer.CoreAttention.forward = contiguous_core_attention

    import pretrain_gpt
    from megatron.core.enums import ModelType
    from megatron.training import pretrain

    class Tokens(torch.utils.data.Dataset):  # what their GPTDataset yields: {"text": seq_length + 1 ids}
        def __init__(self, n):
            self.rows = np.random.default_rng(0).integers(0, 64, size=(n, 17), dtype=np.int64)

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return {"text": self.rows[i]}

    if a.resave:
        import megatron.training as training
        from megatron import get_args
        from megatron.checkpointing import save_checkpoint

        load = training.load_checkpoint

        def load_then_resave(model, optimizer, scheduler, *args, **kwargs):
            iteration = load(model, optimizer, scheduler, *args, **kwargs)
            get_args().save = a.resave
            save_checkpoint(iteration, model, optimizer, scheduler)
            sys.exit(0)

        training.load_checkpoint = load_then_resave
    pretrain(lambda n: (Tokens(max(int(n[0]), 64)), None, None), pretrain_gpt.model_provider,
             ModelType.encoder_or_decoder, pretrain_gpt.forward_step)


if __name__ == "__main__":
    main()
