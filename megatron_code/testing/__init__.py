"""Test helpers shared by the whole project (multi-process runs live in `spawn`)."""

from .spawn import DistributedTestError, run_distributed

__all__ = ["DistributedTestError", "run_distributed"]
