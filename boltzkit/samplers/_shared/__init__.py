"""Sampler-layer machinery shared by several methods: the MCMC driver, the proximal schedule.

The networks, integrators, EMA and replay buffer moved to the public :mod:`boltzkit.nn`; their
old module paths (``boltzkit.samplers._shared.sde`` ...) name the same modules.
"""

import importlib
import sys

for _name in ("buffers", "continuous_nets", "ctmc", "cyclic", "discrete_nets", "ema", "gaussian_diffusion",
              "sde", "time_embedding"):
    sys.modules[f"{__name__}.{_name}"] = globals()[_name] = importlib.import_module(f"boltzkit.nn.{_name}")
del _name
