"""Megatron ``.bin/.idx`` writer step: one shard per task, merged in task order.

It tokenizes exactly as ``tools/preprocess_data.py`` does (the project's ``build_tokenizer`` and its batch
encoder, ``<|endoftext|>`` appended with ``append_eod``, the dtype of ``dtype_for_vocab``) and writes with the
project's ``IndexedDatasetWriter``, so the merged output is byte-identical to preprocess_data.py's on the same
documents in the same order (tests/curation/test_curate_e2e.py checks it).
"""

from __future__ import annotations

import itertools
import os

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from megatron_code.data.indexed import IndexedDatasetWriter, dtype_for_vocab, merge_datasets


def shard_prefix(folder: str, rank: int) -> str:
    return os.path.join(folder, f"{rank:05d}_text_document")


class MegatronBinWriter(PipelineStep):
    """Tokenize documents and write ``{folder}/{task:05d}_text_document.bin/.idx`` (nothing for a task left with
    no documents). Documents pass through."""

    type = "writer"
    name = "megatron bin/idx"

    def __init__(self, folder: str, tokenizer_type: str, tokenizer_model: str | None = None,
                 vocab_file: str | None = None, merge_file: str | None = None, append_eod: bool = True,
                 batch_docs: int = 256):
        super().__init__()
        self.folder = folder
        self.tok_args = dict(tokenizer_type=tokenizer_type, tokenizer_model=tokenizer_model, vocab_file=vocab_file,
                             merge_file=merge_file)
        self.append_eod = append_eod
        self.batch_docs = batch_docs

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from megatron_code.data.tokenizer import build_tokenizer

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        tok = build_tokenizer(**self.tok_args)
        dtype = dtype_for_vocab(tok.vocab_size)
        os.makedirs(self.folder, exist_ok=True)
        writer = IndexedDatasetWriter(shard_prefix(self.folder, rank), dtype)
        try:
            batch = []
            writer_docs = [0]

            def flush():
                with self.track_time():
                    ids = tok.encode_batch([d.text for d in batch])
                    if self.append_eod:
                        for x in ids:
                            x.append(tok.eod)
                    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
                    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
                    writer.add_documents(flat, lengths)
                writer_docs[0] += len(batch)
                self.stat_update("documents", value=len(batch))
                self.stat_update("tokens", value=int(lengths.sum()))

            for doc in data:
                batch.append(doc)
                if len(batch) >= self.batch_docs:
                    flush()
                    yield from batch
                    batch = []
            if batch:
                flush()
                yield from batch
            if writer_docs[0]:
                writer.finalize()
            else:
                writer.abort()
        except BaseException:
            writer.abort()
            raise


def merge_shards(folder: str, world_size: int, output_prefix: str) -> None:
    """Concatenate the tasks' shards in task order into ``output_prefix`` (.bin/.idx); tasks without documents
    wrote no shard."""
    shards = [shard_prefix(folder, r) for r in range(world_size)
              if os.path.exists(shard_prefix(folder, r) + ".idx")]
    if not shards:
        raise ValueError("no documents were left to tokenize: every document was filtered or deduplicated "
                         "(see the report)")
    merge_datasets(shards, output_prefix)
