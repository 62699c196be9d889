"""One check for energies that turn non-finite during sampling, shared by every sampler.

The 8-state check before any work (:func:`boltzkit.energies.base.validate_target`) cannot see
a region the sampler reaches only later. Samplers call :func:`check_energies` on the values
they evaluate; on a NaN (or ``-inf``) energy, or a non-finite gradient at a finite energy,
it raises :class:`~boltzkit.errors.NonFiniteEnergyError` saying how many values, where in
the run, and the range of the states that produced them, instead of letting a Metropolis step
silently reject the region or a trainer report a divergence. ``+inf`` is an energy, not an
error: it means zero density (e.g. clashes in :mod:`boltzkit.energies.molecular`). States
that are themselves non-finite are skipped: a sampler whose states overflow diverged on its
own, and says so.

:func:`at_step` adds the step to an error raised deeper down (the trainer knows the step, the
energy wrapper does not).
"""

from __future__ import annotations

import torch

from .errors import NonFiniteEnergyError

__all__ = ["at_step", "check_energies"]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def check_energies(u: "torch.Tensor | None", x: torch.Tensor, *, name: str, where: str = "",
                   grad: "torch.Tensor | None" = None, energy_fn=None, energy=None) -> None:
    """Raise :class:`NonFiniteEnergyError` if ``u`` (B,) holds NaN or ``-inf`` at finite states
    ``x`` (B, ...), or ``grad`` (B, ...) is non-finite where the energy is finite.

    ``name`` names the energy (``"DoubleWell.energy"``), ``where`` the place in the run
    (``"AIS level 12 of 200"``). With gradients only (``u=None``), ``energy_fn`` is evaluated
    at the offending states for the message. ``energy``: the energy evaluated; where it is a
    target seen in a frame (it has ``hint.to_x``, e.g. a scale probe's frame), the message
    gives the states in the target's own coordinates. Costs one device sync when all is well.
    """
    ok_x = torch.isfinite(_flat(x)).all(1)
    bad_u = None if u is None else (torch.isnan(u) | torch.isneginf(u)) & ok_x
    bad_g = None
    if grad is not None:
        fin_u = ok_x if u is None else ok_x & ~torch.isnan(u) & ~torch.isinf(u)
        bad_g = ~torch.isfinite(_flat(grad)).all(1) & fin_u
    flags = [b for b in (bad_u, bad_g) if b is not None]
    if not flags or not bool(torch.stack([b.any() for b in flags]).any()):
        return
    n = int(x.shape[0])
    parts, sel = [], torch.zeros(n, dtype=torch.bool, device=x.device)
    if bad_u is not None and bool(bad_u.any()):
        n_nan, n_ninf = int((torch.isnan(u) & ok_x).sum()), int((torch.isneginf(u) & ok_x).sum())
        parts.append(" and ".join(s for s in (f"{n_nan} NaN" * bool(n_nan), f"{n_ninf} -inf" * bool(n_ninf)) if s)
                     + f" energies out of {n} states")
        sel |= bad_u
    if bad_g is not None and bool(bad_g.any()):
        k = int(bad_g.sum())
        text = f"non-finite gradients (NaN or inf) at {k} of {n} states"
        if u is None and energy_fn is not None:
            with torch.no_grad():
                ub = energy_fn(x[bad_g].detach())
            n_nan = int(torch.isnan(ub).sum())
            text += f" (the energy there: {n_nan} NaN of {k})" if n_nan else " whose energies are finite"
        parts.append(text)
        sel |= bad_g
    xs = x[sel].detach()
    to_x = getattr(getattr(energy, "hint", None), "to_x", None)
    if callable(to_x):  # a framed target: report the user's coordinates, not the frame's
        xs = to_x(xs.double())
    xs = _flat(xs).double()
    good = ok_x & ~sel if u is None else ok_x & ~sel & torch.isfinite(u)
    u_range = ""
    if u is not None and bool(good.any()):
        ug = u[good].double()
        u_range = f"; the finite energies of this batch range over [{float(ug.min()):.4g}, {float(ug.max()):.4g}]"
    lo, hi = xs.min(0).values.tolist(), xs.max(0).values.tolist()
    if len(lo) <= 4:  # per coordinate where that stays short
        box = ", ".join(f"x[{j}] in [{a:.4g}, {b:.4g}]" for j, (a, b) in enumerate(zip(lo, hi)))
    else:
        box = f"coordinates in [{min(lo):.4g}, {max(hi):.4g}]"
    msg = (f"{name} returned {', '.join(parts)}{' ' + where if where else ''}: the states where this "
           f"happened have {box} (largest norm {float(xs.norm(dim=1).max()):.4g}){u_range}. "
           "The energy must be finite "
           "wherever the sampler may go (+inf is allowed and means zero density): guard it against "
           "overflow, log or sqrt of negative numbers and division by zero there. This is a fault of "
           "the energy, not a divergence of the sampler.")
    raise NonFiniteEnergyError(msg)


def at_step(exc: NonFiniteEnergyError, where: str) -> NonFiniteEnergyError:
    """``exc`` with ``where`` (e.g. ``"naas training step 37 of 200"``) put in front of its message."""
    return NonFiniteEnergyError(f"{where}: {exc}")
