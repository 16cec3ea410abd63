"""decode(encode(text)) == text for every file of the Python standard library (the issue's acceptance check)."""

import concurrent.futures
import multiprocessing
import os

import pytest

from megatron_code.data.corpus import iter_source_tree, stdlib_root
from megatron_code.data.tokenizer import build_tokenizer, train_code_tokenizer


@pytest.fixture(scope="module")
def stdlib_docs():
    docs = list(iter_source_tree(stdlib_root(), extensions=[".py"], skip_bad_files=True,
                                 exclude_dirs=("site-packages", "dist-packages")))
    assert len(docs) > 500
    return docs


@pytest.fixture(scope="module")
def tok_dir(stdlib_docs, tmp_path_factory):
    # A small tokenizer trained on a slice keeps the test fast; round trip must hold for every file anyway,
    # including those it never saw (byte-level BPE has no unknown characters).
    out = str(tmp_path_factory.mktemp("t"))
    train_code_tokenizer([d["text"] for d in stdlib_docs[::40]], 2000, out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    return _load(tok_dir)


def _load(tokenizer_dir):
    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=tokenizer_dir)
    assert tok._fast is not None  # else encode_batch would be the reference itself and ids could not differ
    return tok


def _bad_files(tok, stdlib_docs):
    texts = [d["text"] for d in stdlib_docs]
    bad = []
    for start in range(0, len(texts), 256):
        chunk = texts[start:start + 256]
        for text, ids, doc in zip(chunk, tok.encode_batch(chunk), stdlib_docs[start:start + 256]):
            # exact text back, and the piecewise fast path gives the backend's whole-document ids
            if tok.decode(ids) != text or ids != tok.backend.encode(text, add_special_tokens=False).ids:
                bad.append(doc["path"])
    return bad


def _check(tok, stdlib_docs):
    bad = _bad_files(tok, stdlib_docs)
    assert not bad, f"{len(bad)} files do not round-trip, e.g. {bad[:5]}"


def _bad_files_in_worker(tokenizer_dir, stdlib_docs):
    return _bad_files(_load(tokenizer_dir), stdlib_docs)


def test_stdlib_sample_round_trips(tok, stdlib_docs):
    """Fast tier: every 50th file plus the two largest (about 1.5 MB of text)."""
    biggest = sorted(stdlib_docs, key=lambda d: d["size"])[-2:]
    _check(tok, stdlib_docs[::50] + biggest)


@pytest.mark.slow
def test_every_stdlib_file_round_trips(tok_dir, stdlib_docs):
    """All ~34 MB of the standard library, split over the machine's cores (spawned workers load the same
    tokenizer; `tokenizers`' whole-document reference encode is most of the ~35 s of CPU)."""
    workers = max(1, min(4, os.cpu_count() or 1))
    parts = [stdlib_docs[i::workers] for i in range(workers)]
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        bad = [p for found in pool.map(_bad_files_in_worker, [tok_dir] * workers, parts) for p in found]
    assert len(stdlib_docs) > 500
    assert not bad, f"{len(bad)} files do not round-trip, e.g. {bad[:5]}"
