"""Biological sequences (peptides, DNA): fixed-length tokens, their masked diffusion model and oracles.

* :mod:`~boltzkit.bio.sequences.dataset` -- :class:`SequenceDataset` (strings, FASTA) and the
  loaders :func:`peptides` (modlamp) and :func:`ars_dna` (logomaker);
* :mod:`~boltzkit.bio.sequences.masked_diffusion` -- :class:`MaskedDiffusion` (MDLM pretraining,
  ELBO, exact ``log p`` of short sequences) and the exact denoiser of a Markov chain;
* :mod:`~boltzkit.bio.sequences.oracles` -- peptide descriptors and the demos' reward oracles;
* :mod:`~boltzkit.bio.sequences.metrics` -- best-of-N, diversity and novelty of generated sequences.

The reward-tilted law of a model is :class:`~boltzkit.rewards.RewardTarget` (a target), which
the ``tr2d2`` sampler fine-tunes toward. The dataset names are imported here; the other modules
on first use.
"""

from .. import lazy_submodules
from .dataset import AMINO_ACIDS, DNA, SequenceDataset, ars_dna, peptides

__all__ = ["SequenceDataset", "peptides", "ars_dna", "AMINO_ACIDS", "DNA"]
__getattr__ = lazy_submodules(__name__, ("masked_diffusion", "oracles", "metrics"))
