"""Targets defined by an energy in units of kT."""

from .base import (Energy, FramedEnergy, FunctionEnergy, PriorHint, SamplingView, check_energy_values,
                   scale_from_hessian, validate_target)
from .lattice import BETA_C_ISING, Ising, Potts, potts_beta_c
from . import exact  # exact log Z and distributions of lattice models
from .exact import enumerate_states, exact_marginal_pmf
from .continuous import Gaussian, GaussianMixture, ManyWell
from .particles import DoubleWell4, LennardJones, MultiDoubleWell

# molecular targets (OpenMM / RDKit): loaded on first use, so `import boltzkit` stays light
_MOLECULAR = ("OpenMMEnergy", "AlanineDipeptide", "ShiftedEnergy", "TorsionEnergy", "from_smiles")
__all__ = ["Energy", "FunctionEnergy", "check_energy_values", "validate_target", "Ising", "Potts",
           "BETA_C_ISING", "potts_beta_c", "Gaussian", "GaussianMixture", "ManyWell", "exact",
           "enumerate_states", "exact_marginal_pmf", "DoubleWell4", "LennardJones", "MultiDoubleWell",
           *_MOLECULAR, "FramedEnergy", "PriorHint", "SamplingView", "scale_from_hessian"]


def __getattr__(name):
    if name in _MOLECULAR:
        from . import molecular

        return getattr(molecular, name)
    raise AttributeError(f"module 'boltzkit.energies' has no attribute {name!r}")
