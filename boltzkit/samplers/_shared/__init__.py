"""Sampler-layer machinery shared by several methods: the MCMC driver, island SMC, the proximal
schedule. The networks, integrators, EMA and replay buffer are public in :mod:`boltzkit.nn`."""
