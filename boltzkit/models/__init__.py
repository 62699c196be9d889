"""The masked diffusion model of sequences (:mod:`boltzkit.bio.sequences.masked_diffusion`) under its
public name ``boltzkit.models``."""

from ..bio.sequences.masked_diffusion import MarkovChainNet, MaskedDiffusion, ResidualNet, build_net

__all__ = ["MaskedDiffusion", "MarkovChainNet", "ResidualNet", "build_net"]
