r"""Reward targets: tilt a pretrained sequence model toward a reward.

:class:`RewardTarget` is a boltzkit target of kind ``"reward"``: a pretrained
:class:`~boltzkit.models.MaskedDiffusion` ``p_pre`` and a batched reward ``r`` define

    p*(x) \propto p_pre(x) exp(r(x) / alpha),

the maximiser of ``E_p[r] - alpha KL(p || p_pre)``. ``bk.sample(RewardTarget(...))`` fine-tunes
the model toward ``p*`` (method ``"tr2d2"``). A reward maps int64 tokens ``(B, L)`` to ``(B,)``,
or to ``(B, K)`` for K objectives (then ``alpha`` tilts by their weighted sum).

The demos' rewards (``amp_oracles``, ``ars_oracles``, ``PeptideObjectives``) and metrics
(``best_of_n``, ``diversity``, ``novelty``) are in the sequence slice, :mod:`boltzkit.bio.sequences`.
"""

from __future__ import annotations

from typing import Callable, Sequence as Seq

import numpy as np
import torch
from torch import nn

from ._utils import check_positive
from .errors import TargetError

__all__ = ["RewardTarget", "check_reward_values"]


def check_reward_values(r, batch: int, *, name: str = "reward") -> torch.Tensor:
    """Validate a reward evaluation and return it as float64 ``(B, K)``."""
    if not isinstance(r, torch.Tensor):
        raise TargetError(f"{name} must return a torch.Tensor, got {type(r).__name__}")
    if r.ndim not in (1, 2) or r.shape[0] != batch or (r.ndim == 2 and r.shape[1] < 1):
        raise TargetError(f"{name} returned shape {tuple(r.shape)} for a batch of {batch} sequences; it "
                          f"must return ({batch},) (one reward per sequence) or ({batch}, K) for K objectives")
    if not r.dtype.is_floating_point:
        raise TargetError(f"{name} returned dtype {r.dtype}; rewards must be floating point (use .float())")
    bad = ~torch.isfinite(r)
    if bool(bad.any()):
        rows = bad.reshape(batch, -1).any(1).nonzero().flatten()
        raise TargetError(f"{name} returned NaN or infinite values for {int(rows.numel())} of {batch} "
                          f"sequences (first at batch index {int(rows[0])}); rewards must be finite")
    return r.detach().to(torch.float64).reshape(batch, -1)


class RewardTarget(nn.Module):
    r"""The reward-tilted law ``p*(x) \propto p_pre(x) exp(r(x) / alpha)`` of a pretrained model.

    Parameters
    ----------
    model : the pretrained :class:`~boltzkit.models.MaskedDiffusion` ``p_pre``.
    reward : batched callable, int64 tokens ``(B, L)`` -> ``(B,)`` or ``(B, K)`` (K objectives).
    alpha : KL strength (> 0): small alpha follows the reward, large alpha stays near ``p_pre``.
    weights : weights of the K objectives in the scalar reward (default: all 1).
    name : shown in results.

    The reward is checked on 8 sequences drawn from the model at construction (shape, dtype,
    finite values), so a malformed reward fails before any training.
    """

    kind = "reward"

    def __init__(self, model, reward: Callable, alpha: float = 0.1, *, weights: "Seq[float] | None" = None,
                 name: "str | None" = None):
        super().__init__()
        from .bio.sequences.masked_diffusion import MaskedDiffusion

        if not isinstance(model, MaskedDiffusion):
            raise TargetError(f"model must be a boltzkit MaskedDiffusion (pretrain one with "
                              f"bk.MaskedDiffusion.pretrain(dataset)), got {type(model).__name__}")
        if not callable(reward):
            raise TargetError(f"reward must be a callable tokens (B, L) -> (B,), got {type(reward).__name__}")
        alpha = check_positive("alpha", alpha, what="a positive finite number (the KL strength)",
                               error=TargetError)
        self.model, self.reward_fn, self.alpha = model, reward, alpha
        default = getattr(reward, "name", getattr(reward, "__name__", type(reward).__name__))
        self.name = name or (default if default != "<lambda>" else "reward")
        self.domain = model.domain
        with torch.no_grad():
            k = self.n_objectives = self.objectives(model.sample(8, seed=0)).shape[1]
        w = np.ones(k) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (k,) or not np.all(np.isfinite(w)):
            raise TargetError(f"weights must hold {k} finite numbers (one per objective), got {weights!r}")
        self.register_buffer("weights", torch.as_tensor(w))

    def objectives(self, tokens: torch.Tensor) -> torch.Tensor:
        """Validated float64 objectives ``(B, K)``."""
        tokens = torch.as_tensor(tokens)
        dev = self.model.device
        return check_reward_values(self.reward_fn(tokens.to(dev)), tokens.shape[0],
                                   name=f"reward {self.name!r}").to(dev)

    def scalarize(self, objectives: torch.Tensor) -> torch.Tensor:
        """The scalar reward ``(B,)`` (weighted sum of the objectives) that tilts the law."""
        return objectives @ self.weights.to(objectives)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Scalar reward ``(B,)`` (float64)."""
        return self.scalarize(self.objectives(tokens))

    def to_config(self) -> dict:
        return {"name": self.name, "kind": self.kind, "alpha": self.alpha, "domain": self.domain.to_config(),
                "n_objectives": self.n_objectives, "weights": self.weights.tolist(),
                "model": self.model.config()}

    def __repr__(self):
        return f"RewardTarget({self.name!r}, alpha={self.alpha}, domain={self.domain!r})"
