"""Runs Megatron-Core's own code (pip package megatron-core, the test extra) on CPU, in a process of its own:
builds their GPTModel (the shape of tests/fixtures/megatron_lm_ckpt: GQA, SwiGLU, RMSNorm, RoPE, untied, no biases,
local layer spec), and

    build OUT    takes one Adam step with their optimizer (get_megatron_optimizer over their DDP wrapper), saves
                 model and optimizer with their dist_checkpointing.save as Megatron-LM's save_checkpoint lays a
                 torch_dist iteration out ({'model', 'optimizer': their sharded state dicts, 'args',
                 'checkpoint_version', 'iteration'} -> OUT/torch_dist/iter_0000010), the weights in the legacy
                 layout (OUT/legacy), their logits on IDS (OUT/logits.pt) and their optimizer's Adam moments by
                 parameter name (OUT/moments.pt)
    load CKPT OUT [CKPT OUT ...]  loads each CKPT (a torch_dist iteration directory: their
                 dist_checkpointing.load into their model's sharded state dict; or a legacy model_optim_rng.pt:
                 load_state_dict, strict) into a freshly built model and writes their logits on IDS to OUT

Where their code does not run on CPU, and what this does about it (nothing of theirs is modified):
- torch.cuda.current_device() is called for the RoPE frequencies (rotary_pos_embedding.get_emb), attention and
  linear-layer buffers: it is made to return "cpu" here.
- the CUDA RNG tracker's fork (dot_product_attention.forward) needs CUDA RNG states: forked as a no-op (dropout is
  off in eval mode, so no random number is drawn inside it); model_parallel_cuda_manual_seed is not called.
- dist_checkpointing's filesystem writer calls torch.cuda.synchronize(): a no-op here.
- their FP32Optimizer allocates its loss-scale tensor with device='cuda' (optimizer.py): torch.tensor/zeros/empty/
  ones/full map a CUDA device to the CPU here; gradient clipping asserts CUDA tensors (clip_grads.py), so the
  step runs with clip_grad=0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "fixtures", "megatron_lm_ckpt"))
from make_fixture import SHAPE, their_args  # noqa: E402

IDS = torch.randint(0, SHAPE["vocab"], (2, SHAPE["seq"]), generator=torch.Generator().manual_seed(5))


def _cpu_shims() -> None:
    import functools

    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *a, **k: None

    def on_cpu(factory):
        @functools.wraps(factory)
        def make(*a, **k):
            if str(k.get("device", "")).startswith("cuda"):
                k["device"] = "cpu"
            return factory(*a, **k)
        return make

    for name in ("tensor", "zeros", "empty", "ones", "full"):
        setattr(torch, name, on_cpu(getattr(torch, name)))


def build_model(seed: int):
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        dist.init_process_group("gloo", init_method=f"file://{os.environ['MCORE_PEER_RDZV']}", rank=0, world_size=1)
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    tensor_parallel.get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()
    torch.manual_seed(seed)
    s = SHAPE
    cfg = TransformerConfig(num_layers=s["num_layers"], hidden_size=s["hidden_size"],
                            num_attention_heads=s["num_attention_heads"], num_query_groups=s["num_query_groups"],
                            ffn_hidden_size=s["ffn_hidden_size"], use_cpu_initialization=True, gated_linear_unit=True,
                            activation_func=torch.nn.functional.silu, add_bias_linear=False, normalization="RMSNorm",
                            layernorm_epsilon=1e-5, init_method_std=0.02, hidden_dropout=0.0, attention_dropout=0.0)
    model = GPTModel(cfg, get_gpt_layer_local_spec(normalization="RMSNorm"), vocab_size=s["vocab"],
                     max_sequence_length=s["seq"], position_embedding_type="rope",
                     share_embeddings_and_output_weights=False)
    return model.eval()


@torch.no_grad()
def logits(model) -> torch.Tensor:
    pos = torch.arange(IDS.shape[1]).expand_as(IDS)
    causal = torch.triu(torch.ones(1, 1, IDS.shape[1], IDS.shape[1], dtype=torch.bool), diagonal=1)  # True: masked
    return model(IDS, pos, causal).float()


def build(out: str, iteration: int = 10) -> None:
    from megatron.core import dist_checkpointing

    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    model = build_model(1234)
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(), model)
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=0.0), [ddp])
    model.train()
    causal = torch.triu(torch.ones(1, 1, IDS.shape[1], IDS.shape[1], dtype=torch.bool), diagonal=1)
    ddp(IDS, torch.arange(IDS.shape[1]).expand_as(IDS), causal, labels=IDS).float().mean().backward()
    ddp.finish_grad_sync()
    assert opt.step()[0]
    model.eval()
    state = opt.optimizer.state
    os.makedirs(out)
    torch.save({name: (state[p]["exp_avg"].clone(), state[p]["exp_avg_sq"].clone())
                for name, p in model.named_parameters()}, os.path.join(out, "moments.pt"))
    tag = f"iter_{iteration:07d}"
    for kind in ("torch_dist", "legacy"):
        os.makedirs(os.path.join(out, kind, tag))
        with open(os.path.join(out, kind, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write(str(iteration))
    args = their_args()
    args.ckpt_format = "torch_dist"
    msd = model.sharded_state_dict()
    dist_checkpointing.save({"model": msd, "optimizer": opt.sharded_state_dict(msd), "args": args,
                             "checkpoint_version": 3.0, "iteration": iteration}, os.path.join(out, "torch_dist", tag))
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    os.makedirs(os.path.join(out, "legacy", tag, "mp_rank_00"))
    torch.save({"args": their_args(), "checkpoint_version": 3.0, "iteration": iteration, "model": sd},
               os.path.join(out, "legacy", tag, "mp_rank_00", "model_optim_rng.pt"))
    torch.save(logits(model), os.path.join(out, "logits.pt"))


def load(ckpt: str, out: str) -> None:
    model = build_model(4321)  # other initial weights: everything compared comes from the checkpoint
    if os.path.isdir(ckpt):
        from megatron.core import dist_checkpointing

        opt = None
        if "optimizer" in torch.load(os.path.join(ckpt, "common.pt"), weights_only=False):
            from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
            from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

            ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(), model)
            opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=0.0), [ddp])
        msd = model.sharded_state_dict()
        want = {"model": msd, **({"optimizer": opt.sharded_state_dict(msd, is_loading=True)} if opt else {})}
        loaded = dist_checkpointing.load(want, ckpt)
        model.load_state_dict(loaded["model"], strict=True)
        if opt is not None:
            opt.load_state_dict(loaded["optimizer"])
            state = opt.optimizer.state
            torch.save({name: (state[p]["exp_avg"].clone(), state[p]["exp_avg_sq"].clone())
                        for name, p in model.named_parameters()}, out + ".moments")
    else:
        missing, unexpected = model.load_state_dict(torch.load(ckpt, weights_only=False)["model"], strict=False)
        assert [k for k in missing if not k.endswith("_extra_state")] == [] and unexpected == [], (missing,
                                                                                                    unexpected)
    torch.save(logits(model), out)


if __name__ == "__main__":
    _cpu_shims()
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["build", "load"])
    p.add_argument("paths", nargs="+")
    a = p.parse_args()
    if a.mode == "build":
        build(*a.paths)
    else:
        for i in range(0, len(a.paths), 2):
            load(a.paths[i], a.paths[i + 1])
