"""Tiny random models shared by the generation tests (architectures chosen to cover MHA/GQA/MQA, learned
and partial rotary positions, sequential and parallel blocks)."""

import torch

from megatron_code.config.model import ModelConfig

VOCAB = 100  # padded to 128: ids 100..127 exist in the model but must never be produced

ARCHS = {
    "mha-rope-seq": dict(),
    "gqa-partial-rope-parallel": dict(num_kv_heads=2, rotary_percent=0.5, block="parallel"),
    "mqa-learned-untied": dict(num_kv_heads=1, position_embedding="learned", tie_embeddings=False,
                               output_bias=True),
    "gqa-rmsnorm-swiglu-parallel2": dict(num_kv_heads=2, rotary_dims=4, norm="rmsnorm", activation="swiglu",
                                         ffn_hidden_size=96, block="parallel", parallel_shared_norm=False,
                                         bias=False),
}


def build_model(seed: int = 0, **overrides):
    from megatron_code.model.gpt import GPT

    values = dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=64,
                  init_std=0.2)  # a larger init spreads the logits, so argmax ties are impossible in practice
    values.update(overrides)
    model = GPT(ModelConfig(**values))
    model.init_weights(torch.Generator().manual_seed(seed))
    return model.eval()


def random_prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]
