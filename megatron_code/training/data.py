"""The trainer's view of data: datasets for the job, loaders that resume from `consumed_samples`, batches.

Every rank of a data-parallel group reads different samples (PretrainingSampler); ranks of the same TP/PP group
read the same ones. Index caches are built by global rank 0 (when --data-cache-path is set) while others wait.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import DataLoader

from ..config.base import ConfigError
from ..config.job import JobConfig
from ..data.blended import parse_data_path
from ..data.gpt_dataset import build_gpt_datasets, check_vocab, num_samples_for
from ..data.identity import check_dataset_tokenizer
from ..data.sampler import PretrainingSampler, RandomPretrainingSampler


class MockDataset:
    """Deterministic random tokens: sample i is drawn from a generator seeded by (seed, i)."""

    def __init__(self, vocab_size: int, seq_length: int, seed: int, num_samples: int):
        self.vocab_size, self.seq_length, self.seed, self.num_samples = vocab_size, seq_length, seed, num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, int(i)])
        return {"tokens": rng.integers(0, self.vocab_size, self.seq_length + 1, dtype=np.int64)}


@dataclass
class JobData:
    train: object
    valid: object | None
    test: object | None
    # Things the user should hear about (printed once by the trainer), e.g. validation asked for but impossible.
    notes: list[str] = field(default_factory=list)


def build_job_data(job: JobConfig, eod: int | None, is_builder: bool, barrier, extra_batches: int = 0,
                   tokenizer_fingerprint: str | None = None) -> JobData:
    """`extra_batches`: global batches beyond train_iters that the run may pass over without training on them
    (batches rejected before a rollback, training/recovery.py), so the data does not run out early."""
    t, d = job.training, job.data
    gbs = t.global_batch_size
    # = train_iters x gbs for a constant batch (plus the batches a rollback may pass over)
    n_train = job.batch_schedule().samples_through(t.train_iters) + extra_batches * gbs
    n_eval = max(1, t.eval_iters) * gbs
    if d.mock_data:
        v = job.model.vocab_size
        return JobData(MockDataset(v, d.seq_length, t.seed, n_train),
                       MockDataset(v, d.seq_length, t.seed + 1, n_eval) if t.eval_interval else None, None)
    if not d.has_data:
        raise ConfigError("no training data: pass --data-path PREFIX (see tools/preprocess_data.py), "
                          "--train-data-path, or --mock-data")
    if eod is None:
        raise ConfigError("a tokenizer is needed with --data-path: pass --tokenizer-type and --tokenizer-model "
                          "(or --vocab-file/--merge-file)")
    # Data tokenized by another tokenizer (its sidecar, data/identity.py) is refused before any index is built.
    prefixes = [p for paths in (d.data_path, d.train_data_path, d.valid_data_path, d.test_data_path) if paths
                for p in parse_data_path(paths)[1]]
    check_dataset_tokenizer(prefixes, tokenizer_fingerprint, f"--tokenizer-model {job.data.tokenizer_model}"
                            if getattr(job.data, "tokenizer_model", None) else "the tokenizer given")
    # Megatron's counts (the same function tools/build_index.py uses, so caches built ahead of time are reused).
    counts = num_samples_for(global_batch_size=gbs, train_iters=t.train_iters, eval_interval=t.eval_interval or 1,
                             eval_iters=max(1, t.eval_iters))
    counts = (n_train,) + counts[1:]
    train, valid, test = build_gpt_datasets(
        data_path=d.data_path or None, split=d.split, train_data_path=d.train_data_path or None,
        valid_data_path=d.valid_data_path or None, test_data_path=d.test_data_path or None,
        seq_length=d.seq_length, seed=t.seed, num_samples=(counts[0], counts[1] if t.eval_interval else 0, counts[2]),
        cache_dir=d.data_cache_path, is_builder=is_builder, barrier=barrier)
    if train is None:
        raise ConfigError("the training split is empty: check --split / --train-data-path")
    check_vocab([train, valid, test], job.model.vocab_size)
    notes = []
    if t.eval_interval and valid is None:
        where = (f"--split {d.split} gives it no documents" if d.data_path else "no --valid-data-path is given")
        notes.append(f"validation is off: the validation split is empty ({where}); give it documents (e.g. "
                     f"--split 98,2,0 or --valid-data-path), or pass --eval-interval 0 to train without it")
    return JobData(train, valid, test, notes)


def make_loader(dataset, job: JobConfig, consumed_samples: int, dp_rank: int, dp_size: int,
                collate, train: bool = False) -> DataLoader:
    """Micro batches for this DP rank, starting after `consumed_samples` global samples. Training follows
    --dataloader-type; evaluation always reads in order (the same batches every time)."""
    d = job.data
    if train and d.dataloader_type == "cyclic":
        sampler = RandomPretrainingSampler(len(dataset), consumed_samples, job.training.micro_batch_size, dp_rank,
                                           dp_size, data_sharding=d.data_sharding)
    else:
        sampler = PretrainingSampler(len(dataset), consumed_samples, job.training.micro_batch_size, dp_rank,
                                     dp_size)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=d.num_workers, collate_fn=collate,
                      persistent_workers=d.num_workers > 0)
