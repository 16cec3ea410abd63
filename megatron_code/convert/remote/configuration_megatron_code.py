"""Config of megatron_code's exported decoder: the architecture is the ``megatron_code`` record (its ModelConfig
fields); the usual transformers fields are copies of it for tools that read them."""

from transformers import PretrainedConfig


class MegatronCodeConfig(PretrainedConfig):
    model_type = "megatron_code"

    def __init__(self, megatron_code=None, use_cache=True, **kwargs):
        self.megatron_code = dict(megatron_code or {})
        self.use_cache = use_cache
        super().__init__(**kwargs)
