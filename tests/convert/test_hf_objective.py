"""The export generates the way the checkpoint was trained: a MIM model's tokenizer puts <l2r> before the prompt
(transformers' default add_special_tokens) and its generation_config starts with it, so AutoTokenizer +
AutoModelForCausalLM.generate continue a prompt exactly like our generate() does for the MIM checkpoint; the
objective and sentinel ids are recorded; a causal export adds nothing."""

from __future__ import annotations

import pytest
import torch

from megatron_code.config.model import ModelConfig
from megatron_code.convert import export_model
from megatron_code.inference import generate
from megatron_code.model import GPT

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from megatron_code.data.tokenizer import train_code_tokenizer

    texts = ["def add(a, b):\n    return a + b\n", "class Point:\n    x: int = 1\n", "print('hi')\n"] * 30
    return train_code_tokenizer(texts, 300, str(tmp_path_factory.mktemp("tok")))


@pytest.mark.parametrize("objective", ["mim", "fim", "causal"])
def test_export_generates_like_the_objective(objective, tok, tmp_path):
    cfg = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=tok.vocab_size,
                      position_embedding="learned", max_position_embeddings=128, init_std=0.2)
    model = GPT(cfg)
    model.init_weights(torch.Generator().manual_seed(0))
    model.eval().objective = objective  # what load_for_inference records from the checkpoint
    out = str(tmp_path / "hf")
    export_model(cfg, model.state_dict(), out, tokenizer=tok, objective=objective)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    gen = transformers.GenerationConfig.from_pretrained(out)
    assert gen.megatron_code_objective == objective
    assert gen.fim_middle_token_id == tok.special_tokens["<fim_middle>"]
    assert gen.l2r_token_id == tok.special_tokens["<l2r>"]
    prompt = "def add(a, b):\n"
    enc = hf_tok(prompt, return_tensors="pt")
    lead = [tok.special_tokens["<l2r>"]] if objective == "mim" else []
    assert enc["input_ids"][0].tolist() == lead + tok.encode(prompt)
    assert gen.bos_token_id == (lead[0] if lead else tok.eod)
    with torch.no_grad():
        ids = hf.generate(**enc, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=tok.pad)
    theirs = hf_tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=False)
    ours = generate(model, tok, [prompt], max_new_tokens=12)[0][0]
    assert ours == theirs[:len(ours)] and len(ours) > 0
