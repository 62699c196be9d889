"""Samplers. Importing this package registers every built-in method."""

from .base import Sampler, SamplerConfig, TrainableSampler
from .mcmc import HeatBath, Metropolis, SwendsenWang, Wolff
from .mdns import MDNS, MDNSConfig
from .discrete_asbs import DiscreteASBS, DiscreteASBSConfig
from .mala import MALA, hmc_step, mala_step
from .olla import OLLA, ProjectedLangevin, SlackLangevin
from .stem import Stem, StemConfig
from .single_cell import SCDiffusion, SCDiffusionConfig
from .sc_latent import SCLatentDiffusion, SCLatentDiffusionConfig
from .naas import NAAS, NAASConfig
from .pdns import PDNS, PDNSConfig
from .tr2d2 import TR2D2, TR2D2Config
from .smc import SMC, SMCConfig
from .ais import AIS
from .jarzynski import Jarzynski

__all__ = ["Sampler", "SamplerConfig", "TrainableSampler", "Metropolis", "HeatBath", "SwendsenWang", "Wolff", "MDNS", "MDNSConfig", "MALA"]
__all__ += ["Stem", "StemConfig"]
__all__ += ["SCDiffusion", "SCDiffusionConfig", "SCLatentDiffusion", "SCLatentDiffusionConfig"]
__all__ += ["NAAS", "NAASConfig"]
__all__ += ["DiscreteASBS", "DiscreteASBSConfig"]
__all__ += ["OLLA", "ProjectedLangevin", "SlackLangevin"]
__all__ += ["PDNS", "PDNSConfig"]
__all__ += ["TR2D2", "TR2D2Config"]
__all__ += ["SMC", "SMCConfig", "AIS", "Jarzynski"]
