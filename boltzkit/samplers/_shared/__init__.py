"""Machinery shared by the neural samplers: EMA, networks, integrators, buffers."""
