"""Hugging Face conversion, both ways: our checkpoints <-> `transformers` model directories.

Export (:func:`export_checkpoint`): read one of our checkpoints in any layout through
``training.checkpoint.load_consolidated`` (TP/PP/ZeRO merged there), pick the exact target architecture
(keymaps.choose_target; anything inexact is refused), write ``model.safetensors`` (fp32), ``config.json`` with
``architectures`` and a ``"megatron_code"`` record (our full ModelConfig, incl. the padded vocab size),
``generation_config.json`` (eos/bos = our EOD, pad = ``<pad>``) and the tokenizer files. The directory loads with
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` and no custom code.

Import (:func:`import_to_checkpoint`): read a transformers directory of a supported architecture, map it to our
tensors and write one of our DeepSpeed checkpoints at iteration 0 (fresh optimizer state, zero consumed samples)
plus config.yaml and the tokenizer, so ``pretrain_code.py --config SAVE/iter_0000000/config.yaml --load SAVE``
continues pretraining. The checkpoint is written by a real DeepSpeed engine built in-process at world size 1, so
its files are exactly what the trainer's ``--load`` expects.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
import shutil

import torch

from ..config.base import ConfigError
from ..config.model import ModelConfig
from ..parallel import deepspeed_compat as dsc
from . import remote
from .keymaps import (REMOTE, UnsupportedArchitecture, choose_target, from_hf_config, from_hf_state_dict,
                      hf_config_kwargs, to_hf_state_dict)
from .tokenizer_export import export_tokenizer, import_tokenizer


log = logging.getLogger(__name__)
SENTINELS = ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<l2r>", "<r2l>")


class ConversionError(ConfigError):
    """A conversion cannot be done as asked (bad directory, missing files, unsupported layout)."""


# ------------------------------------------------------------------------------------------------ export
def _config_class(target: str):
    transformers = _transformers()
    name = "GPT2Config" if target == "GPT2LMHeadModel" else target.replace("ForCausalLM", "Config")
    return getattr(transformers, name)


def _transformers():
    """The transformers module, or a ConversionError naming the extra that installs it."""
    try:
        import transformers
    except ModuleNotFoundError:
        raise ConversionError("Hugging Face conversion needs the transformers package: pip install "
                              "'megatron_code[hf]' (or pip install transformers safetensors)") from None
    try:
        import safetensors  # noqa: F401
    except ModuleNotFoundError:
        raise ConversionError("Hugging Face conversion needs the safetensors package: pip install "
                              "'megatron_code[hf]' (or pip install safetensors)") from None
    return transformers


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def ordinary_norm_gains(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> tuple[ModelConfig, dict]:
    """(cfg, sd) with zero-centred norm gains (--apply-layernorm-1p: stored w, applied 1 + w) written as ordinary
    gains w + 1 (in fp32): the same model for code that knows no zero-centred norm."""
    if not cfg.norm_zero_centered:
        return cfg, sd
    gain = re.compile(r"(^|\.)(norm1|norm2|final_norm)\.weight$")
    sd = {k: v.float() + 1.0 if gain.search(k) else v for k, v in sd.items()}
    return dataclasses.replace(cfg, norm_zero_centered=False), sd


def export_model(cfg: ModelConfig, state_dict: dict[str, torch.Tensor], out_dir: str, tokenizer=None,
                 target: str | None = None, dtype: str = "float32", objective: str = "causal") -> str:
    """Write a transformers model directory for our (full, single-device) `state_dict`. Returns the target name.

    Only the true `cfg.vocab_size` rows of the embedding/head are written (policy in keymaps' docstring); the
    padded size is recorded in config.json["megatron_code"]["padded_vocab_size"]. `dtype` "float32" (exact; the
    default) or "bfloat16"/"float16" (rounded once, for serving).

    `objective` (the checkpoint's training objective) makes the export generate the way the model was trained
    (inference/objective.py): for MIM the tokenizer prefixes ``<l2r>`` (add_special_tokens, its post-processor) and
    generation_config's bos is ``<l2r>``; the objective and the FIM/MIM sentinel ids are recorded in
    generation_config.json.

    Refuses (UnsupportedArchitecture) when no target expresses `cfg` exactly; `target` forces one."""
    if cfg.vocab_size is None:
        raise ConversionError("model.vocab_size is unknown: the checkpoint's config must record it")
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    cfg, state_dict = ordinary_norm_gains(cfg, state_dict)
    target = choose_target(cfg, target)
    hf_sd = {k: v.to(DTYPES[dtype]) for k, v in to_hf_state_dict(cfg, state_dict, target).items()}
    kwargs = hf_config_kwargs(cfg, target)
    kwargs["dtype"] = dtype
    eod = tokenizer.eod if tokenizer is not None else None
    pad = tokenizer.pad if tokenizer is not None else None
    kwargs.update(bos_token_id=eod, eos_token_id=eod, pad_token_id=pad,
                  megatron_code={**cfg.to_dict(), "padded_vocab_size": cfg.padded_vocab_size})
    transformers = _transformers()
    if target == REMOTE:
        kwargs["auto_map"] = dict(remote.AUTO_MAP)
        hf_config = None
    else:
        hf_config = _config_class(target)(**kwargs)
    from ..inference.objective import lead_token

    lead = lead_token(objective)
    gen = dict(bos_token_id=eod, eos_token_id=eod, pad_token_id=pad, megatron_code_objective=objective)
    if tokenizer is not None:
        gen.update({f"{t.strip('<>')}_token_id": tokenizer.special_tokens[t] for t in SENTINELS
                    if t in tokenizer.special_tokens})
        if lead is not None:
            if lead not in tokenizer.special_tokens:
                raise ConversionError(f"a {objective} model generates after {lead}, which its tokenizer lacks")
            gen["bos_token_id"] = tokenizer.special_tokens[lead]
    if tokenizer is not None:  # first: a tokenizer that cannot be exported stops us before any file is written
        export_tokenizer(tokenizer, out_dir, cfg.max_position_embeddings, lead=lead)
    os.makedirs(out_dir, exist_ok=True)
    from safetensors.torch import save_file

    save_file(hf_sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    if hf_config is not None:
        hf_config.save_pretrained(out_dir)
    else:  # our own modeling code next to the weights, named by auto_map (loads with trust_remote_code=True)
        for name in remote.FILES:
            shutil.copyfile(os.path.join(remote.DIR, name), os.path.join(out_dir, name))
        record = {"model_type": "megatron_code", "transformers_version": transformers.__version__, **kwargs}
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
    GenerationConfig = transformers.GenerationConfig

    GenerationConfig(**gen).save_pretrained(out_dir)
    return target


def export_checkpoint(ckpt_dir: str, out_dir: str, target: str | None = None, with_tokenizer: bool = True,
                      dtype: str = "float32") -> str:
    """Export one of our checkpoints (any layout; SAVE or SAVE/iter_XXXXXXX) to `out_dir`. Returns the target.
    `with_tokenizer=False` writes the model only (e.g. for a SentencePiece tokenizer, which is not exportable)."""
    from ..data.tokenizer import build_tokenizer, load_tokenizer
    from ..training.checkpoint import load_consolidated

    _transformers()  # before reading a large checkpoint: say which extra is missing
    job, state, tok_dir = load_consolidated(ckpt_dir)
    masters = fp32_master_weights(ckpt_dir, job)
    if masters is not None:  # flat pieces take the shapes of the model's tensors
        state = {k: masters[k].view(v.shape) if k in masters else v for k, v in state.items()}
    tokenizer = None
    if tok_dir:
        tokenizer = load_tokenizer(tok_dir)
    elif job.data.tokenizer_type:
        d = job.data
        tokenizer = build_tokenizer(d.tokenizer_type, d.tokenizer_model, d.vocab_file, d.merge_file)
    cfg = job.model
    if cfg.vocab_size is None and tokenizer is not None:
        cfg.vocab_size = tokenizer.vocab_size
    if cfg.position_embedding != "learned" and job.data.seq_length > cfg.max_position_embeddings:
        # RoPE accepts a longer --seq-length than --max-position-embeddings (no tensor depends on it): the exported
        # config records the context the model was trained on, so Hugging Face tools do not cut it short.
        log.warning("trained with --seq-length %d > --max-position-embeddings %d: the export records "
                    "max_position_embeddings=%d", job.data.seq_length, cfg.max_position_embeddings, job.data.seq_length)
        cfg.max_position_embeddings = job.data.seq_length
    return export_model(cfg, state, out_dir, tokenizer if with_tokenizer else None, target, dtype,
                        objective=job.objective.objective)


def fp32_master_weights(ckpt_dir: str, job) -> dict[str, torch.Tensor] | None:
    """The fp32 master weights of a bf16/fp16 run (None for an fp32 run, whose weights are the masters). The
    model states of a mixed-precision run hold the weights rounded to 16 bits; training steps the fp32 masters,
    which the export writes instead (rounding once more, to --dtype, only if asked):

    - ZeRO-1/2: the flat fp32 partitions of every DP rank; ZeRO-3: its fp32 flat groups; pipelines at ZeRO-0 with
      bf16: the bf16_zero_pp_rank files (all read by parallel/reshard.read_full_state);
    - bf16 with DeepSpeed's BF16_Optimizer (bf16 ZeRO-1): per TP rank, the bf16_zero_pp_rank files;
    - ZeRO-0 without a pipeline: DeepSpeed's FP16_Optimizer / FP16_UnfusedOptimizer (fp16, and bf16 without ZeRO)
      save the fp32 masters in each TP rank's model-states file, one flat tensor per parameter group
      (`fp32_groups_flat`) or one per parameter (`fp32_groups`), in the optimizer's order
      (training/optimizer.param_groups of that rank's tensor-parallel shard), rebuilt here on the meta device.
    Tensor-parallel masters are per-rank shards, merged like the weights (parallel.tensor_parallel.merge_tp_shards).
    A checkpoint saved without optimizer state has no masters: its 16-bit weights are exported, with a warning."""
    if job.training.precision == "fp32":
        return None
    from ..parallel.reshard import FULL_FILE, read_full_state
    from ..training.checkpoint import resolve_checkpoint

    root, tag = resolve_checkpoint(ckpt_dir)
    d = os.path.join(root, tag)
    p = job.parallel
    if os.path.exists(os.path.join(d, FULL_FILE)) or p.zero_stage == 3:
        return None  # stored (full file) or read (zero_to_fp32) in fp32 already
    tp = p.tensor_parallel
    bf16_files = [sorted(glob.glob(os.path.join(d, dsc.zero_optim_file("*", t, bf16=True)))) for t in range(tp)]
    if bf16_files[0] and p.pipeline_parallel == 1:
        if not all(bf16_files):
            raise ConversionError(f"{d}: bf16 optimizer files are missing for some of its {tp} tensor-parallel "
                                  f"ranks: the checkpoint is incomplete")
        return _merge_tp_masters(job, [_bf16_optimizer_masters(files) for files in bf16_files])
    if p.zero_stage in (1, 2) or p.pipeline_parallel > 1:
        try:
            return {k.removeprefix("module."): v.float() for k, v in read_full_state(d, job).module.items()}
        except (FileNotFoundError, KeyError, ValueError) as exc:
            log.warning("%s: no fp32 master weights readable (%s): exporting the %s weights", d, exc,
                        job.training.precision)
            return None
    shards = []
    for t in range(tp):
        sd = torch.load(os.path.join(d, dsc.model_states_file(t)), map_location="cpu", weights_only=False)
        flats = dsc.saved_zero0_masters(sd)
        if not flats:
            log.warning("%s holds no optimizer state (saved without it): exporting its %s weights, not fp32 "
                        "masters", d, job.training.precision)
            return None
        shards.append(_split_zero0_groups(job, t, flats, d))
    return _merge_tp_masters(job, shards)


def _tp_meta_model(job, tp_rank: int):
    """A meta-device GPT sharded as tensor-parallel rank `tp_rank` of the run (no memory, no processes)."""
    from ..model import GPT

    with torch.device("meta"):
        meta = GPT(job.model)
    tp = job.parallel.tensor_parallel
    if tp > 1:
        from ..parallel.groups import ParallelGroups
        from ..parallel.plans import plan_for
        from ..parallel.tensor_parallel import apply_tensor_parallel

        apply_tensor_parallel(meta, plan_for(job.model, tp), ParallelGroups.virtual(tp=tp, rank=tp_rank))
    return meta


def _split_zero0_groups(job, tp_rank: int, flats: list[torch.Tensor], d: str) -> dict[str, torch.Tensor]:
    """{name: fp32 tensor of TP rank `tp_rank`'s shard} from its flat ZeRO-0 master groups."""
    from ..training.optimizer import param_groups

    meta = _tp_meta_model(job, tp_rank)
    names = {id(q): n for n, q in meta.named_parameters()}
    decoupled = job.optim.decoupled_lr is not None
    groups = [[(names[id(q)], q.shape) for q in g["params"]]
              for g in param_groups(meta, job.optim.weight_decay, decoupled=decoupled)]
    if len(groups) != len(flats) or any(sum(s.numel() for _, s in g) != f.numel() for g, f in zip(groups, flats)):
        raise ConversionError(f"{d}: the saved fp32 master groups of tensor-parallel rank {tp_rank} do not match "
                              f"the model's parameter groups")
    out = {}
    for group, flat in zip(groups, flats):
        offset = 0
        for name, shape in group:
            out[name] = flat[offset:offset + shape.numel()].view(shape).float().clone()
            offset += shape.numel()
    return out


def _merge_tp_masters(job, shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-TP-rank master shards (flat pieces or shaped) -> full tensors, merged like the weights."""
    tp = job.parallel.tensor_parallel
    if tp == 1:
        return shards[0]
    from ..parallel.tensor_parallel import merge_tp_shards, partition_spec

    shaped = []
    for t, shard in enumerate(shards):
        local = dict(_tp_meta_model(job, t).named_parameters())
        shaped.append({k: v.view(local[k].shape) for k, v in shard.items()})
    return merge_tp_shards(shaped, partition_spec(job.model, tp))


def _bf16_optimizer_masters(files: list[str]) -> dict[str, torch.Tensor]:
    """fp32 weights from DeepSpeed's BF16_Optimizer files (bf16 with ZeRO-1 here): per parameter group each DP
    rank's flat fp32 partition, and 'param_slice_mappings' saying where each parameter's piece lies in it; a
    parameter split between ranks is its pieces in rank order."""
    pieces: dict[str, list[torch.Tensor]] = {}
    for f in sorted(files, key=lambda path: dsc.zero_file_dp_rank(os.path.basename(path))):
        for name, piece in dsc.bf16_optimizer_pieces(torch.load(f, map_location="cpu", weights_only=False)):
            pieces.setdefault(name.removeprefix("module."), []).append(piece)
    return {name: torch.cat(parts).float() for name, parts in pieces.items()}


# ------------------------------------------------------------------------------------------------ import
def _read_hf_config(hf_dir: str):
    """The directory's transformers config. Our own exported layout (model_type megatron_code) is read from its
    JSON without executing the directory's code: the import needs only the recorded architecture."""
    with open(os.path.join(hf_dir, "config.json")) as f:
        raw = json.load(f)
    if raw.get("model_type") == "megatron_code":
        from types import SimpleNamespace

        return SimpleNamespace(**raw)
    return _transformers().AutoConfig.from_pretrained(hf_dir)


def read_hf_state_dict(hf_dir: str) -> dict[str, torch.Tensor]:
    """All tensors of a transformers directory (model*.safetensors, else pytorch_model*.bin), as stored."""
    files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
    sd: dict[str, torch.Tensor] = {}
    if files:
        from safetensors.torch import load_file

        for f in files:
            sd.update(load_file(f))
    else:
        files = sorted(glob.glob(os.path.join(hf_dir, "pytorch_model*.bin")))
        if not files:
            raise ConversionError(f"{hf_dir} has no *.safetensors or pytorch_model*.bin weights")
        for f in files:
            sd.update(torch.load(f, map_location="cpu", weights_only=True))
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def import_model(hf_dir: str):
    """(target, our ModelConfig, our full state dict, our Tokenizer or None) from a transformers directory."""
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise ConversionError(f"{hf_dir} has no config.json: pass a transformers model directory to --load")
    _transformers()
    hf_cfg = _read_hf_config(hf_dir)
    sd = read_hf_state_dict(hf_dir)
    target, cfg = from_hf_config(hf_cfg, sd)
    state = from_hf_state_dict(cfg, sd, target)
    tokenizer = import_tokenizer(hf_dir)
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise ConversionError(f"{hf_dir}: tokenizer has {tokenizer.vocab_size} tokens but the model only "
                              f"{cfg.vocab_size} rows")
    return target, cfg, state, tokenizer


def _check_loads(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> None:
    from ..model import GPT

    with torch.device("meta"):
        model = GPT(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:  # a bug in a key map, not a user error
        raise RuntimeError(f"key map mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")


def build_job(cfg: ModelConfig, base_job=None, tokenizer_path: str | None = None):
    """The JobConfig saved with an imported checkpoint: `base_job` (or defaults) with our model section."""
    from ..config.job import JobConfig

    job = base_job if base_job is not None else JobConfig()
    job.model = cfg
    job.training.load = None
    if job.data.seq_length > cfg.max_position_embeddings:
        job.data.seq_length = cfg.max_position_embeddings
    if tokenizer_path:
        job.data.tokenizer_type = "HuggingFaceTokenizer"
        job.data.tokenizer_model = tokenizer_path
    return job


def import_to_checkpoint(hf_dir: str, save_dir: str, tensor_parallel: int = 1, pipeline_parallel: int = 1,
                         base_job=None) -> str:
    """Write one of our checkpoints (iteration 0) for a transformers directory. Returns the checkpoint directory
    (SAVE/iter_0000000). Refuses a non-empty `save_dir` holding checkpoints."""
    from ..training.checkpoint import read_latest, tag_for

    if os.path.isdir(save_dir) and read_latest(save_dir) is not None:
        raise ConversionError(f"--save {save_dir} already holds a checkpoint: choose an empty directory")
    target, cfg, state, tokenizer = import_model(hf_dir)
    if tokenizer is None:
        log.warning("%s: no tokenizer.json with an '<|endoftext|>' token; the checkpoint is written without a "
                    "tokenizer: pass --tokenizer-type/--tokenizer-model when training from it", hf_dir)
    _check_loads(cfg, state)
    final_tok = os.path.join(os.path.abspath(save_dir), tag_for(0), "tokenizer", "tokenizer.json")
    job = build_job(cfg, base_job, final_tok if tokenizer is not None else None)
    job.parallel.tensor_parallel = job.parallel.pipeline_parallel = 1
    job.validate()
    if tensor_parallel * pipeline_parallel == 1:
        return _save_with_engine(job, cfg, state, tokenizer, save_dir)
    return _save_resharded(job, cfg, state, tokenizer, save_dir, tensor_parallel, pipeline_parallel)


def _save_resharded(job, cfg, state, tokenizer, save_dir: str, tp: int, pp: int) -> str:
    """Write the world-size-1 checkpoint to a scratch directory, then let the resharding tool turn it into a
    layout-free checkpoint configured for TP x PP (loaded at that layout by the trainer)."""
    import tempfile

    try:
        from ..parallel.reshard import reshard_to_full
    except ImportError:
        raise ConversionError("importing straight into a TP/PP layout needs the resharding tool "
                              "(parallel/reshard.py, tools/reshard_checkpoint.py), which this version lacks: import "
                              "with --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1") from None
    from ..training.optimizer import param_groups

    os.makedirs(save_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=save_dir, prefix=".import-") as scratch:
        tag_dir = _save_with_engine(job, cfg, state, tokenizer, scratch)
        from ..model import GPT

        with torch.device("meta"):  # ZeRO-0 Adam state is keyed by position in build_optimizer's order
            meta_model = GPT(cfg)
        names = {id(p): n for n, p in meta_model.named_parameters()}
        order = [names[id(p)] for g in param_groups(meta_model, job.optim.weight_decay) for p in g["params"]]
        return reshard_to_full(tag_dir, job, save_dir, tp, pp, opt_order=order)


def _fresh_adam_state(optimizer: torch.optim.Optimizer) -> None:
    """Materialize AdamW's state as torch would create it lazily (step 0, zero moments): the same optimizer
    trajectory as an empty state, but the checkpoint then carries moments, which resharding tools require."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                  "exp_avg_sq": torch.zeros_like(p)}


def _save_with_engine(job, cfg: ModelConfig, state, tokenizer, save_dir: str) -> str:
    """Build the DeepSpeed engine at world size 1 around the imported weights and save iteration 0."""
    from ..model import GPT
    from ..parallel.engine import (deepspeed_config, init_distributed, initialize_engine,
                                   trainer_clips_gradients)
    from ..training import checkpoint as ckpt
    from ..training.optimizer import build_optimizer

    env_keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    saved_env = {k: os.environ.get(k) for k in env_keys}
    try:
        # A world-size-1 process group stays initialized afterwards: DeepSpeed caches its groups module-wide, so
        # destroying it would break any later engine in this process (e.g. a second import).
        rank, world = init_distributed("gloo" if not torch.cuda.is_available() else "auto")
        if world != 1:
            raise ConversionError("run the HF import as a single process (python tools/convert_checkpoint.py ...)")
        model = GPT(cfg)
        model.load_state_dict(state, strict=True)
        grad_accum = job.resolve_batch(1)
        optimizer = build_optimizer(model, job.optim)
        if trainer_clips_gradients(job):  # the plain torch-optimizer path (ZeRO-0, fp32); DeepSpeed's ZeRO/bf16
            _fresh_adam_state(optimizer)  # wrappers rebuild the state over their own flat partitions
        engine = initialize_engine(model, optimizer, deepspeed_config(job, grad_accum))
        fp = tokenizer.fingerprint() if tokenizer is not None else None
        client = {"iteration": 0, "consumed_samples": 0, "rng": ckpt.rng_state(), "tokenizer_fingerprint": fp,
                  "layout": {"tp": 1, "pp": 1, "dp": 1, "zero": job.parallel.zero_stage}}
        path = ckpt.save_checkpoint(engine, job, save_dir, 0, client, tokenizer, is_rank0=True)
        del engine
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return path


__all__ = ["ConversionError", "UnsupportedArchitecture", "export_model", "export_checkpoint", "import_model",
           "import_to_checkpoint", "read_hf_state_dict", "build_job"]
