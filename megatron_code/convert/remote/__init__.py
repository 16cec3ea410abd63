"""Modeling code written into a Hugging Face export whose layout no standard `transformers` class computes exactly
(loaded with ``trust_remote_code=True``). These files are copied verbatim into the export directory and import only
torch and transformers, never megatron_code, so the export works where megatron_code is not installed."""

import os

FILES = ("configuration_megatron_code.py", "modeling_megatron_code.py")
DIR = os.path.dirname(os.path.abspath(__file__))
AUTO_MAP = {"AutoConfig": "configuration_megatron_code.MegatronCodeConfig",
            "AutoModelForCausalLM": "modeling_megatron_code.MegatronCodeForCausalLM"}
