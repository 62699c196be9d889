r"""Analysis helpers for molecular samples: dihedrals, chirality, Ramachandran maps, basins.

Nothing here needs OpenMM, mdtraj or RDKit. The geometry lives in :mod:`boltzkit.geometry`, the
alanine-dipeptide basins and their free energies in :mod:`boltzkit.energies.alanine`; this module
gathers them under one name.
"""

from .energies.alanine import (ALANINE_BASINS, ALANINE_REFERENCE_FILE, ALPHA_R_PHI, ALPHA_R_PSI, C7AX_PHI,
                               alanine_basin, basin_ess, basin_free_energies, basin_populations,
                               load_alanine_reference, plot_ramachandran, ramachandran_histogram)
from .geometry import dihedral, signed_volume

__all__ = ["dihedral", "signed_volume", "ALANINE_BASINS", "ALANINE_REFERENCE_FILE", "ALPHA_R_PHI",
           "ALPHA_R_PSI", "C7AX_PHI", "alanine_basin", "basin_populations", "basin_ess",
           "basin_free_energies", "ramachandran_histogram", "plot_ramachandran", "load_alanine_reference"]
