"""Pure, batched MCMC kernels (the layer below the samplers).

* :mod:`~boltzkit.kernels.langevin`: MALA, HMC and ULA transitions on ``Reals`` (cached-state
  ``*_move`` and stateless ``*_step`` forms) and the Robbins-Monro step-size rule.
* :mod:`~boltzkit.kernels.lattice`: checkerboard Metropolis / heat bath and Swendsen-Wang /
  Wolff cluster moves for energies with a ``lattice_model()`` hook (Ising, Potts).
* :mod:`~boltzkit.kernels.categorical`: random-scan single-site Metropolis for any categorical
  energy.

Every kernel takes the states of all chains (batch first), an explicit ``torch.Generator`` and,
where it anneals, an inverse-temperature multiplier; it returns the new states and a per-chain
acceptance. Kernels import only domains, energies and errors -- never samplers or estimators.
"""

from .categorical import random_scan_metropolis
from .langevin import adapt_log_step, default_step_size, hmc_move, hmc_step, mala_move, mala_step, ula_move
from .lattice import checkerboard_sweep, fk_clusters, swendsen_wang_update, wolff_update

__all__ = ["random_scan_metropolis", "adapt_log_step", "default_step_size", "hmc_move", "hmc_step",
           "mala_move", "mala_step", "ula_move", "checkerboard_sweep", "fk_clusters",
           "swendsen_wang_update", "wolff_update"]
