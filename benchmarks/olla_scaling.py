"""OLLA vs projection and slack Langevin as the dimension and the number of constraints grow.

Targets with a closed-form law (run on demand, not in CI): in R^d, the unit sphere and p - 1
random linear equalities a_j . x = 0 (through the origin), so the set is a great sphere
S^{k-1}, k = d - p + 1, inside a k-dimensional subspace; potential f = -kappa mu . x with mu in
that subspace. The law of t = mu . x has density ~ exp(kappa t) (1 - t^2)^{(k - 3)/2} on [-1, 1]
(von Mises-Fisher), ``E t = I_{k/2}(kappa) / I_{k/2 - 1}(kappa)``. Variant ``cap``: the same plus
one inequality t >= 0 (the density restricted to [0, 1], E t by quadrature); there slack
Langevin differs from projection (it turns the inequality into g + s^2 = 0).

One seed by default: the 128 chains are independent, and the standard errors come from their
spread. Every sampler runs at the same step size (all three are unadjusted Euler schemes with O(dt)
bias) with ``n_chains`` chains, burn-in and thinning; "equal accuracy" is checked, not assumed:
the JSON holds each run's error of E t against the closed form and its standard error (from
the independent chains). Reported per run: seconds per step, ESS (n / tau_int), seconds per
effective sample, mean / max constraint violation (OLLA: also the predicted mean |h| and the
violation after ``land_samples``), and for the projections the rejection rate.

Usage::

    python benchmarks/olla_scaling.py                  # ~10-15 min on a shared 2-core CPU
    python benchmarks/olla_scaling.py --replot

Writes ``benchmarks/results/olla_scaling.json`` and ``.png``. Timings are on a CPU shared with
other jobs: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import integrate, special

import boltzkit as bk
from boltzkit.constraints import affine, sphere
from boltzkit.samplers.olla import OLLA, ProjectedLangevin, SlackLangevin

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLERS = {"olla": OLLA, "olla_hutchinson": OLLA, "projected_langevin": ProjectedLangevin,
            "slack_langevin": SlackLangevin}
KAPPA = 2.0
GRID = ((10, 1), (10, 4), (40, 1), (40, 4), (100, 1), (100, 4))
CAP_GRID = ((10, 1),)


def exact_mean(k, cap):
    if not cap:
        return float(special.ive(k / 2, KAPPA) / special.ive(k / 2 - 1, KAPPA))
    dens = lambda t: math.exp(KAPPA * t) * (1 - t * t) ** ((k - 3) / 2)  # noqa: E731
    num = integrate.quad(lambda t: t * dens(t), 0, 1)[0]
    return float(num / integrate.quad(dens, 0, 1)[0])


def sphere_violation_closed_form(k, dt, alpha):
    """E|h| of OLLA on the great sphere S^{k-1} (h = (|x|^2 - 1)/2): the folded normal with
    sd = sqrt((k - 1) dt / (alpha (1 - alpha dt / 2))), mu = dt (k - 1)^2 / (2 alpha)."""
    sd = math.sqrt((k - 1) * dt / (alpha * (1 - alpha * dt / 2)))
    mu = dt * (k - 1) ** 2 / (2 * alpha)
    return sd * math.sqrt(2 / math.pi) * math.exp(-0.5 * (mu / sd) ** 2) + mu * math.erf(mu / (sd * math.sqrt(2)))


def make_target(d, p, cap, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sets = sphere(d)
    mu = torch.zeros(d, dtype=torch.float64)
    mu[0] = 1.0
    if p > 1:
        a = torch.randn(p - 1, d, generator=gen, dtype=torch.float64)
        a[:, 0] = 0.0  # mu = e_1 stays in the subspace {a x = 0}
        sets = sets & affine(a, torch.zeros(p - 1, dtype=torch.float64))
    ineq = [lambda x: -x[:, 0]] if cap else []
    return bk.constrain(lambda x: -KAPPA * x[:, 0], sets, inequalities=ineq), d - p + 1


def run(method, d, p, cap, seed, a):
    target, k = make_target(d, p, cap)
    opts = dict(step_size=a.dt, n_chains=a.chains, thin=a.thin)
    if method.startswith("olla"):
        opts.update(alpha=0.1 / a.dt, land_samples=True)
        if method == "olla_hutchinson":
            opts["curvature"] = "hutchinson"
    s = SAMPLERS[method](seed=seed, device="cpu", **opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        s.fit(target, n_steps=a.burn)
        res = s.sample(a.chains * a.keep)
        wall = time.perf_counter() - t0
    t = res.samples[:, 0].double().reshape(-1, a.chains).mean(0)
    truth = exact_mean(k, cap)
    dg = res.diagnostics
    row = {"method": method, "d": d, "p": p, "cap": cap, "k": k, "seed": seed,
           "err_mean_t": float(t.mean()) - truth, "se_mean_t": float(t.std() / math.sqrt(a.chains)),
           "seconds_per_step": dg["seconds_per_step"], "ess": float(res.ess),
           "seconds_per_ess": dg["seconds_per_step"] * dg["n_sampling_steps"] / float(res.ess),
           "wall_s": wall,
           "violation_mean": dg.get("violation_mean_before_landing", dg["violation_mean"]),
           "violation_max": dg.get("violation_max_before_landing", dg["violation_max"])}
    if method.startswith("olla"):
        row.update(violation_mean_predicted=dg.get("eq_violation_mean_predicted"),
                   violation_mean_closed_form=sphere_violation_closed_form(k, a.dt, 0.1 / a.dt),
                   violation_max_landed=dg["violation_max"])
    else:
        row["rejection_rate"] = dg.get("rejection_rate")
    return row


def plot(out, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = out["runs"]
    allkeys = sorted({(r["d"], r["p"]) for r in runs})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for cap, ls in ((False, "-"), (True, "--")):
        for i, m in enumerate(SAMPLERS):
            rows = [r for r in runs if r["method"] == m and r["cap"] == cap]
            if not rows:
                continue
            keys = sorted({(r["d"], r["p"]) for r in rows})
            agg = lambda f: [np.mean([f(r) for r in rows if (r["d"], r["p"]) == kk]) for kk in keys]  # noqa: E731
            x = np.array([allkeys.index(kk) for kk in keys])
            name = f"{m}{' (cap)' if cap else ''}"
            axes[0].plot(x, agg(lambda r: r["seconds_per_ess"]), ls, marker="o", color=f"C{i}", label=name)
            axes[1].plot(x, agg(lambda r: r["violation_mean"]), ls, marker="o", color=f"C{i}", label=name)
            axes[2].plot(x, agg(lambda r: abs(r["err_mean_t"]) / max(r["se_mean_t"], 1e-12)), ls,
                         marker="o", color=f"C{i}", label=name)
    for ax in axes:
        ax.set_xticks(np.arange(len(allkeys)))
        ax.set_xticklabels([f"{d}/{q}" for d, q in allkeys], rotation=30)
    axes[0].set(yscale="log", title="seconds per effective sample", xlabel="d / p")
    axes[1].set(yscale="log", title="mean constraint violation (before landing)", xlabel="d / p")
    axes[2].set(title="|error of E mu.x| / stderr (accuracy check)", xlabel="d / p")
    axes[2].axhline(2, color="gray", ls=":")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"OLLA scaling, dt = {out['dt']}, {out['chains']} chains, seeds {out['seeds']} "
                 "(2-core CPU shared with other jobs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--dt", type=float, default=2e-3)
    p.add_argument("--chains", type=int, default=128)
    p.add_argument("--burn", type=int, default=200)
    p.add_argument("--keep", type=int, default=10)
    p.add_argument("--thin", type=int, default=10)
    p.add_argument("--grid", default=None, help="e.g. 5x1,20x5")
    p.add_argument("--no-cap", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "olla_scaling.json"))
    p.add_argument("--replot", action="store_true")
    a = p.parse_args()
    path = Path(a.out)
    if a.replot:
        plot(json.loads(path.read_text()), path.with_suffix(".png"))
        return
    torch.set_num_threads(1)
    grid = GRID if a.grid is None else [tuple(map(int, g.split("x"))) for g in a.grid.split(",")]
    runs = []
    for cap in ((False,) if a.no_cap else (False, True)):
        for d, q in (grid if not cap or a.grid else CAP_GRID):
            for m in SAMPLERS:
                if m == "slack_langevin" and not cap:
                    continue  # identical to projection without inequalities
                for seed in a.seeds:
                    row = run(m, d, q, cap, seed, a)
                    runs.append(row)
                    print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    out = {"dt": a.dt, "chains": a.chains, "burn": a.burn, "keep": a.keep, "thin": a.thin,
           "seeds": a.seeds, "kappa": KAPPA, "runs": runs,
           "note": "2-core CPU shared with other jobs; compare ratios within this run"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    plot(out, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
