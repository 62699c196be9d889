"""Generative models that boltzkit samplers fine-tune: masked discrete diffusion of sequences."""

from .masked_diffusion import MarkovChainNet, MaskedDiffusion, ResidualNet, build_net

__all__ = ["MaskedDiffusion", "MarkovChainNet", "ResidualNet", "build_net"]
