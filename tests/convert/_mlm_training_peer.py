"""Runs Megatron-LM's own training code (``megatron.training`` of a checkout at MEGATRON_LM_DIR, tested with
core_v0.16.1, whose ``megatron.core`` is the installed megatron-core==0.16.1's source) on CPU with gloo, for a tiny
GPT (SHAPE below: GQA, SwiGLU, RMSNorm, RoPE, untied, no biases) in the legacy ``--ckpt-format torch`` format, or
with ``--ckpt-format torch_dist`` (their dist_checkpointing save/load, gloo, on CPU) in that one:

    fixtures DIR
        regenerates the committed fixtures (tests/fixtures/megatron_lm_legacy: FIXTURES below) with `save`:
        MEGATRON_LM_DIR=/path/to/Megatron-LM python tests/convert/_mlm_training_peer.py fixtures DIR
    resume OUT --tp TP --pp PP [--dist-opt] [--bf16]
        adds to OUT/record.pt the losses of iterations 3 and 4 after their load_checkpoint of OUT/ckpt (`fixtures`
        does this after each save)
    dist-fixtures DIR
        the same for the torch_dist fixtures (tests/fixtures/megatron_lm_torch_dist: DIST_FIXTURES below):
        MEGATRON_LM_DIR=/path/to/Megatron-LM python tests/convert/_mlm_training_peer.py dist-fixtures DIR
    save OUT --tp TP --pp PP [--dist-opt] [--bf16] [--ckpt-format torch|torch_dist] [--shape default|tiny]
        TP x PP processes: their get_model / setup_model_and_optimizer (GPTModel, DDP, Adam, scheduler), two
        train_step's on fixed batches, their save_checkpoint at iteration 2 (OUT/ckpt), then steps 3 and 4;
        OUT/record.pt: {"losses", "moments" (exp_avg, exp_avg_sq, fp32 param), "step", "rng"}: the losses of iterations 1-4, the Adam moments/step and the RNG states at the save (by
        parameter name, every rank)
    load CKPT OUT --tp TP --pp PP [--dist-opt] [--bf16] [--ckpt-format torch|torch_dist] [--shape default|tiny]
        their load_checkpoint of CKPT (neither --no-load-optim nor --no-load-rng), then steps 3 and 4;
        OUT.pt: {"losses", "moments", "step", "rng", "iteration"} as above, the states as they are right after
        the load

Batches: BATCHES below (seeded), global batch 4 = 2 micro batches of 2; constant learning rate, no dropout, no
gradient clipping (see below). Where their code needs CUDA on a CPU machine, what this does (none of their code is
modified; each is an assignment in this process before their code runs):
- the CPU redirects of tests/convert/_mcore_peer.py (_cpu_shims): torch.cuda.current_device() -> "cpu",
  torch.cuda.synchronize() a no-op, torch.tensor/zeros/empty/ones/full with a CUDA device made on the CPU;
- nn.Module.cuda() returns the module unchanged (get_model moves the model to the current CUDA device), and
  get_model's side CUDA stream for the DDP set-up is a no-op stream (torch.cuda.Stream / current_stream / stream),
  torch.cuda.empty_cache() a no-op;
- Tensor.type() (no arguments) names CPU tensors as CUDA ones ('torch.cuda.BFloat16Tensor'): Megatron-Core's
  mixed-precision optimizers accept only those type strings;
- the CUDA generator is emulated: torch.cuda.get_rng_state/set_rng_state/manual_seed (and megatron's
  _set_cuda_rng_state) keep a 16-byte Philox state (seed, offset) in this process, so their CUDA RNG tracker is
  seeded as on a GPU (model_parallel_cuda_manual_seed, which _set_random_seed calls only when CUDA devices exist,
  is called with the seed it would get) and their save/load of cuda_rng_state and rng_tracker_states runs;
- megatron.core.transformer.custom_layers.batch_invariant_kernels imports triton at its top (megatron/training/
  initialize.py imports it): a stand-in module whose enable_batch_invariant_mode raises if ever called;
- validate_args asks CUDA for the GPU generation when TP > 1 (get_device_arch_version): answered 10 (Blackwell,
  where it skips the CUDA_DEVICE_MAX_CONNECTIONS check);
- gradient clipping asserts CUDA tensors (clip_grads.py): --clip-grad 0;
- loading a distributed-optimizer checkpoint on the torch-Adam path (no Transformer Engine / Apex) fails in their
  DistributedOptimizer._set_main_param_and_optimizer_states (KeyError 'step': torch's Adam keeps a per-parameter
  step that distrib_optim.pt does not hold; their own checkpoints fail the same way): wrapped to keep the step that
  load_state_dict already restored from the param groups.
Their initialize_megatron is not called (it compiles the dataset helpers and fused kernels); its steps that matter
here are: parse_args + validate_args + set_global_variables, torch.distributed (gloo), initialize_model_parallel,
_set_random_seed.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TOTAL_ITERS = 4
SAVE_AT = 2
# small enough that each committed rank file stays well under 200 KB with Adam state and fp32 masters
SHAPE = dict(num_layers=2, hidden_size=16, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=32, vocab=64,
             seq=16)
FIXTURES = {"tp1pp1_fp32": ["--tp", "1", "--pp", "1"], "tp1pp1_bf16": ["--tp", "1", "--pp", "1", "--bf16"],
            "tp2pp2_distopt_bf16": ["--tp", "2", "--pp", "2", "--dist-opt", "--bf16"]}
# --ckpt-format torch_dist: DCP torch.save's every item (~1.3 KB each, and 15 KB for the RNG object), so the
# committed fixture (tests/fixtures/megatron_lm_torch_dist) uses a narrower model to stay under 200 KB in all
SHAPES = {"default": SHAPE, "tiny": dict(SHAPE, hidden_size=8, ffn_hidden_size=8, vocab=16)}
DIST_FIXTURES = {"tp1pp1_fp32": ["--tp", "1", "--pp", "1", "--ckpt-format", "torch_dist", "--shape", "tiny"]}


def batches(vocab: int, seq: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, vocab, (4, seq + 1), generator=g) for _ in range(TOTAL_ITERS)]


def their_argv(tp: int, pp: int, dist_opt: bool, bf16: bool, save: str | None, load: str | None,
               ckpt_format: str = "torch", shape: dict | None = None) -> list[str]:
    s = shape or SHAPE
    argv = ["--num-layers", str(s["num_layers"]), "--hidden-size", str(s["hidden_size"]),
            "--num-attention-heads", str(s["num_attention_heads"]), "--group-query-attention",
            "--num-query-groups", str(s["num_query_groups"]), "--ffn-hidden-size", str(s["ffn_hidden_size"]),
            "--swiglu", "--normalization", "RMSNorm", "--position-embedding-type", "rope",
            "--untie-embeddings-and-output-weights", "--disable-bias-linear", "--seq-length", str(s["seq"]),
            "--max-position-embeddings", str(s["seq"]), "--micro-batch-size", "2", "--global-batch-size", "4",
            "--lr", "1e-3", "--min-lr", "1e-3", "--lr-decay-style", "constant", "--weight-decay", "0.1",
            "--adam-beta2", "0.95", "--train-iters", str(TOTAL_ITERS), "--clip-grad", "0",
            "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp),
            "--transformer-impl", "local", "--use-cpu-initialization", "--no-gradient-accumulation-fusion",
            "--no-masked-softmax-fusion", "--no-bias-swiglu-fusion", "--no-rope-fusion", "--no-persist-layer-norm",
            "--hidden-dropout", "0", "--attention-dropout", "0", "--distributed-backend", "gloo",
            "--tokenizer-type", "NullTokenizer", "--vocab-size", str(s["vocab"] - 1),
            "--make-vocab-size-divisible-by", "1", "--ckpt-format", ckpt_format, "--seed", "1234",
            "--init-method-std", "0.02", "--eval-iters", "0", "--use-mcore-models"]
    argv += ["--bf16"] if bf16 else []
    argv += ["--use-distributed-optimizer"] if dist_opt else []
    argv += ["--save", save, "--save-interval", "1000"] if save else []
    argv += ["--load", load] if load else []
    return argv


# --------------------------------------------------------------------------------------------- CPU redirects
_CUDA_RNG = {"state": None}


def _philox(seed: int, offset: int = 0) -> torch.Tensor:
    return torch.frombuffer(bytearray(struct.pack("<QQ", seed, offset)), dtype=torch.uint8).clone()


def _shims() -> None:
    sys.path.insert(0, HERE)
    from _mcore_peer import _cpu_shims
    _cpu_shims()
    torch.nn.Module.cuda = lambda self, *a, **k: self

    class _Stream:  # get_model's DDP set-up runs on a side CUDA stream
        def __init__(self, *a, **k):
            pass

        def wait_stream(self, *a, **k):
            pass

        def synchronize(self):
            pass

    import contextlib
    torch.cuda.Stream = _Stream
    torch.cuda.current_stream = lambda *a, **k: _Stream()
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.empty_cache = lambda: None
    plain_type = torch.Tensor.type

    def cuda_type(self, dtype=None, non_blocking=False, **kw):  # the optimizers accept 'torch.cuda.*Tensor' only
        if dtype is None and not kw:
            name = plain_type(self)
            return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        return plain_type(self, dtype, non_blocking, **kw)
    torch.Tensor.type = cuda_type
    _CUDA_RNG["state"] = _philox(0)

    def get_state(device="cuda"):
        return _CUDA_RNG["state"].clone()

    def set_state(state, device="cuda", graph_safe=False):
        _CUDA_RNG["state"] = state.detach().clone().to(torch.uint8)

    def manual_seed(seed):
        _CUDA_RNG["state"] = _philox(int(seed))

    torch.cuda.get_rng_state = torch.cuda.random.get_rng_state = get_state
    torch.cuda.set_rng_state = torch.cuda.random.set_rng_state = set_state
    torch.cuda.manual_seed = torch.cuda.random.manual_seed = manual_seed
    name = "megatron.core.transformer.custom_layers.batch_invariant_kernels"
    try:
        import triton  # noqa: F401
    except ImportError:
        stub = types.ModuleType(name)

        def enable_batch_invariant_mode(*a, **k):
            raise RuntimeError("batch-invariant mode needs triton")
        stub.enable_batch_invariant_mode = enable_batch_invariant_mode
        sys.modules[name] = stub
    from megatron.core.tensor_parallel import random as trandom
    trandom._set_cuda_rng_state = set_state
    # Without Transformer Engine / Apex their Adam is torch's, which keeps a per-parameter 'step' in its state; the
    # distributed optimizer's load_parameter_state_from_dp_zero then copies every state key from distrib_optim.pt,
    # which holds no 'step' (KeyError, for their own checkpoints too; on a GPU, FusedAdam keeps the step in its
    # param groups). The step was already restored from the param groups: keep it.
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    set_states = DistributedOptimizer._set_main_param_and_optimizer_states

    def keep_step(self, model_param, tensors):
        group, order = self.model_param_group_index_map[model_param]
        state = self.optimizer.state[self.optimizer.param_groups[group]["params"][order]]
        if "step" in state and "step" not in tensors:
            tensors = {**tensors, "step": state["step"]}
        return set_states(self, model_param, tensors)
    DistributedOptimizer._set_main_param_and_optimizer_states = keep_step


# --------------------------------------------------------------------------------------------- their code
def _setup(rank: int, world: int, argv: list[str], rdzv: str):
    import random

    import numpy as np
    import torch.distributed as dist

    sys.argv = ["pretrain_gpt.py", *argv]
    from megatron.core import mpu
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    from megatron.training.arguments import parse_args, validate_args
    from megatron.training.global_vars import set_global_variables

    import megatron.training.arguments as their_arguments
    their_arguments.get_device_arch_version = lambda: 10  # it asks CUDA for the GPU generation (TP > 1 checks)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0")
    args = parse_args()
    validate_args(args, {})
    set_global_variables(args, build_tokenizer=False)
    from megatron.training.tokenizer.tokenizer import _vocab_size_with_padding
    args.padded_vocab_size = _vocab_size_with_padding(args.vocab_size + 1, args)  # NullTokenizer: ids + EOD
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    mpu.initialize_model_parallel(args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                                  create_gloo_process_groups=True)
    seed = args.seed + 100 * mpu.get_pipeline_model_parallel_rank()  # initialize.py: _set_random_seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    return args


def _model_provider(pre_process=True, post_process=True, vp_stage=None, **_):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.training import get_args
    from megatron.training.arguments import core_transformer_config_from_args

    args = get_args()
    config = core_transformer_config_from_args(args)
    return GPTModel(config, get_gpt_layer_local_spec(normalization="RMSNorm"), vocab_size=args.padded_vocab_size,
                    max_sequence_length=args.max_position_embeddings, pre_process=pre_process,
                    post_process=post_process, position_embedding_type="rope",
                    share_embeddings_and_output_weights=False)


def _forward_step(data_iterator, model):
    from functools import partial

    batch = next(data_iterator)
    tokens, labels = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    pos = torch.arange(tokens.shape[1]).expand_as(tokens)
    causal = torch.triu(torch.ones(1, 1, tokens.shape[1], tokens.shape[1], dtype=torch.bool), diagonal=1)
    out = model(tokens, pos, causal, labels=labels)

    def loss_func(output_tensor):  # pretrain_gpt.py's loss_func without its NaN checks: sum, tokens, report
        losses = output_tensor.view(-1).float()
        loss = losses.sum()
        n = torch.tensor(losses.numel(), dtype=torch.int)
        return loss, n, {"lm loss": torch.cat([loss.clone().detach().view(1), n.view(1).float()])}
    return out, partial(loss_func)


def _moments_and_rng(model, optimizer) -> dict:
    """This rank's Adam state by (unwrapped) parameter name, and its RNG states."""
    import random

    import numpy as np
    from megatron.core import tensor_parallel
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    from megatron.training.utils import unwrap_model

    inner = optimizer.chained_optimizers[0] if hasattr(optimizer, "chained_optimizers") else optimizer
    net = unwrap_model(model[0])
    out = {}
    for name, p in net.named_parameters():
        if isinstance(inner, DistributedOptimizer):
            st = inner._get_main_param_and_optimizer_states(p)
            out[name] = tuple(st[k].clone().reshape(p.shape) for k in ("exp_avg", "exp_avg_sq", "param"))  # DP 1
        else:
            main = getattr(p, "main_param", p)
            st = inner.optimizer.state[main]
            out[name] = (st["exp_avg"].clone(), st["exp_avg_sq"].clone(), main.detach().float().clone())
    steps = {float(s["step"]) for s in inner.optimizer.state.values()}
    rng = {"random_rng_state": random.getstate(), "np_rng_state": np.random.get_state(),
           "torch_rng_state": torch.get_rng_state(), "cuda_rng_state": torch.cuda.get_rng_state(),
           "rng_tracker_states": tensor_parallel.get_cuda_rng_tracker().get_states()}
    return {"moments": out, "step": steps, "rng": rng}


def _worker(rank: int, world: int, mode: str, out: str, ckpt: str | None, argv: list[str], rdzv: str) -> None:
    _shims()
    args = _setup(rank, world, argv, rdzv)
    from megatron.core import mpu
    from megatron.core.enums import ModelType
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.training.checkpointing import save_checkpoint
    from megatron.training.training import setup_model_and_optimizer, train_step
    from megatron.training.utils import unwrap_model

    model, optimizer, scheduler = setup_model_and_optimizer(_model_provider, ModelType.encoder_or_decoder)
    config = unwrap_model(model[0]).config
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = None
    fb = get_forward_backward_func()
    data = batches(args.padded_vocab_size, args.seq_length)
    start = args.iteration
    record = {"losses": {}}

    def micro(i):  # the two micro batches of global batch i (iteration i + 1)
        return iter([data[i][:2], data[i][2:]])

    if mode == "load":
        record.update(_moments_and_rng(model, optimizer))
        record["iteration"] = start
    for i in range(start, TOTAL_ITERS):
        for m in model:
            m.train()
        loss, *_ = train_step(_forward_step, micro(i), model, optimizer, scheduler, config, fb, iteration=i)
        if mpu.is_pipeline_last_stage():
            record["losses"][i + 1] = float(loss["lm loss"])
        args.iteration = i + 1
        if mode == "save" and i + 1 == SAVE_AT:
            save_checkpoint(SAVE_AT, model, optimizer, scheduler, 0)
            record.update(_moments_and_rng(model, optimizer))
    tp, pp = mpu.get_tensor_model_parallel_rank(), mpu.get_pipeline_model_parallel_rank()
    torch.save(record, f"{out}.rank{tp}_{pp}")
    torch.distributed.barrier()


def resume(out: str, flags: list[str]) -> None:
    """Their load_checkpoint of their own checkpoint OUT/ckpt, then steps 3 and 4: the losses a resume of theirs gives
    (record.pt "resumed_losses"; with the distributed optimizer in bf16 they differ from the uninterrupted run's in
    the 5th digit at iteration 4)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.abspath(__file__), "load", os.path.join(out, "ckpt"),
                        os.path.join(tmp, "loaded"), *flags], check=True)
        got = torch.load(os.path.join(tmp, "loaded.pt"), weights_only=False)
    record = torch.load(os.path.join(out, "record.pt"), weights_only=False)
    record["resumed_losses"] = got["losses"]
    torch.save(record, os.path.join(out, "record.pt"))


def main() -> None:
    import torch.multiprocessing as mp

    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["save", "load", "fixtures", "resume", "dist-fixtures"])
    p.add_argument("paths", nargs="+")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--dist-opt", action="store_true")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--ckpt-format", choices=["torch", "torch_dist"], default="torch")
    p.add_argument("--shape", choices=sorted(SHAPES), default="default")
    p.add_argument("--only", nargs="*", help="fixtures: regenerate these only")
    a = p.parse_args()
    root = os.environ.get("MEGATRON_LM_DIR")
    if not root:
        sys.exit("set MEGATRON_LM_DIR to a Megatron-LM checkout (core_v0.16.1)")
    sys.path.insert(0, root)
    if a.mode in ("fixtures", "dist-fixtures"):  # regenerate tests/fixtures/megatron_lm_legacy/<name> (or
        import subprocess  # megatron_lm_torch_dist/<name>; the directory must not exist)
        dest = os.path.abspath(a.paths[0])  # the rendezvous file:// URL needs an absolute path
        for name, flags in (FIXTURES if a.mode == "fixtures" else DIST_FIXTURES).items():
            if a.only and name not in a.only:
                continue
            out = os.path.join(dest, name)
            subprocess.run([sys.executable, os.path.abspath(__file__), "save", out, *flags], check=True)
            resume(out, flags)
            if a.mode == "dist-fixtures":  # the record in torch's legacy serialization: no 64-byte-aligned zip
                rec = os.path.join(out, "record.pt")  # entry per tensor (keeps the fixture under 200 KB)
                torch.save(torch.load(rec, weights_only=False), rec, _use_new_zipfile_serialization=False)
        return
    if a.mode == "resume":
        resume(a.paths[0], sys.argv[3:])
        return
    world = a.tp * a.pp
    if a.mode == "save":
        out = a.paths[0]
        os.makedirs(out)
        ckpt, rec = os.path.join(out, "ckpt"), os.path.join(out, "record")
        argv = their_argv(a.tp, a.pp, a.dist_opt, a.bf16, ckpt, None, a.ckpt_format, SHAPES[a.shape])
    else:
        ckpt, rec = a.paths
        argv = their_argv(a.tp, a.pp, a.dist_opt, a.bf16, None, ckpt, a.ckpt_format, SHAPES[a.shape])
    rdzv = rec + ".rdzv"
    mp.spawn(_worker, args=(world, a.mode, rec, ckpt, argv, rdzv), nprocs=world, join=True)
    merged = {"losses": {}, "moments": {}, "rng": {}, "step": set()}
    for f in sorted(os.listdir(os.path.dirname(os.path.abspath(rec)))):
        base = os.path.basename(rec) + ".rank"
        if f.startswith(base):
            r = torch.load(os.path.join(os.path.dirname(os.path.abspath(rec)), f), weights_only=False)
            merged["losses"].update(r["losses"])
            merged["moments"][f[len(base):]] = r.get("moments")
            merged["rng"][f[len(base):]] = r.get("rng")
            merged["step"] |= r.get("step", set())
            merged["iteration"] = r.get("iteration")
            os.remove(os.path.join(os.path.dirname(os.path.abspath(rec)), f))
    torch.save(merged, rec + ".pt")
    if os.path.exists(rdzv):
        os.remove(rdzv)
    print("losses", merged["losses"], "step", merged["step"])


if __name__ == "__main__":
    main()
