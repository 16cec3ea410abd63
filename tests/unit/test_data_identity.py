"""Data identity (issue 14 finding 6): index caches keyed by the dataset's content, the tokenizer sidecar and its
check, the up-front refusal of an index that cannot fit (finding 7's --train-iters 1e11)."""

import numpy as np
import pytest

from megatron_code.data import identity
from megatron_code.data.gpt_dataset import DatasetConfigError, GPTDataset, build_gpt_datasets
from megatron_code.data.helpers import IndexCache
from megatron_code.data.indexed import IndexedDataset, IndexedDatasetWriter, merge_datasets


def write(prefix, lengths, fill=0):
    with IndexedDatasetWriter(str(prefix)) as w:
        for i, n in enumerate(lengths):
            w.add_document(np.full(n, (i + fill) % 200, dtype=np.uint16))
    return str(prefix)


def samples(prefix, cache_dir):
    ds = GPTDataset(IndexedDataset(prefix), (0, 40), 8, 1, 30, IndexCache(cache_dir))
    return [ds[i]["tokens"].tolist() for i in range(len(ds))]


def test_rewritten_dataset_rebuilds_its_cached_index(tmp_path):
    """The same path, document count and token total but other document lengths: the old cache key (path,
    counts, totals) reused the stale sample index (wrongly packed samples, then an IndexError mid-run)."""
    rng = np.random.default_rng(0)
    a = rng.integers(1, 30, 40)
    b = a[::-1].copy()  # same count, same total, different layout
    prefix = write(tmp_path / "d", a)
    cache = str(tmp_path / "cache")
    samples(prefix, cache)
    write(tmp_path / "d", b, fill=7)
    assert samples(prefix, cache) == samples(prefix, None)  # what a fresh build gives


def test_index_that_cannot_fit_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    prefix = write(tmp_path / "d", [10] * 40)
    monkeypatch.setattr("megatron_code.data.gpt_dataset._available_memory", lambda: 10 ** 6)
    with pytest.raises(DatasetConfigError, match=r"sample index for 10,000,000 samples needs .* GiB .* available "
                                                 r"memory: lower --train-iters"):
        GPTDataset(IndexedDataset(prefix), (0, 40), 8, 1, 10 ** 7)
    monkeypatch.undo()
    with pytest.raises(DatasetConfigError, match="GiB"):  # 1e11 iterations x 8: beyond any machine
        build_gpt_datasets(data_path=[prefix], split="100,0,0", seq_length=8, seed=1,
                           num_samples=(8 * 10 ** 11, 0, 0))


class Tok:
    def __init__(self, fp, vocab=300):
        self.fp, self.vocab_size, self.tokenizer_type, self.eod = fp, vocab, "HuggingFaceTokenizer", 0

    def fingerprint(self):
        return self.fp


def test_sidecar_check_and_merge(tmp_path):
    a, b, c = (write(tmp_path / n, [5, 6]) for n in "abc")
    identity.write_sidecar(a, Tok("f" * 64))
    identity.write_sidecar(b, Tok("e" * 64))
    assert identity.check_dataset_tokenizer([a, c], "f" * 64) == 1  # c: no sidecar, made elsewhere: unchecked
    with pytest.raises(identity.DatasetTokenizerError, match="tokenized with another tokenizer"):
        identity.check_dataset_tokenizer([a, b], "f" * 64)
    with pytest.raises(identity.DatasetTokenizerError, match="different tokenizers"):
        merge_datasets([a, b], str(tmp_path / "ab"))
    merge_datasets([a, c], str(tmp_path / "ac"))
    assert identity.read_sidecar(str(tmp_path / "ac"))["fingerprint"] == "f" * 64
    (tmp_path / "c.tokenizer.json").write_text("{not json")
    with pytest.raises(identity.DatasetTokenizerError, match="unreadable"):
        identity.read_sidecar(c)


def test_merge_tool_refuses_mixed_tokenizers_in_one_line(tmp_path, capsys):
    import os

    a, b = write(tmp_path / "a", [5, 6]), write(tmp_path / "b", [7])
    identity.write_sidecar(a, Tok("f" * 64))
    identity.write_sidecar(b, Tok("e" * 64))
    from megatron_code.commands import merge_datasets as tool
    assert tool.main(["--input", a, b, "--output-prefix", str(tmp_path / "ab")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot merge") and "different tokenizers" in err
    assert not os.path.exists(tmp_path / "ab.bin")
