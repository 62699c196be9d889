"""State spaces: :class:`Reals`, :class:`Lattice`, :class:`Sequence` (and their base classes)."""

from .base import Categorical, Domain, Lattice, Reals, Sequence
from .particles import ParticleCloud

__all__ = ["Domain", "Reals", "Categorical", "Lattice", "Sequence", "ParticleCloud"]
