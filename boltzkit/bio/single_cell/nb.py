"""The negative binomial of counts in torch, with mean ``mu`` and inverse dispersion ``theta``
(variance ``mu + mu^2 / theta``): the decoder law of ``sc_latent`` and of the conditional-VAE
baseline. (:class:`~boltzkit.bio.single_cell.synthetic.SyntheticCellLaw` has its exact numpy twin.)"""

import torch

__all__ = ["nb_log_prob", "sample_nb"]


def nb_log_prob(x, mu, theta, eps: float = 1e-8):
    """log NB(x; mean ``mu``, inverse dispersion ``theta``), elementwise."""
    log_t_mu = torch.log(theta + mu + eps)
    return (torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
            + theta * (torch.log(theta + eps) - log_t_mu) + x * (torch.log(mu + eps) - log_t_mu))


def sample_nb(mu, theta, generator=None):
    """Integer draws of NB(mean ``mu``, inverse dispersion ``theta``) as gamma-Poisson."""
    theta = theta.expand_as(mu).contiguous()
    lam = torch._standard_gamma(theta, generator=generator) * mu / theta
    return torch.poisson(lam, generator=generator)
