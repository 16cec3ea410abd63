"""Data-parallel samplers driven by ``consumed_samples`` (from the checkpoint), so resume is exact: in order
(Megatron's ``--dataloader-type single``, the default) or in endless random epochs (``cyclic``)."""

from __future__ import annotations

import torch

from ..errors import UserError


class SamplerError(UserError, ValueError):
    pass


class PretrainingSampler:
    """Yields, for this DP rank, lists of ``micro_batch_size`` sample indices.

    Samples are taken in order in chunks of ``micro_batch_size * dp_size`` starting at ``consumed_samples``;
    rank r gets slice ``[r * mbs, (r + 1) * mbs)`` of each chunk (Megatron's MegatronPretrainingSampler). A
    resumed run with ``consumed_samples = c`` yields exactly what an uninterrupted run yields after c samples.
    An incomplete last chunk is dropped (``drop_last=True``) or split as evenly as it goes.
    """

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int, dp_rank: int,
                 dp_size: int, drop_last: bool = True):
        if total_samples <= 0:
            raise SamplerError(f"no samples to draw from (total_samples={total_samples})")
        if micro_batch_size <= 0:
            raise SamplerError(f"micro_batch_size must be positive, got {micro_batch_size}")
        if dp_size <= 0 or not 0 <= dp_rank < dp_size:
            raise SamplerError(f"dp_rank {dp_rank} must be in [0, dp_size={dp_size})")
        if consumed_samples < 0 or consumed_samples >= total_samples:
            raise SamplerError(f"consumed_samples {consumed_samples} is outside [0, {total_samples}): the run "
                               f"already used every sample; build the datasets for more samples")
        self.total_samples = int(total_samples)
        self.consumed_samples = int(consumed_samples)
        self.micro_batch_size = int(micro_batch_size)
        self.dp_rank = int(dp_rank)
        self.dp_size = int(dp_size)
        self.drop_last = drop_last
        self.global_micro = self.micro_batch_size * self.dp_size

    def __len__(self) -> int:
        """Micro batches this rank will yield."""
        remaining = self.total_samples - self.consumed_samples
        full = remaining // self.global_micro
        if self.drop_last or remaining % self.global_micro == 0:
            return full
        return full + (1 if self._tail_slice(remaining % self.global_micro) else 0)

    def _tail_slice(self, n: int) -> list[int]:
        # Split an incomplete chunk of n samples across ranks as evenly as possible.
        per, extra = divmod(n, self.dp_size)
        start = self.dp_rank * per + min(self.dp_rank, extra)
        return list(range(start, start + per + (1 if self.dp_rank < extra else 0)))

    def __iter__(self):
        lo, hi = self.dp_rank * self.micro_batch_size, (self.dp_rank + 1) * self.micro_batch_size
        chunk = self.consumed_samples
        while chunk + self.global_micro <= self.total_samples:
            yield list(range(chunk + lo, chunk + hi))
            chunk += self.global_micro
        remaining = self.total_samples - chunk
        if remaining > 0 and not self.drop_last:
            idx = self._tail_slice(remaining)
            if idx:
                yield [chunk + i for i in idx]


class RandomPretrainingSampler:
    """Megatron's ``--dataloader-type cyclic`` (its MegatronPretrainingRandomSampler): endless epochs over the
    dataset, each in a random order seeded by the epoch number alone, driven by ``consumed_samples`` like
    PretrainingSampler so a resumed run continues exactly where it stopped (also mid-epoch).

    An epoch covers the first ``usable = total - total % (mbs * dp)`` samples. With ``data_sharding`` (Megatron's
    default) DP rank r owns the bucket ``[r * usable / dp, (r + 1) * usable / dp)`` and walks
    ``bucket_start + randperm(usable / dp, seed=epoch)``, so ranks read disjoint contiguous ranges of the data;
    without it the ranks take turns (every dp-th entry) through one ``randperm(usable, seed=epoch)``. Megatron's
    unsharded variant permutes ``total - total % mbs`` samples, whose share per rank can differ by a batch when that
    is not a multiple of ``mbs * dp``; here every rank always yields the same number of batches per epoch.

    The order depends on the dataset's length: unlike ``single`` (our GPT datasets order their samples by dataset,
    split, length, seed and epoch only), extending a run that has to rebuild a longer dataset reshuffles it.
    """

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int, dp_rank: int,
                 dp_size: int, data_sharding: bool = True):
        if micro_batch_size <= 0:
            raise SamplerError(f"micro_batch_size must be positive, got {micro_batch_size}")
        if dp_size <= 0 or not 0 <= dp_rank < dp_size:
            raise SamplerError(f"dp_rank {dp_rank} must be in [0, dp_size={dp_size})")
        self.global_micro = int(micro_batch_size) * int(dp_size)
        self.usable = int(total_samples) - int(total_samples) % self.global_micro
        if self.usable <= 0:
            raise SamplerError(f"{total_samples} samples are fewer than one global micro batch "
                               f"({micro_batch_size} x {dp_size} DP ranks)")
        if consumed_samples < 0 or consumed_samples % self.global_micro:
            raise SamplerError(f"consumed_samples {consumed_samples} must be a non-negative multiple of "
                               f"micro batch x DP size ({self.global_micro})")
        self.consumed_samples = int(consumed_samples)
        self.micro_batch_size = int(micro_batch_size)
        self.dp_rank, self.dp_size = int(dp_rank), int(dp_size)
        self.data_sharding = data_sharding

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for a whole epoch, in order (an int64 tensor: 8 bytes per sample, where a
        Python list would take ~36)."""
        g = torch.Generator().manual_seed(epoch)
        if self.data_sharding:
            bucket = self.usable // self.dp_size
            return torch.randperm(bucket, generator=g).add_(self.dp_rank * bucket)
        return torch.randperm(self.usable, generator=g)[self.dp_rank::self.dp_size]

    def __iter__(self):
        epoch, offset = divmod(self.consumed_samples, self.usable)
        mbs = self.micro_batch_size
        while True:
            order = self._epoch_order(epoch)
            for k in range(offset // self.dp_size, len(order), mbs):
                yield order[k:k + mbs].tolist()
            epoch, offset = epoch + 1, 0
