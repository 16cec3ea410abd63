"""Test helpers shared by the whole project (multi-process runs live in `spawn`)."""

from .memory import peak_rss_growth
from .ports import free_port
from .spawn import DistributedTestError, run_distributed

__all__ = ["DistributedTestError", "free_port", "peak_rss_growth", "run_distributed"]
