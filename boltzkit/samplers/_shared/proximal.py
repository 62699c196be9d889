r"""The proximal point schedule on path measures (PDNS), independent of the state space.

Setting. A sampler defines a path measure ``P_theta`` started at a fixed source; ``P*`` is the
reference path measure ``P_ref`` tilted by the terminal reward ``r(x) = log pi~(x) - log nu(x)``
(``nu`` the reference's terminal law), so its terminal law is the target. From a batch of
trajectories of the current (detached) sampler ``P_{k-1}`` one has, per trajectory,

* ``log_w = log dP*/dP_{k-1} + log Z`` -- the exact path log-weight (``E[exp(log_w)] = Z``);
* ``reward = r(X_T)``.

Proximal step (Guo et al. 2025, arXiv 2510.03824, Prop. 3.1). The subproblem
``argmin_P -E_P[r] + KL(P | P_ref) + (1/eta_k) KL(P | P_{k-1})`` is solved by the geometric
mixture ``P_{k*} ~ P_{k-1}^{1-a_k} P*^{a_k}`` with ``a_k = eta_k / (1 + eta_k)``; relative to the
samples of ``P_{k-1}`` its log-weights are ``s = a_k log_w`` ("model" anchor). Unrolled from
``P_0 = P_ref`` with exact sub-solves, stage ``k`` is ``P_ref^{lam_k} P*^{1 - lam_k}`` with
``lam_k = prod_i (1 - a_i)``, whose log-weights are ``s = log_w - lam_k reward`` ("path"
anchor: an annealing of the terminal law ``nu^lam pi^(1-lam)``; for a masked CTMC with a
uniform ``nu`` it is a temperature annealing of the energy). Either way only the scalar
weights ``softmax(s)`` of the regression change; ``a = 1`` / ``lam = 0`` is the plain,
non-proximal objective.

Step sizes. ``"adaptive"``: the largest step whose stage target stays within ``kl_budget``
nats of the sampler that drew the batch, ``KL^(P_theta | P_{k*}) = log mean exp(s) - mean(s)
<= kl_budget`` (convex in the step, so bisection finds the boundary), or whose tilted weights
keep an ESS fraction of at least ``ess_target``. With the "path" anchor the sampler may not yet
fit the current stage within the budget; the stage target is then repeated (``lam`` stays),
and after ``patience`` such stages the budget is counted on top of the current mismatch, so a
fitting-error floor above the budget cannot stall the iteration. ``"constant"``:
``eta_k = eta * eta_growth**k``. ``"none"``: ``a = 1`` from the start (the non-proximal
baseline).

Stopping rule. The proximal phase ends when the remaining geometric weight of the
reference, ``lam_k`` (``prod (1 - a_i)`` for the model anchor), falls to ``tol`` or below; from
then on ``a = 1`` and ``lam = 0``: the stage target is the target itself.
"""

from __future__ import annotations

import math

import torch

from ...errors import ConfigError, TrainingDivergedError
from ..base import check_choice, check_count, check_number

__all__ = ["ProximalSchedule", "tilted_kl", "ess_fraction", "SCHEDULES", "ANCHORS"]

SCHEDULES = ("adaptive", "constant", "none")
ANCHORS = ("model", "path")
_BISECTIONS = 40


def tilted_kl(s: torch.Tensor) -> float:
    """``KL^(P | P_s) = log mean exp(s) - mean(s)``: the batch estimate of the KL divergence
    from the sampling law ``P`` to its tilt ``P_s ~ exp(s) P``; 0 for constant ``s``, >= 0."""
    s = s.to(torch.float64)
    return float(torch.logsumexp(s, 0) - math.log(s.numel()) - s.mean())


def ess_fraction(s: torch.Tensor) -> float:
    """Kish effective sample size of ``softmax(s)`` divided by the batch size, in (0, 1]."""
    w = torch.softmax(s.to(torch.float64), 0)
    return float(1.0 / (w * w).sum()) / s.numel()


class ProximalSchedule:
    """Step sizes of the proximal point iteration and the tilted weights of each stage.

    Parameters
    ----------
    mode, anchor : "adaptive", "constant" or "none"; "path" or "model" (module docstring).
    kl_budget, ess_target : adaptive: the KL budget per stage, in nats, or, if given, the tilted
        weights' ESS fraction (in (0, 1)) as the criterion instead.
    eta, eta_growth : constant: ``eta_k = eta * eta_growth**k``.
    tol : stopping rule: the proximal phase ends once ``lam_k <= tol``.
    patience : adaptive "path" anchor: stalled stages before the budget counts on top of the
        current mismatch (module docstring).

    Attributes
    ----------
    stage : number of stages started so far (0 before the first).
    step : ``a_k`` of the current stage (in (0, 1]; 1 = full step to the target).
    lam : ``lam_k``, the geometric weight of the reference left in the stage target.
    done : True once the stopping rule has fired (then ``step = 1``, ``lam = 0``).
    """

    def __init__(self, mode: str = "adaptive", anchor: str = "path", *, kl_budget: float = 0.5,
                 ess_target: "float | None" = None, eta: float = 1.0, eta_growth: float = 1.0,
                 tol: float = 1e-3, patience: int = 3):
        check_choice("schedule", mode, SCHEDULES)
        check_choice("anchor", anchor, ANCHORS)
        check_number("kl_budget", kl_budget)
        check_number("eta", eta)
        check_number("tol", tol, upper=1.0)
        if ess_target is not None and not (isinstance(ess_target, (int, float)) and 0 < ess_target < 1):
            raise ConfigError(f"ess_target must be in (0, 1) or None, got {ess_target!r}")
        if isinstance(eta_growth, bool) or not isinstance(eta_growth, (int, float)) \
                or not math.isfinite(eta_growth) or eta_growth < 1:
            raise ConfigError(f"eta_growth must be a finite number >= 1, got {eta_growth!r}")
        check_count("patience", patience)
        self.mode, self.anchor, self.patience = mode, anchor, patience
        self.kl_budget, self.ess_target = float(kl_budget), ess_target
        self.eta, self.eta_growth, self.tol = float(eta), float(eta_growth), float(tol)
        self.stage, self.step, self.lam = 0, 0.0, 1.0
        self.stalled = 0
        self.done = mode == "none"
        if self.done:
            self.step, self.lam = 1.0, 0.0

    # ------------------------------------------------------------------ weights
    def tilt(self, log_w: torch.Tensor, reward: torch.Tensor, *, step: "float | None" = None,
             lam: "float | None" = None) -> torch.Tensor:
        """Log-weights ``s`` (float64) of the stage target relative to the batch's sampler.

        ``step`` / ``lam`` override the current values (used by the bisection).
        """
        log_w = log_w.to(torch.float64)
        if self.anchor == "model":
            return (self.step if step is None else step) * log_w
        return log_w - (self.lam if lam is None else lam) * reward.to(torch.float64)

    def _ok(self, s: torch.Tensor, base: "torch.Tensor | None" = None) -> bool:
        """Whether the tilt ``s`` is within budget of the tilt ``base`` (None: no tilt)."""
        if self.ess_target is not None:
            return ess_fraction(s) >= self.ess_target * (1.0 if base is None else ess_fraction(base))
        return tilted_kl(s) <= self.kl_budget + (0.0 if base is None else tilted_kl(base))

    # ------------------------------------------------------------------ stages
    def advance(self, log_w: torch.Tensor, reward: torch.Tensor) -> None:
        """Start the next stage: choose its step from a fresh batch of the current sampler.

        Parameters
        ----------
        log_w : float64 (B,) exact path log-weights of the batch's trajectories.
        reward : float64 (B,) terminal rewards ``r(X_T)`` (used by the "path" anchor).
        """
        if not bool(torch.isfinite(log_w).all()) or not bool(torch.isfinite(reward).all()):
            raise TrainingDivergedError("non-finite path log-weights or rewards in the batch that "
                                        "sets the proximal step; lower lr or check the energy")
        self.stage += 1
        if self.done:
            return
        if self.anchor == "model":
            a = self._model_step(log_w)
            lam = self.lam * (1.0 - a)
        else:
            lam = self._path_lam(log_w, reward)
            a = 1.0 - lam / self.lam if self.lam > 0 else 1.0
        if lam <= self.tol:
            self.done, a, lam = True, 1.0, 0.0
        self.step, self.lam = float(a), float(lam)

    def _constant_step(self) -> float:
        eta = self.eta * self.eta_growth ** (self.stage - 1)
        return eta / (1.0 + eta)

    def _model_step(self, log_w) -> float:
        if self.mode == "constant":
            return self._constant_step()
        if self._ok(self.tilt(log_w, log_w, step=1.0)):
            return 1.0
        lo, hi = 0.0, 1.0  # ok(lo), not ok(hi); the feasible set is an interval containing 0
        for _ in range(_BISECTIONS):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self._ok(self.tilt(log_w, log_w, step=mid)) else (lo, mid)
        return lo

    def _path_lam(self, log_w, reward) -> float:
        if self.mode == "constant":
            return self.lam * (1.0 - self._constant_step())
        base = self.tilt(log_w, reward, lam=self.lam) if self.stalled >= self.patience else None
        if self._ok(self.tilt(log_w, reward, lam=0.0), base):
            self.stalled = 0
            return 0.0
        if not self._ok(self.tilt(log_w, reward, lam=self.lam), base):
            self.stalled += 1
            return self.lam  # the model has not caught up with the current stage: stay
        self.stalled = 0
        lo, hi = 0.0, self.lam  # not ok(lo), ok(hi): find the smallest feasible lam
        for _ in range(_BISECTIONS):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if self._ok(self.tilt(log_w, reward, lam=mid), base) else (mid, hi)
        return hi

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"stage": self.stage, "step": self.step, "lam": self.lam, "done": self.done,
                "stalled": self.stalled}

    def load_state_dict(self, state: dict) -> None:
        self.stage, self.step = int(state["stage"]), float(state["step"])
        self.lam, self.done = float(state["lam"]), bool(state["done"])
        self.stalled = int(state["stalled"])
