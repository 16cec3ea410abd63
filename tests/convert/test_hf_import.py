"""Import from transformers: models built by `transformers` itself (random weights, non-zero biases) give the same
logits in our GPT; HF -> ours -> HF gives identical tensors; the import writes a DeepSpeed checkpoint that our
loaders read back exactly; unsupported inputs are refused with a clear message."""

from __future__ import annotations

import json
import os

import pytest
import torch

from megatron_code.convert import ConversionError, UnsupportedArchitecture, export_checkpoint, export_model
from megatron_code.convert import import_model, import_to_checkpoint
from megatron_code.model import GPT

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402



COMMON = dict(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
              max_position_embeddings=128)
FOREIGN = {
    # name: (config class, kwargs, HF -> ours -> HF gives the same tensor names)
    "neox_parallel": ("GPTNeoXConfig", dict(use_parallel_residual=True, hidden_act="gelu",
                                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                             "partial_rotary_factor": 0.25}), True),
    "neox_sequential_untied": ("GPTNeoXConfig", dict(use_parallel_residual=False, hidden_act="gelu_new",
                                                     tie_word_embeddings=False), True),
    "neox_no_attention_bias": ("GPTNeoXConfig", dict(attention_bias=False, tie_word_embeddings=True), False),
    "phi": ("PhiConfig", dict(hidden_act="gelu_new", num_key_value_heads=2,
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                               "partial_rotary_factor": 0.5}), True),
    "llama_gqa": ("LlamaConfig", dict(num_key_value_heads=2, tie_word_embeddings=False), True),
    "llama_attention_bias_only": ("LlamaConfig", dict(num_key_value_heads=1, attention_bias=True), False),
    "cohere_mqa": ("CohereConfig", dict(num_key_value_heads=1, logit_scale=1.0, tie_word_embeddings=True), True),
    "cohere_head_dim": ("CohereConfig", dict(num_key_value_heads=1, logit_scale=1.0, head_dim=24), True),
    "starcoder2_gqa_head_dim": ("Starcoder2Config", dict(num_key_value_heads=2, head_dim=32, hidden_act="gelu",
                                                         tie_word_embeddings=False), True),
    "gpt2_tanh_gelu": ("GPT2Config", dict(activation_function="gelu_new"), True),
}


def make_hf(name: str, path: str, seed: int = 0):
    cls, kw, _ = FOREIGN[name]
    config = getattr(transformers, cls)(**{**COMMON, **kw})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random everything: biases and norms included, so misplaced tensors show
        for pname, p in model.named_parameters():
            if "norm" in pname and pname.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model.eval()


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_import_foreign_model_logits_and_round_trip(name, tmp_path):
    src = str(tmp_path / "src")
    hf = make_hf(name, src)
    target, cfg, state, _ = import_model(src)
    assert target == type(hf).__name__
    with torch.device("meta"):
        model = GPT(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    ids = torch.randint(0, COMMON["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids)[..., :COMMON["vocab_size"]], hf(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)

    out = str(tmp_path / "out")
    assert export_model(cfg, state, out) == target
    a, b = load_file(os.path.join(src, "model.safetensors")), load_file(os.path.join(out, "model.safetensors"))
    if FOREIGN[name][2]:
        assert sorted(a) == sorted(b)
    for key, value in a.items():  # every source tensor comes back identical (extra keys are zero biases)
        assert torch.equal(b[key], value), key
    for key in set(b) - set(a):
        assert key.endswith(".bias") and not b[key].any(), key


def test_import_writes_a_checkpoint_our_loaders_read(tmp_path):
    from megatron_code.data.tokenizer import train_code_tokenizer
    from megatron_code.training.checkpoint import load_consolidated, load_job_config

    tok = train_code_tokenizer(["def f(x):\n    return x\n"] * 40, 300, str(tmp_path / "tok"))
    src = str(tmp_path / "src")
    cfg_kw = dict(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, vocab_size=tok.vocab_size,
                  norm="rmsnorm", activation="swiglu", num_kv_heads=2, bias=False, tie_embeddings=False,
                  max_position_embeddings=64)
    from megatron_code.config.model import ModelConfig

    model = GPT(ModelConfig(**cfg_kw))
    model.init_weights(torch.Generator().manual_seed(0))
    export_model(model.cfg, model.state_dict(), src, tokenizer=tok)

    save = str(tmp_path / "ckpt")
    path = import_to_checkpoint(src, save)
    assert os.path.basename(path) == "iter_0000000"
    job = load_job_config(save)
    assert job.model.to_dict() == model.cfg.to_dict()  # restored from our own export record
    assert job.data.tokenizer_type == "HuggingFaceTokenizer" and os.path.isfile(job.data.tokenizer_model)
    meta = json.load(open(os.path.join(path, "meta.json")))
    assert meta["iteration"] == 0 and meta["tokenizer_fingerprint"] == tok.fingerprint()
    _, state, tok_dir = load_consolidated(save)
    for key, value in model.state_dict().items():
        rows = tok.vocab_size if key in ("embed.word.weight", "lm_head.weight") else None
        assert torch.equal(state[key][:rows], value[:rows]), key
    assert tok_dir is not None

    out = str(tmp_path / "again")
    export_checkpoint(save, out)
    a, b = load_file(os.path.join(src, "model.safetensors")), load_file(os.path.join(out, "model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    with open(os.path.join(src, "tokenizer.json"), "rb") as f1, open(os.path.join(out, "tokenizer.json"), "rb") as f2:
        assert f1.read() == f2.read()

    with pytest.raises(ConversionError, match="already holds a checkpoint"):
        import_to_checkpoint(src, save)


def test_export_records_the_trained_context_of_a_rope_model(tmp_path, caplog):
    """RoPE accepts --seq-length above --max-position-embeddings; the export's config records the longer context
    the checkpoint was trained on (with a note), and the weights are unchanged."""
    from megatron_code.training.checkpoint import load_job_config

    src = str(tmp_path / "src")
    make_hf("llama_gqa", src)
    save = str(tmp_path / "ck")
    import_to_checkpoint(src, save)
    config = os.path.join(save, open(os.path.join(save, "latest")).read().strip(), "config.yaml")
    job = load_job_config(save)
    assert job.model.max_position_embeddings == 128
    job.data.seq_length = 512  # as a run with --seq-length 512 would have saved it
    job.save(config)
    from megatron_code.training import ckpt_store

    tag_dir = os.path.dirname(config)  # the checkpoint records its files' checksums: as a real save would
    ckpt_store.write_meta(tag_dir, ckpt_store.read_meta(tag_dir))
    out = str(tmp_path / "out")
    with caplog.at_level("WARNING"):
        export_checkpoint(save, out)
    assert "max_position_embeddings=512" in caplog.text
    assert transformers.AutoConfig.from_pretrained(out).max_position_embeddings == 512
    a, b = load_file(os.path.join(src, "model.safetensors")), load_file(os.path.join(out, "model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_import_into_tensor_parallel_layout(tmp_path):
    """--tensor-model-parallel-size 2: a layout-free checkpoint configured for TP2 (via parallel.reshard); the
    export from it gives back the source tensors exactly."""
    pytest.importorskip("megatron_code.parallel.reshard").reshard_to_full
    from megatron_code.training.checkpoint import load_job_config

    src = str(tmp_path / "src")
    make_hf("llama_gqa", src)
    save = str(tmp_path / "tp2")
    import_to_checkpoint(src, save, tensor_parallel=2)
    assert load_job_config(save).parallel.tensor_parallel == 2
    out = str(tmp_path / "out")
    export_checkpoint(save, out)
    a, b = load_file(os.path.join(src, "model.safetensors")), load_file(os.path.join(out, "model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_import_with_a_base_job_zero1(tmp_path):
    """--config JOB.yaml: the checkpoint is written with that job's ZeRO stage (here 1) and batch settings."""
    from megatron_code.config.job import JobConfig
    from megatron_code.training.checkpoint import load_job_config

    src = str(tmp_path / "src")
    make_hf("phi", src)
    base = JobConfig()
    base.parallel.zero_stage = 1
    base.training.micro_batch_size = 3
    save = str(tmp_path / "z1")
    path = import_to_checkpoint(src, save, base_job=base)
    assert any(f.startswith("zero_pp_rank_0") for f in os.listdir(path))  # ZeRO optimizer shard written
    job = load_job_config(save)
    assert job.parallel.zero_stage == 1 and job.training.micro_batch_size == 3
    out = str(tmp_path / "out")
    export_checkpoint(save, out)
    a, b = load_file(os.path.join(src, "model.safetensors")), load_file(os.path.join(out, "model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_unsupported_inputs_are_refused(tmp_path):
    with pytest.raises(ConversionError, match="no config.json"):
        import_model(str(tmp_path))
    opt = transformers.OPTForCausalLM(transformers.OPTConfig(num_hidden_layers=1, hidden_size=16,
                                                             num_attention_heads=2, ffn_dim=32, vocab_size=50,
                                                             word_embed_proj_dim=16))
    opt.save_pretrained(str(tmp_path / "opt"))
    with pytest.raises(UnsupportedArchitecture, match="model_type 'opt' is not supported"):
        import_model(str(tmp_path / "opt"))

    def save(cls, **kw):
        d = str(tmp_path / f"m{len(os.listdir(tmp_path))}")
        transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls)(**{**COMMON, **kw})).save_pretrained(d)
        return d

    with pytest.raises(UnsupportedArchitecture, match="logit_scale"):
        import_model(save("CohereConfig", logit_scale=0.0625))
    with pytest.raises(UnsupportedArchitecture, match="rope_type='linear'"):
        import_model(save("LlamaConfig", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}))
    with pytest.raises(UnsupportedArchitecture, match="qk_layernorm"):
        import_model(save("PhiConfig", qk_layernorm=True))
    with pytest.raises(UnsupportedArchitecture, match="hidden_act='relu'"):
        import_model(save("LlamaConfig", hidden_act="relu"))
    with pytest.raises(UnsupportedArchitecture, match="sliding_window=16"):
        import_model(save("Starcoder2Config", sliding_window=16))
    with pytest.raises(UnsupportedArchitecture, match="scale_attn_weights"):
        import_model(save("GPT2Config", scale_attn_weights=False))


# ------------------------------------------------------------------------------------ whole commands (slow)
def _tool(args: list[str], check: bool = True):
    import subprocess
    import sys

    from tests.e2e._cmd import ROOT, env

    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_checkpoint.py")] + args, cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _assert_export_matches(ckpt: str, hf_dir: str) -> None:
    from megatron_code.inference.generate import generate_ids
    from megatron_code.training.checkpoint import load_consolidated

    job, state, _ = load_consolidated(ckpt)  # the mock-data runs have no tokenizer
    model = GPT(job.model)
    model.load_state_dict(state, strict=True)
    model.eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    v = model.cfg.vocab_size
    ids = torch.randint(0, v, (2, 32), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids)[..., :v], atol=1e-4, rtol=0)
        prompt = ids[0, :6].tolist()
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                             pad_token_id=0)[0, len(prompt):].tolist()
    assert generate_ids(model, [prompt], max_new_tokens=32, vocab_size=v)[0] == theirs


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_commands_pretrain_export_import_continue(tmp_path):
    """pretrain_code.py -> --to hf (logits + greedy equal) -> --from hf -> pretrain_code.py --load continues."""
    from tests.e2e._cmd import TINY, run

    a, h, b, c = (str(tmp_path / n) for n in ("a", "hf", "b", "c"))
    run(TINY + ["--train-iters", "2", "--save", a])
    assert "as GPTNeoXForCausalLM" in _tool(["--to", "hf", "--load", a, "--save", h]).stdout
    _assert_export_matches(a, h)
    _tool(["--from", "hf", "--load", h, "--save", b])
    proc = run(["--config", os.path.join(b, "iter_0000000", "config.yaml"), "--load", b, "--save", c,
                "--mock-data", "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "2",
                "--train-iters", "1", "--eval-interval", "0", "--training.progress_bar", "false"])
    assert f"resumed from {b} at iteration 0" in proc.stdout
    assert open(os.path.join(c, "latest")).read().strip() == "iter_0000001"
    bad = _tool(["--to", "hf", "--load", str(tmp_path / "missing"), "--save", h + "2"], check=False)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and len(bad.stderr.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("tp,pp", [(2, 1), (2, 2)])
def test_export_of_a_model_trained_in_parallel(tp, pp, tmp_path):
    """A few steps at TP x PP with torchrun, exported from the sharded checkpoint: HF logits and greedy tokens equal
    ours. Llama layout with GQA (kv heads 2 split over TP 2)."""
    import shutil
    import sys

    from tests.e2e._cmd import run

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    from megatron_code.testing import free_port

    port = free_port()
    save, h = str(tmp_path / "ck"), str(tmp_path / "hf")
    args = ["--preset", "tiny", "--model.vocab_size", "256", "--model.num_layers", "2", "--model.hidden_size", "64",
            "--model.ffn_hidden_size", "128", "--model.norm", "rmsnorm", "--model.activation", "swiglu",
            "--model.block", "sequential", "--model.rotary_percent", "1.0", "--model.num_kv_heads", "2",
            "--model.tie_embeddings", "false", "--seq-length", "32", "--mock-data", "--micro-batch-size", "2",
            "--global-batch-size", "4", "--train-iters", "2", "--eval-interval", "0",
            "--training.progress_bar", "false", "--tensor-model-parallel-size", str(tp),
            "--pipeline-model-parallel-size", str(pp), "--save", save]
    launcher = [torchrun, "--nproc_per_node", str(tp * pp), "--master_addr", "127.0.0.1", "--master_port", str(port)]
    run(args, launcher=launcher, timeout=800)
    proc = _tool(["--to", "hf", "--load", save, "--save", h], check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "as LlamaForCausalLM" in proc.stdout
    _assert_export_matches(save, h)
