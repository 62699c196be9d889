"""Constrained targets and ready-made constraint sets.

``bk.constrain(energy, equalities=[h, ...], inequalities=[g, ...])`` gives a target with
density ``exp(-energy)`` with respect to the surface measure of ``{h = 0, g <= 0}``;
``bk.sample`` samples it with OLLA (:mod:`boltzkit.samplers.olla`). Ready-made sets:
:func:`sphere`, :func:`ball`, :func:`torus`, :func:`flat_torus`, :func:`stiefel`,
:func:`affine`, :func:`half_space`, :func:`polytope`, :func:`box`, :func:`simplex`.
"""

from .base import Constrained, ConstrainedTarget, constrain
from .sets import (ConstraintSet, affine, ball, box, flat_torus, half_space, polytope, simplex,
                   sphere, stiefel, torus)

__all__ = ["Constrained", "ConstrainedTarget", "constrain", "ConstraintSet", "affine", "ball", "box",
           "flat_torus", "half_space", "polytope", "simplex", "sphere", "stiefel", "torus"]
