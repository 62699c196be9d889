r"""Random-scan single-site Metropolis for any energy on a categorical domain.

Paper: Metropolis, Rosenbluth, Rosenbluth, Teller & Teller, J. Chem. Phys. 21, 1087 (1953).

Objective
---------
Leave pi_s(x) = exp(-s U(x)) / Z_s invariant, for any batched energy of index configurations:
at each of ``n_sweeps * D`` moves every chain proposes a uniformly drawn other value at a
uniformly drawn site (a symmetric proposal) and accepts with min(1, exp(-s dU)).

Failure modes
-------------
One full energy evaluation per proposal (D per sweep): slow for large D; use the closed-form
lattice kernels (:mod:`boltzkit.kernels.lattice`) where the target offers them. Strongly
coupled sites mix slowly under single-site moves.
"""

from __future__ import annotations

from typing import Callable

import torch


def random_scan_metropolis(energy_of_index: Callable[[torch.Tensor], torch.Tensor], idx: torch.Tensor,
                           q: int, *, generator: torch.Generator, n_sweeps: int = 1,
                           scale: float = 1.0) -> "tuple[torch.Tensor, torch.Tensor]":
    """``n_sweeps`` random-scan Metropolis sweeps of every chain.

    Parameters
    ----------
    energy_of_index : callable
        Batched energies (B,) of index configurations (B, D).
    idx : int64 Tensor (B, D)
        Current configurations (value indices in [0, q)).
    q : int
        Number of values per site.
    generator : torch.Generator
        The only source of randomness; per move it draws the site, the shift, then the
        acceptance uniform.
    n_sweeps : int
        Sweeps of D proposals each.
    scale : float
        Inverse-temperature multiplier s (0 = uniform, 1 = target).

    Returns
    -------
    idx_new : int64 Tensor (B, D)
    acceptance : float64 Tensor (B,), fraction of accepted proposals per chain.
    """
    B, D = idx.shape
    rows = torch.arange(B, device=idx.device)
    u = energy_of_index(idx).double()
    n_acc = torch.zeros(B, device=idx.device, dtype=torch.float64)
    for _ in range(n_sweeps * D):
        site = torch.randint(0, D, (B,), generator=generator, device=idx.device)
        shift = torch.randint(1, q, (B,), generator=generator, device=idx.device)
        prop = idx.clone()
        prop[rows, site] = (idx[rows, site] + shift) % q
        u_prop = energy_of_index(prop).double()
        log_u = torch.rand(B, generator=generator, device=idx.device, dtype=torch.float64).log()
        acc = log_u < -scale * (u_prop - u)
        idx = torch.where(acc[:, None], prop, idx)
        u = torch.where(acc, u_prop, u)
        n_acc += acc
    return idx, n_acc / max(n_sweeps * D, 1)


__all__ = ["random_scan_metropolis"]
