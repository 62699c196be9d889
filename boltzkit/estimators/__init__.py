"""Free-energy estimators and sampling diagnostics."""

from .importance import (LogZEstimate, ess_kish, log_z_from_log_weights, normalized_weights,
                         pareto_k, self_normalized_expectation)

__all__ = ["LogZEstimate", "ess_kish", "log_z_from_log_weights", "normalized_weights",
           "pareto_k", "self_normalized_expectation"]
