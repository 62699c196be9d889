r"""Peptide descriptors and the rewards of the sequence demos, trained here in seconds:

* :func:`amp_oracles` -- two logistic-regression antimicrobial-peptide classifiers on
  :func:`peptide_features`, fitted to disjoint halves of the modlamp peptides: one to fine-tune
  on and one to evaluate with, so reward hacking shows as a gap between the two;
* :class:`PeptideObjectives` -- four objectives for multi-objective design;
* :func:`ars_oracles` -- two additive (per-position) ridge regressions of ARS1 selection
  enrichment on disjoint halves of the logomaker library (:mod:`~boltzkit.bio.sequences.dataset`).

Each maps int64 tokens ``(B, L)`` to ``(B,)`` (``(B, 4)``), the reward of a
:class:`~boltzkit.rewards.RewardTarget`.
"""

from __future__ import annotations

import math
from typing import Sequence as Seq

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..._utils import check_choice
from ...errors import DatasetError
from .dataset import ars_dna, peptides

__all__ = ["peptide_features", "net_charge", "gravy", "hydrophobic_moment", "LogisticOracle", "amp_oracles",
           "PeptideObjectives", "SiteLinearOracle", "ars_oracles", "KYTE_DOOLITTLE", "EISENBERG", "PKA"]

# Kyte & Doolittle (1982) hydropathy; Eisenberg et al. (1984) consensus hydrophobicity;
# pKa values (CRC Handbook, as used by modlamp's charge).
KYTE_DOOLITTLE = {"A": 1.8, "R": -4.5, "N": -3.5, "D": -3.5, "C": 2.5, "Q": -3.5, "E": -3.5, "G": -0.4,
                  "H": -3.2, "I": 4.5, "L": 3.8, "K": -3.9, "M": 1.9, "F": 2.8, "P": -1.6, "S": -0.8,
                  "T": -0.7, "W": -0.9, "Y": -1.3, "V": 4.2}
EISENBERG = {"A": 0.62, "R": -2.53, "N": -0.78, "D": -0.90, "C": 0.29, "Q": -0.85, "E": -0.74, "G": 0.48,
             "H": -0.40, "I": 1.38, "L": 1.06, "K": -1.50, "M": 0.64, "F": 1.19, "P": 0.12, "S": -0.18,
             "T": -0.05, "W": 0.81, "Y": 0.26, "V": 1.08}
PKA = {"positive": {"Nterm": 9.38, "K": 10.67, "R": 12.10, "H": 6.04},
       "negative": {"Cterm": 2.15, "D": 3.71, "E": 4.15, "C": 8.14, "Y": 10.10}}


# ---------------------------------------------------------------------------- peptide features
def _table(alphabet, values: dict) -> torch.Tensor:
    return torch.tensor([values.get(a, 0.0) for a in alphabet], dtype=torch.float64)


def _residue_mask(tokens, alphabet, pad):
    return tokens != alphabet.index(pad) if pad is not None and pad in alphabet else torch.ones_like(tokens, dtype=torch.bool)


def _residue_values(tokens, alphabet, pad, scale: dict):
    """``scale`` at each residue (0 at pads) and the residue mask, both float64 ``(B, L)``."""
    tokens = torch.as_tensor(tokens)
    res = _residue_mask(tokens, list(alphabet), pad).double()
    return _table(alphabet, scale).to(tokens.device)[tokens] * res, res


def net_charge(tokens: torch.Tensor, alphabet: Seq[str], *, pad: "str | None" = "-", ph: float = 7.0) -> torch.Tensor:
    """Net charge at ``ph`` (Henderson-Hasselbalch, free termini, CRC pKa values), float64 (B,)."""
    tokens = torch.as_tensor(tokens)
    res = _residue_mask(tokens, list(alphabet), pad)
    counts = (F.one_hot(tokens, len(alphabet)).double() * res.unsqueeze(-1)).sum(1)  # (B, q)
    pos = {a: 1.0 / (1.0 + 10 ** (ph - pk)) for a, pk in PKA["positive"].items()}
    neg = {a: 1.0 / (1.0 + 10 ** (pk - ph)) for a, pk in PKA["negative"].items()}
    charge = counts @ (_table(alphabet, pos) - _table(alphabet, neg)).to(counts)
    return charge + pos["Nterm"] - neg["Cterm"]


def hydrophobic_moment(tokens: torch.Tensor, alphabet: Seq[str], *, pad: "str | None" = "-",
                       angle: float = 100.0) -> torch.Tensor:
    """Eisenberg hydrophobic moment per residue, ``|sum_j h_j e^{i j angle}| / n``, float64 (B,)."""
    h, res = _residue_values(tokens, alphabet, pad, EISENBERG)
    theta = math.radians(angle) * torch.arange(h.shape[1], dtype=torch.float64, device=h.device)
    m = torch.sqrt((h * torch.cos(theta)).sum(1) ** 2 + (h * torch.sin(theta)).sum(1) ** 2)
    return m / res.sum(1).clamp_min(1.0)


def gravy(tokens: torch.Tensor, alphabet: Seq[str], *, pad: "str | None" = "-") -> torch.Tensor:
    """Grand average of Kyte-Doolittle hydropathy, float64 (B,)."""
    h, res = _residue_values(tokens, alphabet, pad, KYTE_DOOLITTLE)
    return h.sum(1) / res.sum(1).clamp_min(1.0)


def peptide_features(tokens: torch.Tensor, alphabet: Seq[str], *, pad: "str | None" = "-",
                     dipeptides: bool = True) -> torch.Tensor:
    """Batched peptide descriptors, float64 ``(B, F)``.

    Amino-acid composition (fractions of the 20 residues), dipeptide composition (400 fractions
    of adjacent residue pairs, optional), net charge at pH 7 / 10, GRAVY, Eisenberg hydrophobic
    moment and length / L. Padding (``pad``) is ignored; a pad inside a sequence only breaks
    the dipeptides across it.
    """
    tokens = torch.as_tensor(tokens).long()
    alphabet = list(alphabet)
    aa = [i for i, a in enumerate(alphabet) if a in KYTE_DOOLITTLE]
    res = _residue_mask(tokens, alphabet, pad)
    n = res.sum(1).clamp_min(1).double()
    onehot = F.one_hot(tokens, len(alphabet)).double()[..., aa] * res.unsqueeze(-1)  # (B, L, 20)
    feats = [onehot.sum(1) / n.unsqueeze(1)]
    if dipeptides:
        pair = torch.einsum("bli,blj->bij", onehot[:, :-1], onehot[:, 1:]).reshape(tokens.shape[0], -1)
        feats.append(pair / (n - 1).clamp_min(1).unsqueeze(1))
    feats += [net_charge(tokens, alphabet, pad=pad).unsqueeze(1) / 10.0,
              gravy(tokens, alphabet, pad=pad).unsqueeze(1),
              hydrophobic_moment(tokens, alphabet, pad=pad).unsqueeze(1),
              (n / tokens.shape[1]).unsqueeze(1)]
    return torch.cat(feats, 1)


# ---------------------------------------------------------------------------- oracles
def _oracle_pair(dataset, seed: int, fit, task: str, key: str, score) -> tuple:
    """``(finetune, eval)`` oracles fitted by ``fit(half, name=...)`` on disjoint random halves of
    ``dataset``; each has ``info[key] = score(oracle, other half)``."""
    a, b = dataset.split(0.5, seed=seed)
    pair = fit(a, name=f"{task}_finetune_oracle"), fit(b, name=f"{task}_eval_oracle")
    for oracle, other in zip(pair, (b, a)):
        with torch.no_grad():
            oracle.info[key] = score(oracle, other)
    return pair


def _fit_logistic(X: np.ndarray, y: np.ndarray, l2: float) -> "tuple[np.ndarray, float]":
    """L2-regularized logistic regression by L-BFGS (scipy): weights, bias."""
    from scipy.optimize import minimize

    n, f = X.shape
    s = 2 * y - 1

    def loss(theta):
        w, b = theta[:f], theta[f]
        z = s * (X @ w + b)
        val = np.logaddexp(0, -z).mean() + 0.5 * l2 * w @ w / n
        g = -s * (1 - 1 / (1 + np.exp(-z)))  # d/dlogit of the mean loss (times n)
        return val, np.concatenate([X.T @ g / n + l2 * w / n, [g.mean()]])

    res = minimize(loss, np.zeros(f + 1), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    return res.x[:f], float(res.x[f])


class LogisticOracle(nn.Module):
    """A logistic-regression sequence classifier on :func:`peptide_features`.

    ``output``: ``"prob"`` (P(class 1), default), ``"logit"`` or ``"log_prob"``.
    """

    def __init__(self, weight, bias, mean, std, alphabet, *, pad="-", output: str = "prob",
                 name: str = "amp_oracle", info: "dict | None" = None):
        super().__init__()
        check_choice("output", output, ("prob", "logit", "log_prob"))
        for key, value in (("weight", weight), ("bias", float(bias)), ("mean", mean), ("std", std)):
            self.register_buffer(key, torch.as_tensor(np.asarray(value, dtype=np.float64)))
        self.alphabet, self.pad, self.output, self.name = list(alphabet), pad, output, name
        self.info = dict(info or {})

    def logit(self, tokens):
        f = peptide_features(torch.as_tensor(tokens).to(self.weight.device), self.alphabet, pad=self.pad)
        return ((f - self.mean) / self.std) @ self.weight + self.bias

    def forward(self, tokens):
        z = self.logit(tokens)
        return {"prob": torch.sigmoid, "logit": lambda v: v, "log_prob": F.logsigmoid}[self.output](z)

    @classmethod
    def fit(cls, dataset, *, l2: float = 10.0, output: str = "prob", name: str = "amp_oracle") -> "LogisticOracle":
        """Fit on a labelled :class:`~boltzkit.datasets.SequenceDataset` (labels 0/1)."""
        if dataset.labels is None or dataset.labels.ndim != 1:
            raise DatasetError("the oracle needs a data set with one 0/1 label per sequence")
        y = dataset.labels.numpy()
        if not np.all(np.isin(y, (0.0, 1.0))) or y.min() == y.max():
            raise DatasetError("labels must be 0/1 with both classes present")
        X = peptide_features(dataset.tokens, dataset.alphabet, pad=dataset.pad).numpy()
        mean, std = X.mean(0), X.std(0) + 1e-6
        Z = (X - mean) / std
        w, b = _fit_logistic(Z, y, l2)
        acc = float((((Z @ w + b) > 0) == (y > 0.5)).mean())
        return cls(w, b, mean, std, dataset.alphabet, pad=dataset.pad, output=output, name=name,
                   info={"train_accuracy": acc, "n_train": len(dataset)})


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import rankdata

    r = rankdata(score)
    n1 = int((y > 0.5).sum())
    return float((r[y > 0.5].sum() - n1 * (n1 + 1) / 2) / (n1 * (y.size - n1)))


def amp_oracles(dataset=None, *, seed: int = 0, l2: float = 10.0, output: str = "prob"
                ) -> "tuple[LogisticOracle, LogisticOracle]":
    """Two AMP classifiers trained on disjoint random halves of ``dataset``.

    Parameters
    ----------
    dataset : labelled peptides (default :func:`~boltzkit.bio.sequences.dataset.peptides`).
    seed : seed of the split.

    Returns
    -------
    ``(finetune_oracle, eval_oracle)``; each has ``info["heldout_auc"]`` measured on the other half.
    """
    return _oracle_pair(peptides() if dataset is None else dataset, seed,
                        lambda d, name: LogisticOracle.fit(d, l2=l2, output=output, name=name), "amp",
                        "heldout_auc", lambda o, d: _auc(o.logit(d.tokens).numpy(), d.labels.numpy()))


class PeptideObjectives(nn.Module):
    """Four peptide objectives, all maximised, ``(B, 4)``:

    0. the AMP oracle's output; 1. ``-GRAVY`` / 4 (low hydropathy, a haemolysis proxy);
    2. the hydrophobic moment (amphipathicity); 3. ``-distance`` of the net charge at pH 7 from
    the window ``charge_window`` (0 inside it), / 4.
    """

    names = ("amp", "neg_gravy", "hydrophobic_moment", "charge_window")

    def __init__(self, amp_oracle: LogisticOracle, *, charge_window=(2.0, 9.0)):
        super().__init__()
        self.amp, self.window = amp_oracle, (float(charge_window[0]), float(charge_window[1]))
        self.alphabet, self.pad, self.name = amp_oracle.alphabet, amp_oracle.pad, "peptide_objectives"

    def forward(self, tokens):
        tokens = torch.as_tensor(tokens)
        c = net_charge(tokens, self.alphabet, pad=self.pad)
        lo, hi = self.window
        window = -((lo - c).clamp_min(0) + (c - hi).clamp_min(0)) / 4.0
        return torch.stack([self.amp(tokens).double(), -gravy(tokens, self.alphabet, pad=self.pad) / 4.0,
                            hydrophobic_moment(tokens, self.alphabet, pad=self.pad), window], 1)


class SiteLinearOracle(nn.Module):
    """Additive per-position model ``r(x) = b + sum_l W[l, x_l]`` (float64 (B,))."""

    def __init__(self, weight, bias, *, name: str = "site_linear_oracle", info: "dict | None" = None):
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(np.asarray(weight, dtype=np.float64)))
        self.register_buffer("bias", torch.tensor(float(bias), dtype=torch.float64))
        self.name, self.info = name, dict(info or {})

    def forward(self, tokens):
        tokens = torch.as_tensor(tokens).to(self.weight.device).long()
        L = self.weight.shape[0]
        return self.weight[torch.arange(L, device=tokens.device), tokens].sum(1) + self.bias

    @classmethod
    def fit(cls, dataset, *, l2: float = 10.0, name: str = "site_linear_oracle") -> "SiteLinearOracle":
        """Ridge regression of the labels on the one-hot sequence (closed form)."""
        if dataset.labels is None or dataset.labels.ndim != 1:
            raise DatasetError("the oracle needs a data set with one real label per sequence")
        X = F.one_hot(dataset.tokens, len(dataset.alphabet)).reshape(len(dataset), -1).double().numpy()
        y = dataset.labels.numpy()
        mx, my = X.mean(0), y.mean()
        Xc = X - mx
        w = np.linalg.solve(Xc.T @ Xc + l2 * np.eye(X.shape[1]), Xc.T @ (y - my))
        return cls(w.reshape(dataset.length, len(dataset.alphabet)), my - mx @ w, name=name,
                   info={"n_train": len(dataset)})


def ars_oracles(dataset=None, *, seed: int = 0, l2: float = 10.0
                ) -> "tuple[SiteLinearOracle, SiteLinearOracle]":
    """Two additive ARS-enrichment regressors on disjoint halves of ``dataset``
    (default :func:`~boltzkit.bio.sequences.dataset.ars_dna`); ``info["heldout_r"]`` is the Pearson
    correlation on the other half."""
    return _oracle_pair(ars_dna() if dataset is None else dataset, seed,
                        lambda d, name: SiteLinearOracle.fit(d, l2=l2, name=name), "ars", "heldout_r",
                        lambda o, d: float(np.corrcoef(o(d.tokens).numpy(), d.labels.numpy())[0, 1]))
