"""Samplers. Importing this package registers every built-in method."""

from .base import Sampler, SamplerConfig, TrainableSampler

__all__ = ["Sampler", "SamplerConfig", "TrainableSampler"]
