"""Document-level FIM at preprocessing (FIM before packing, for comparison with the sample-level mode): the
sentinels appear, rate 0 is the plain output, and the result does not depend on workers or partitions."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_code.data.indexed import IndexedDataset
from megatron_code.data.tokenizer import train_code_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("fimdoc")
    docs = [f"def f{i}(x):\n    return x * {i} + {i * 7}\n\n\nclass C{i}:\n    pass\n" for i in range(40)]
    path = d / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    tok = train_code_tokenizer(docs * 3, 400, str(d / "tok"))
    return d, str(path), str(d / "tok" / "tokenizer.json"), tok


def _prep(corpus, name, *extra):
    d, path, tok_path, _ = corpus
    prefix = str(d / name)
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", path,
                    "--output-prefix", prefix, "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                    tok_path, "--append-eod", "--no-progress", *extra], check=True, capture_output=True)
    ds = IndexedDataset(prefix + "_text_document")
    return [np.asarray(ds[i]).tolist() for i in range(len(ds))]


def test_document_level_fim(corpus):
    tok = corpus[3]
    plain = _prep(corpus, "plain")
    assert _prep(corpus, "rate0", "--fim-rate", "0") == plain
    fim = _prep(corpus, "fim1", "--fim-rate", "1.0", "--seed", "3")
    middle = tok.special_tokens["<fim_middle>"]
    assert all(middle in doc for doc in fim) and not any(middle in doc for doc in plain)
    assert all(doc[-1] == tok.eod for doc in fim)  # EOD still ends every document
    assert _prep(corpus, "fim1w2", "--fim-rate", "1.0", "--seed", "3", "--workers", "2",
                 "--partitions", "2") == fim  # independent of workers and partitions
    assert _prep(corpus, "fim1s4", "--fim-rate", "1.0", "--seed", "4") != fim
