"""Free-energy estimators and sampling diagnostics: pure functions of weights and traces.

``ais``/``jarzynski`` (functional forms of the samplers in :mod:`boltzkit.samplers`) load on use."""

from .diagnostics import (AutocorrEstimate, autocorr_estimate, autocorr_function, ess_mcmc,
                          integrated_autocorr_time)
from .importance import (LogWeightAccumulator, LogZEstimate, ess_kish, log_z_from_log_weights, normalized_weights,
                         pareto_k, self_normalized_expectation)

__all__ = ["AutocorrEstimate", "autocorr_estimate", "autocorr_function", "ess_mcmc",
           "integrated_autocorr_time", "LogWeightAccumulator", "LogZEstimate", "ess_kish", "log_z_from_log_weights", "normalized_weights",
           "pareto_k", "self_normalized_expectation",
           "ais", "annealing_schedule", "jarzynski", "annealed_langevin"]


def __getattr__(name):  # the annealing samplers live in boltzkit.samplers; their functional forms stay here
    if name in ("ais", "annealing_schedule"):
        from ..samplers import ais as module
    elif name in ("jarzynski", "annealed_langevin"):
        from ..samplers import jarzynski as module
    else:
        raise AttributeError(f"module 'boltzkit.estimators' has no attribute {name!r}")
    return getattr(module, name)
