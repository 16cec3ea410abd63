"""Typed configs: model, parallel, optim, data + objective, training; composed into JobConfig."""

from .base import ConfigError
from .data import DataConfig, ObjectiveConfig
from .job import JobConfig
from .model import ModelConfig
from .optim import OptimConfig
from .parallel import ParallelConfig
from .presets import PRESETS, get_preset, preset_names
from .training import TrainingConfig

__all__ = ["ConfigError", "DataConfig", "ObjectiveConfig", "JobConfig", "ModelConfig", "OptimConfig",
           "ParallelConfig", "TrainingConfig", "PRESETS", "get_preset", "preset_names"]
