"""Samplers. Importing this package registers the built-in methods it holds; the bio slices' samplers
(``stem``, ``sc_diffusion``, ``sc_latent``) live in :mod:`boltzkit.bio` and register when the
registry loads them (their names here import them on first use)."""

from .base import Sampler, SamplerConfig, TrainableSampler
from .mcmc import HeatBath, Metropolis, SwendsenWang, Wolff
from .mdns import MDNS, MDNSConfig
from .discrete_asbs import DiscreteASBS, DiscreteASBSConfig
from .mala import MALA, hmc_step, mala_step  # noqa: F401  (public kernels, re-exported)
from .olla import OLLA, ProjectedLangevin, SlackLangevin
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

_BIO = {"Stem": "spatial.stem", "StemConfig": "spatial.stem", "SCDiffusion": "single_cell.diffusion",
        "SCDiffusionConfig": "single_cell.diffusion", "SCLatentDiffusion": "single_cell.latent",
        "SCLatentDiffusionConfig": "single_cell.latent"}


def __getattr__(name):  # the bio samplers import this package's base: load them lazily
    if name in _BIO:
        import importlib

        return getattr(importlib.import_module(f"..bio.{_BIO[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
