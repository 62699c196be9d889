"""Judging generated sequences: the best-of-N baseline, :func:`diversity` (unique fraction, mean
pairwise Hamming distance) and :func:`novelty` (fraction not in a reference set)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ...errors import ConfigError, TargetError
from ...rewards import check_reward_values

__all__ = ["best_of_n", "diversity", "novelty"]


@torch.no_grad()
def best_of_n(model, reward: Callable, n: int, k: int, *, seed: int = 0) -> torch.Tensor:
    """Best-of-N baseline: draw ``n`` sequences from ``model``, return the ``k`` with the largest
    (scalar) reward, int64 ``(k, L)``. Costs ``n`` reward calls."""
    if not (isinstance(n, int) and isinstance(k, int) and 1 <= k <= n):
        raise ConfigError(f"best_of_n needs integers 1 <= k <= n, got n={n!r}, k={k!r}")
    x = model.sample(n, seed=seed)
    r = check_reward_values(reward(x.to(model.device)), n)
    if r.shape[1] != 1:
        raise TargetError("best_of_n ranks by a scalar reward; combine the objectives first")
    return x[torch.argsort(r[:, 0].cpu(), descending=True)[:k]]


def diversity(tokens: torch.Tensor, *, max_pairs_rows: int = 1000) -> dict:
    """``unique_fraction`` and ``mean_hamming`` (mean pairwise fraction of differing positions,
    over the first ``max_pairs_rows`` sequences)."""
    x = torch.as_tensor(tokens).long()
    uniq = int(torch.unique(x, dim=0).shape[0]) / max(x.shape[0], 1)
    y = x[:max_pairs_rows]
    m = y.shape[0]
    if m < 2:
        return {"unique_fraction": uniq, "mean_hamming": float("nan")}
    diff = (y.unsqueeze(0) != y.unsqueeze(1)).double().mean(-1)
    return {"unique_fraction": uniq, "mean_hamming": float(diff.sum() / (m * (m - 1)))}


def novelty(tokens: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of ``tokens`` rows that do not occur in ``reference``."""
    x, ref = torch.as_tensor(tokens).long(), torch.as_tensor(reference).long()
    known = {tuple(r) for r in ref.tolist()}
    return float(np.mean([tuple(r) not in known for r in x.tolist()])) if x.shape[0] else float("nan")
