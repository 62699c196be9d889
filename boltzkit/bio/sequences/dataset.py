r"""Fixed-length sequence data sets (peptides, DNA) for masked diffusion models.

:class:`SequenceDataset` holds int64 tokens ``(N, L)`` over an alphabet, optional float labels
and an optional padding symbol (variable-length sequences are right-padded to ``L``). Build
it from strings (:meth:`SequenceDataset.from_strings`) or a FASTA file
(:meth:`SequenceDataset.from_fasta`); its :attr:`~SequenceDataset.domain` is a
:class:`~boltzkit.domains.Sequence`.

Two loaders read real data that ships inside installable packages (no downloads; ``pip install
'boltzkit[sequences]'``): :func:`peptides` (modlamp's antimicrobial peptides and UniProt
controls) and :func:`ars_dna` (logomaker's yeast ARS1 mutant library). The packages are located,
never imported, so loading costs only the file read.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterable, Sequence as Seq

import numpy as np
import torch

from ..._utils import package_files
from ...domains.base import Sequence
from ...errors import DatasetError

__all__ = ["SequenceDataset", "peptides", "ars_dna", "AMINO_ACIDS", "DNA"]

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
DNA = "ACGT"


class SequenceDataset:
    """Sequences of one length ``L`` over an alphabet, as int64 tokens.

    Parameters
    ----------
    tokens : int64 array-like ``(N, L)`` with values in ``[0, len(alphabet))``.
    alphabet : string or list of single-character tokens.
    labels : optional float array ``(N,)`` or ``(N, K)``.
    pad : optional padding symbol (must be in ``alphabet``); trailing pads are removed by
        :meth:`strings`.
    name : a short description (stored in configs).

    Examples
    --------
    >>> ds = SequenceDataset.from_strings(["ACG", "AC"], alphabet="ACGT", pad="-")
    >>> ds.tokens.shape, ds.alphabet
    (torch.Size([2, 3]), ['A', 'C', 'G', 'T', '-'])
    """

    def __init__(self, tokens, alphabet: "str | Seq[str]", *, labels=None, pad: "str | None" = None,
                 name: str = "sequences", info: "dict | None" = None):
        self.alphabet = list(alphabet)
        if len(self.alphabet) < 2:
            raise DatasetError(f"an alphabet needs at least two symbols, got {self.alphabet!r}")
        if len(set(self.alphabet)) != len(self.alphabet):
            raise DatasetError(f"the alphabet has repeated symbols: {self.alphabet!r}")
        tokens = torch.as_tensor(np.asarray(tokens)).long()
        if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise DatasetError(f"a sequence data set needs at least one non-empty sequence; got "
                               f"tokens of shape {tuple(tokens.shape)} (expected (N >= 1, L >= 1))")
        if bool(((tokens < 0) | (tokens >= len(self.alphabet))).any()):
            raise DatasetError(f"tokens must be integers in [0, {len(self.alphabet)}) for an alphabet "
                               f"of {len(self.alphabet)} symbols")
        if pad is not None and pad not in self.alphabet:
            raise DatasetError(f"the padding symbol {pad!r} is not in the alphabet {self.alphabet!r}")
        self.tokens, self.pad, self.name = tokens, pad, str(name)
        self.labels = None
        if labels is not None:
            lab = torch.as_tensor(np.asarray(labels, dtype=np.float64))
            if lab.shape[0] != tokens.shape[0] or lab.ndim not in (1, 2):
                raise DatasetError(f"labels have shape {tuple(lab.shape)} for {tokens.shape[0]} "
                                   "sequences; give one value (N,) or one row (N, K) per sequence")
            self.labels = lab
        self.info = dict(info or {})

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_strings(cls, seqs: Iterable[str], *, alphabet: "str | Seq[str]", labels=None,
                     length: "int | None" = None, pad: "str | None" = None,
                     drop_longer: bool = False, name: str = "sequences") -> "SequenceDataset":
        """Tokenize strings (one character per symbol).

        Parameters
        ----------
        seqs : the sequences.
        alphabet : allowed symbols; with ``pad`` not in it, the pad symbol is appended.
        labels : optional values per sequence (dropped together with dropped sequences).
        length : the fixed length L (default: the longest sequence). Shorter sequences need
            ``pad``; longer ones raise unless ``drop_longer=True``.
        pad : padding symbol for right-padding shorter sequences.
        drop_longer : drop sequences longer than ``length`` instead of raising (the count is
            kept in ``info["n_dropped_longer"]``).
        """
        seqs = [str(s) for s in seqs]
        if not seqs:
            raise DatasetError("no sequences given: the data set would be empty")
        alphabet = list(alphabet)
        if pad is not None and pad not in alphabet:
            alphabet.append(pad)
        if any(len(a) != 1 for a in alphabet):
            raise DatasetError("from_strings needs single-character symbols; build the tokens "
                               "yourself and call SequenceDataset(tokens, alphabet) for others")
        lut = {a: i for i, a in enumerate(alphabet)}
        empty = [i for i, s in enumerate(seqs) if not s]
        if empty:
            raise DatasetError(f"{len(empty)} empty sequence(s) (first at index {empty[0]}); remove them")
        bad = [(i, j, c) for i, s in enumerate(seqs) for j, c in enumerate(s) if c not in lut]
        if bad:
            chars = sorted({c for _, _, c in bad})
            where = ", ".join(f"sequence {i} position {j} ({c!r})" for i, j, c in bad[:5])
            raise DatasetError(f"{len(bad)} character(s) outside the alphabet {''.join(alphabet)!r}: "
                               f"{chars}; first at {where}. Fix the sequences or extend the alphabet")
        lengths = np.array([len(s) for s in seqs])
        L = int(lengths.max()) if length is None else int(length)
        if L < 1:
            raise DatasetError(f"length must be a positive integer, got {length!r}")
        keep = lengths <= L
        longer = np.flatnonzero(~keep)
        if longer.size and not drop_longer:
            i = int(longer[0])
            raise DatasetError(f"{longer.size} sequence(s) are longer than length={L} (first: index "
                               f"{i}, length {lengths[i]}); raise length or pass drop_longer=True")
        shorter = np.flatnonzero((lengths < L) & keep)
        if shorter.size and pad is None:
            i = int(shorter[0])
            raise DatasetError(f"sequences have different lengths ({lengths.min()}..{lengths.max()}; "
                               f"index {i} has {lengths[i]} < {L}); pass pad='-' to right-pad them")
        kept = [s + (pad or "") * (L - len(s)) for s, k in zip(seqs, keep) if k]
        if not kept:
            raise DatasetError(f"every sequence is longer than length={L}: the data set would be empty")
        tokens = torch.tensor([[lut[c] for c in s] for s in kept], dtype=torch.int64)
        if labels is not None:
            labels = np.asarray(labels, dtype=np.float64)
            if labels.shape[0] != len(seqs):
                raise DatasetError(f"{labels.shape[0]} labels for {len(seqs)} sequences")
            labels = labels[keep]
        return cls(tokens, alphabet, labels=labels, pad=pad, name=name,
                   info={"n_dropped_longer": int(longer.size)})

    @classmethod
    def from_fasta(cls, path, *, alphabet: "str | Seq[str]", uppercase: bool = True,
                   **kw) -> "SequenceDataset":
        """Read a FASTA file (``>name`` header lines, sequence possibly over several lines).

        Remaining keywords go to :meth:`from_strings`; the record names are kept in
        ``info["names"]``.
        """
        path = Path(path)
        if not path.exists():
            raise DatasetError(f"no FASTA file at {path}")
        opener = gzip.open if path.suffix == ".gz" else open
        names, seqs = [], []
        with opener(path, "rt") as fh:
            for line in fh:
                line = line.strip()
                if not line or line.startswith(";"):
                    continue
                if line.startswith(">"):
                    names.append(line[1:].strip())
                    seqs.append([])
                elif not seqs:
                    raise DatasetError(f"{path} is not FASTA: sequence data before the first '>' header")
                else:
                    seqs[-1].append(line.upper() if uppercase else line)
        if not seqs:
            raise DatasetError(f"{path} holds no FASTA records: the data set would be empty")
        ds = cls.from_strings(["".join(s) for s in seqs], alphabet=alphabet, **kw)
        ds.info["names"] = names
        return ds

    # ------------------------------------------------------------------ views
    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def domain(self) -> Sequence:
        """The :class:`~boltzkit.domains.Sequence` domain of these tokens."""
        return Sequence(self.length, self.alphabet)

    @property
    def pad_index(self) -> "int | None":
        return None if self.pad is None else self.alphabet.index(self.pad)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, idx) -> "SequenceDataset":
        idx = torch.atleast_1d(torch.as_tensor(idx))
        return SequenceDataset(self.tokens[idx], self.alphabet, pad=self.pad, name=self.name,
                               labels=None if self.labels is None else self.labels[idx], info=self.info)

    def strings(self, tokens: "torch.Tensor | None" = None) -> "list[str]":
        """The sequences as strings, trailing pads removed (``tokens`` default: the data set's)."""
        x = self.tokens if tokens is None else torch.as_tensor(tokens)
        out = ["".join(self.alphabet[i] for i in row) for row in x.long().tolist()]
        return [s.rstrip(self.pad) for s in out] if self.pad is not None else out

    def split(self, fraction: float = 0.5, *, seed: int = 0) -> "tuple[SequenceDataset, SequenceDataset]":
        """Random disjoint split into ``(first, rest)`` with ``round(fraction * N)`` in the first."""
        if not 0.0 < fraction < 1.0:
            raise DatasetError(f"fraction must be in (0, 1), got {fraction!r}")
        n = len(self)
        k = int(round(fraction * n))
        if k == 0 or k == n:
            raise DatasetError(f"a {fraction} split of {n} sequences leaves one side empty")
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
        return self[perm[:k]], self[perm[k:]]

    def __repr__(self):
        lab = "" if self.labels is None else f", labels={tuple(self.labels.shape)}"
        return (f"SequenceDataset({self.name!r}, n={len(self)}, length={self.length}, "
                f"alphabet={''.join(self.alphabet)!r}{lab})")


# ---------------------------------------------------------------------------- loaders
def _package_file(package: str, relative: str, extra: str) -> str:
    """Path of a data file inside an installed package, located without importing it."""
    return package_files(
        package, [relative],
        not_installed=(f"this data set ships inside the {package!r} package, which is not installed. "
                       f"Install it with: pip install 'boltzkit[{extra}]' (or pip install {package})"),
        missing=lambda absent: DatasetError(f"{absent[0]} is missing from the installed {package!r}; "
                                            f"reinstall it (pip install --force-reinstall {package})"))[0]


def peptides(max_length: int = 48, *, pad: str = "-", source: str = "AMPvsUniProt") -> SequenceDataset:
    """Antimicrobial peptides vs UniProt controls, from modlamp (label 1 = AMP, 0 = control).

    Parameters
    ----------
    max_length : sequences longer than this are dropped (48 keeps about 95 %); shorter ones
        are right-padded with ``pad``.
    source : one of modlamp's labelled sets: ``"AMPvsUniProt"`` (5,200 peptides),
        ``"AMPvsTMset"`` (412) or ``"ACP_CancPPD_vs_Random"`` (826).

    Returns
    -------
    SequenceDataset over the 20 amino acids plus ``pad``, with float labels.
    """
    sources = ("AMPvsUniProt", "AMPvsTMset", "ACP_CancPPD_vs_Random", "ACP_CancPPD_vs_TM")
    if source not in sources:
        raise DatasetError(f"unknown peptide source {source!r}; choose one of {sources}")
    path = _package_file("modlamp", f"data/{source}.csv", "sequences")
    seqs, labels = [], []
    with open(path) as fh:
        next(fh)  # header: n_samples, n_features, class names
        for line in fh:
            if line.strip():
                s, lab = line.rsplit(",", 1)
                seqs.append(s.strip().upper())
                labels.append(float(lab))
    return SequenceDataset.from_strings(seqs, alphabet=AMINO_ACIDS, labels=labels, length=max_length,
                                        pad=pad, drop_longer=True, name=f"modlamp {source}")


def ars_dna(n: "int | None" = 20_000, *, seed: int = 0, min_library_count: int = 1) -> SequenceDataset:
    """Yeast ARS1 mutant-library sequences (150 bp) with selection-enrichment labels, from logomaker.

    Parameters
    ----------
    n : number of sequences drawn at random without replacement (None = all 603,569; about
        0.7 GB of int64 tokens).
    seed : seed of that draw.
    min_library_count : keep sequences seen at least this often in the unselected library.

    Returns
    -------
    SequenceDataset over ``"ACGT"`` with labels ``log((selected + 1) / (library + 1))`` and the
    raw counts in ``info["library_ct"]`` / ``info["selected_ct"]`` (numpy arrays).
    """
    path = _package_file("logomaker", "examples/datafiles/ars_sequences.txt.gz", "sequences")
    lib, sel, seqs = [], [], []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            if line.startswith("#") or line.startswith("library_ct") or not line.strip():
                continue
            a, b, s = line.split()
            lib.append(int(a))
            sel.append(int(b))
            seqs.append(s)
    lib, sel = np.asarray(lib), np.asarray(sel)
    idx = np.flatnonzero(lib >= min_library_count)
    if n is not None:
        if int(n) < 1:
            raise DatasetError(f"n must be a positive integer or None, got {n!r}")
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=min(int(n), idx.size), replace=False))
    labels = np.log((sel[idx] + 1.0) / (lib[idx] + 1.0))
    ds = SequenceDataset.from_strings([seqs[i] for i in idx], alphabet=DNA, labels=labels,
                                      name="logomaker ARS1 library")
    ds.info.update(library_ct=lib[idx], selected_ct=sel[idx])
    return ds
