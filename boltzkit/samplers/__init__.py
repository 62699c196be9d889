"""Samplers. Importing this package registers every built-in method."""

from .base import Sampler, SamplerConfig, TrainableSampler
from .mcmc import HeatBath, Metropolis, SwendsenWang, Wolff
from .mdns import MDNS, MDNSConfig
from .mala import MALA, hmc_step, mala_step
from .olla import OLLA, ProjectedLangevin, SlackLangevin
from .naas import NAAS, NAASConfig
from ..estimators import ais as _ais, jarzynski as _jarzynski  # noqa: F401  (register 'ais', 'jarzynski')

__all__ = ["Sampler", "SamplerConfig", "TrainableSampler", "Metropolis", "HeatBath", "SwendsenWang", "Wolff", "MDNS", "MDNSConfig", "MALA"]
__all__ += ["NAAS", "NAASConfig"]
__all__ += ["OLLA", "ProjectedLangevin", "SlackLangevin"]
