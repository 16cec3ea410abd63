"""Every preset's layout exports to Hugging Face: a tiny model of the same family (same target class, same head /
rotary / norm / block / bias / tie choices at small sizes) gives the same logits (1e-4, fp32) and the same 32 greedy
tokens from a text prompt through AutoTokenizer + AutoModelForCausalLM, and re-importing gives identical tensors.
A preset added without an export path fails here (the test enumerates PRESETS)."""

from __future__ import annotations

import os

import pytest
import torch

from megatron_code.config.model import ModelConfig
from megatron_code.config.presets import PRESETS, preset_names
from megatron_code.convert import export_model, import_model
from megatron_code.convert.keymaps import REMOTE, STANDARD_TARGETS, choose_target
from megatron_code.inference.generate import generate_ids
from megatron_code.model import GPT

transformers = pytest.importorskip("transformers")

VOCAB = 300

# The README's table: preset -> target (a new preset must be added here with the class it exports to).
EXPECTED = {
    "tiny": "GPTNeoXForCausalLM",
    "phi-1": "PhiForCausalLM", "phi-1-small": "PhiForCausalLM", "phi-1-finetune": "PhiForCausalLM",
    "palm-8b": "CohereForCausalLM", "palm-62b": "CohereForCausalLM", "palm-540b": "CohereForCausalLM",
    "democratize-300m": "Starcoder2ForCausalLM", "democratize-2.5b": "Starcoder2ForCausalLM",
    "democratize-6b": "Starcoder2ForCausalLM",
    "mim-350m": "GPT2LMHeadModel", "mim-1.3b": "GPT2LMHeadModel", "mim-2.7b": "GPT2LMHeadModel",
    "jupyt5-350m": "GPT2LMHeadModel",
}


def preset_config(name: str) -> ModelConfig:
    cfg = ModelConfig(**PRESETS[name]["model"])
    if cfg.vocab_size is None:
        cfg.vocab_size = 50257
    return cfg


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from megatron_code.data.tokenizer import train_code_tokenizer

    texts = ["def add(a, b):\n    return a + b\n", "class Point:\n    x: int = 1\n", "print('hi')\n"] * 30
    return train_code_tokenizer(texts, VOCAB, str(tmp_path_factory.mktemp("tok")))


def tiny_layout(cfg: ModelConfig, vocab: int = VOCAB) -> ModelConfig:
    """The preset's family at test size: 2 layers, 4 heads of 16; hidden 64 when heads x head == hidden in the
    preset, else 48 (still different); MQA/GQA/MHA kept; the rotary fraction kept; every other choice copied."""
    natural = cfg.num_attention_heads * cfg.head_dim == cfg.hidden_size
    heads, head = 4, 16
    kv = None if cfg.num_kv_heads == cfg.num_attention_heads else (1 if cfg.num_kv_heads == 1 else 2)
    kw = {k: v for k, v in cfg.to_dict().items() if k in ModelConfig.__dataclass_fields__}
    kw.update(num_layers=2, hidden_size=64 if natural else 48, num_attention_heads=heads, num_kv_heads=kv,
              head_dim=None if natural else head, ffn_hidden_size=96, vocab_size=vocab, vocab_pad_multiple=128,
              max_position_embeddings=128, init_std=0.1, attention_dropout=0.0, hidden_dropout=0.0,
              embedding_dropout=0.0)
    if cfg.position_embedding == "rope":
        frac = cfg.rotary_dims / cfg.head_dim
        kw.update(rotary_dims=int(round(frac * head / 2)) * 2, rotary_percent=1.0)
    tiny = ModelConfig(**kw)
    tiny.validate()
    return tiny


def make_model(cfg: ModelConfig, seed: int = 0) -> GPT:
    model = GPT(cfg)
    model.init_weights(torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial biases and norm weights, so a dropped or misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_every_preset_is_listed():
    assert sorted(EXPECTED) == preset_names(), "a preset without an entry in EXPECTED (and the README table)"


@pytest.mark.parametrize("name", preset_names())
def test_preset_layout_exports_exactly(name, tok, tmp_path):
    assert name in EXPECTED, f"preset {name} has no export path listed: add it to EXPECTED and the README table"
    target = choose_target(preset_config(name))
    assert target == EXPECTED[name]
    cfg = tiny_layout(preset_config(name), tok.vocab_size)
    assert choose_target(cfg) == target, "the tiny layout is not of the preset's family"
    model = make_model(cfg)
    out = str(tmp_path / "hf")
    assert export_model(cfg, model.state_dict(), out, tokenizer=tok) == target
    remote = target == REMOTE
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True,
                                                                 trust_remote_code=remote)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    hf.eval()
    assert type(hf).__name__ == target
    if not remote:
        assert target in STANDARD_TARGETS and not any(f.endswith(".py") for f in os.listdir(out))

    v = tok.vocab_size
    ids = torch.randint(0, v, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, theirs = model(ids)[..., :v], hf(ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)

    # 32 greedy tokens from a text prompt through AutoTokenizer + generate, against ours
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    prompt = "def add(a, b):\n"
    enc = hf_tok(prompt, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == tok.encode(prompt)
    ours_gen = generate_ids(model, [tok.encode(prompt)], max_new_tokens=32, temperature=0.0, vocab_size=v)[0]
    with torch.no_grad():
        hf_gen = hf.generate(**enc, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                             pad_token_id=tok.pad)[0, enc["input_ids"].shape[1]:].tolist()
    assert len(ours_gen) == 32 and ours_gen == hf_gen
    assert hf_tok.decode(hf_gen) == tok.decode(ours_gen)

    target2, cfg2, state2, _ = import_model(out)
    assert target2 == target and cfg2 == cfg
    for key, value in model.state_dict().items():
        assert torch.equal(state2[key], value if key not in ("embed.word.weight", "lm_head.weight", "lm_head.bias")
                           else torch.cat([value[:v], torch.zeros_like(value[v:])])), key
