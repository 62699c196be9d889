"""Free-energy estimators and sampling diagnostics."""

from .diagnostics import (AutocorrEstimate, autocorr_estimate, autocorr_function, ess_mcmc,
                          integrated_autocorr_time)
from .importance import (LogWeightAccumulator, LogZEstimate, ess_kish, log_z_from_log_weights, normalized_weights,
                         pareto_k, self_normalized_expectation)

__all__ = ["AutocorrEstimate", "autocorr_estimate", "autocorr_function", "ess_mcmc",
           "integrated_autocorr_time", "LogWeightAccumulator", "LogZEstimate", "ess_kish", "log_z_from_log_weights", "normalized_weights",
           "pareto_k", "self_normalized_expectation",
           "ais", "annealing_schedule", "jarzynski", "annealed_langevin"]

# AIS / Jarzynski subclass boltzkit.samplers.base.Sampler (importing them registers the
# 'ais' and 'jarzynski' methods); they come last so the estimators above exist first.
from .ais import ais, annealing_schedule  # noqa: E402
from .jarzynski import annealed_langevin, jarzynski  # noqa: E402
