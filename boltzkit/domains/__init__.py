"""State spaces: :class:`Reals`, :class:`Lattice`, :class:`Sequence` (and their base classes)."""

from .base import Categorical, Domain, Lattice, Reals, Sequence

__all__ = ["Domain", "Reals", "Categorical", "Lattice", "Sequence"]
