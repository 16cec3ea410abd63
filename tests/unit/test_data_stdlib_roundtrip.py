"""decode(encode(text)) == text for every file of the Python standard library (the issue's acceptance check)."""

import pytest

from megatron_code.data.corpus import iter_source_tree, stdlib_root
from megatron_code.data.tokenizer import train_code_tokenizer


@pytest.fixture(scope="module")
def stdlib_docs():
    docs = list(iter_source_tree(stdlib_root(), extensions=[".py"], skip_bad_files=True,
                                 exclude_dirs=("site-packages", "dist-packages")))
    assert len(docs) > 500
    return docs


@pytest.fixture(scope="module")
def tok(stdlib_docs, tmp_path_factory):
    # A small tokenizer trained on a slice keeps the test fast; round trip must hold for every file anyway,
    # including those it never saw (byte-level BPE has no unknown characters).
    return train_code_tokenizer([d["text"] for d in stdlib_docs[::40]], 2000, str(tmp_path_factory.mktemp("t")))


def _check(tok, stdlib_docs):
    texts = [d["text"] for d in stdlib_docs]
    bad = []
    for start in range(0, len(texts), 256):
        chunk = texts[start:start + 256]
        for text, ids, doc in zip(chunk, tok.encode_batch(chunk), stdlib_docs[start:start + 256]):
            # exact text back, and the piecewise fast path gives the backend's whole-document ids
            if tok.decode(ids) != text or ids != tok.backend.encode(text, add_special_tokens=False).ids:
                bad.append(doc["path"])
    assert not bad, f"{len(bad)} files do not round-trip, e.g. {bad[:5]}"


def test_stdlib_sample_round_trips(tok, stdlib_docs):
    """Fast tier: every 50th file plus the two largest (about 1.5 MB of text)."""
    biggest = sorted(stdlib_docs, key=lambda d: d["size"])[-2:]
    _check(tok, stdlib_docs[::50] + biggest)


@pytest.mark.slow
def test_every_stdlib_file_round_trips(tok, stdlib_docs):
    """All ~34 MB of the standard library (20-100 s on 2 busy cores, hence slow)."""
    _check(tok, stdlib_docs)
