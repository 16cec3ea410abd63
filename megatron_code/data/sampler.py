"""Data-parallel sampler driven by ``consumed_samples`` (from the checkpoint), so resume is exact."""

from __future__ import annotations


class SamplerError(ValueError):
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
