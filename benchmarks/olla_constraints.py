"""OLLA against projection and slack-variable Langevin, at CPU size (not run by pytest).

Part 1 -- accuracy at equal wall time, on sets whose law is known in closed form:
  * vmf_sphere : von Mises-Fisher (kappa = 2) on S^2 (one equality); statistic t = x3 with
                 density ~ exp(kappa t) on [-1, 1];
  * cap        : uniform on the spherical cap S^2 ∩ {x3 >= 0.5} (equality + inequality);
                 x3 ~ U[0.5, 1];
  * simplex    : uniform on the probability simplex in R^4 (1 equality, 4 inequalities);
                 x1 ~ Beta(1, 3).
  Every sampler gets the same wall-clock budget (40 % burn-in, 60 % sampling). Reported: mean
  and max constraint violation, W2 distance of the 1-D statistic to the exact law (sorted
  samples against exact quantiles; ``w2_iid`` is the same distance for as many exact iid draws,
  the Monte-Carlo floor), the error of its mean, ESS per second and seconds per step.

Part 2 -- cost per step as the dimension and the number of constraints grow (the paper's
  highdim_stress at CPU size): the sphere |x| = 5 in R^d plus p - 1 random linear equalities,
  optionally with 10 spherical obstacles |x - c_j| >= 1 as inequalities; uniform potential.

Usage:  python benchmarks/olla_constraints.py [--budget 6] [--quick]
Writes benchmarks/results/olla_constraints.json and .png.
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
from scipy import stats

import boltzkit as bk
from boltzkit.constraints import half_space, simplex, sphere
from boltzkit.errors import ConvergenceWarning
from boltzkit.samplers.olla import OLLA, ProjectedLangevin, SlackLangevin

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLERS = {"olla": OLLA, "projected_langevin": ProjectedLangevin, "slack_langevin": SlackLangevin}


# ---------------------------------------------------------------------------- part 1
def problems():
    kappa = 2.0

    def vmf_quantile(u):
        return np.log(np.exp(-kappa) + u * (np.exp(kappa) - np.exp(-kappa))) / kappa

    return {
        "vmf_sphere": dict(
            target=bk.constrain(lambda x: -kappa * x[:, 2], sphere(3)), stat=lambda x: x[:, 2],
            quantile=vmf_quantile, mean=1 / math.tanh(kappa) - 1 / kappa, step_size=5e-3),
        "cap": dict(
            target=bk.constrain(None, sphere(3) & half_space([0.0, 0.0, -1.0], -0.5)),
            stat=lambda x: x[:, 2], quantile=lambda u: 0.5 + 0.5 * u, mean=0.75, step_size=1e-3),
        "simplex": dict(
            target=bk.constrain(None, simplex(4)), stat=lambda x: x[:, 0],
            quantile=lambda u: stats.beta(1, 3).ppf(u), mean=0.25, step_size=2e-4),
    }


def w2_1d(samples: np.ndarray, quantile) -> float:
    """W2 between the empirical law of 1-D samples and an exact law given by its quantile function."""
    x = np.sort(samples)
    q = quantile((np.arange(x.size) + 0.5) / x.size)
    return float(np.sqrt(np.mean((x - q) ** 2)))


def run_equal_time(name, prob, method, budget, n_chains, seed):
    cls = SAMPLERS[method]
    opts = dict(step_size=prob["step_size"], n_chains=n_chains, thin=10)
    if method == "olla":
        opts["alpha"] = 0.1 / prob["step_size"]
    target = prob["target"]
    pilot = cls(seed=seed, device="cpu", **opts).fit(target, n_steps=20)
    t0 = time.perf_counter()
    pilot.fit(target, n_steps=30)
    sec_per_step = (time.perf_counter() - t0) / 30
    n_steps = max(int(budget / sec_per_step), 40)
    burn = int(0.4 * n_steps)
    n_keep = max(2, (n_steps - burn) // opts["thin"])
    t0 = time.perf_counter()
    sampler = cls(seed=seed, device="cpu", **opts).fit(target, n_steps=burn)
    res = sampler.sample(n_keep * n_chains)
    wall = time.perf_counter() - t0
    stat = prob["stat"](res.samples).numpy()
    rng = np.random.default_rng(seed)
    iid = prob["quantile"](rng.uniform(size=stat.size))
    d = res.diagnostics
    return {
        "problem": name, "method": method, "wall_s": wall, "n_steps": burn + n_keep * opts["thin"],
        "step_size": prob["step_size"], "seconds_per_step": d["seconds_per_step"],
        "violation_mean": d["violation_mean"], "violation_max": d["violation_max"],
        "fraction_infeasible": d["fraction_infeasible"],
        "w2": w2_1d(stat, prob["quantile"]), "w2_iid": w2_1d(iid, prob["quantile"]),
        "mean_error": float(stat.mean() - prob["mean"]), "ess": res.ess, "ess_per_second": d["ess_per_second"],
        "rejection_rate": d.get("rejection_rate"), "boundary_fraction": d.get("boundary_fraction"),
    }


# ---------------------------------------------------------------------------- part 2
def stress_target(d, p, n_obstacles, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(p - 1, d, generator=gen, dtype=torch.float64) if p > 1 else None
    centers = torch.randn(n_obstacles, d, generator=gen, dtype=torch.float64)
    centers = 5.0 * centers / centers.norm(dim=1, keepdim=True)
    eqs = []
    if a is not None:
        an = a / a.norm(dim=1, keepdim=True)
        eqs.append(lambda x: x @ an.T)  # hyperplanes through the origin: they cut the sphere
    ineqs = []
    if n_obstacles:
        c2 = (centers ** 2).sum(1)

        def obstacles(x):  # |x - c_j| >= 1, scaled to unit gradient on the boundary
            return (1.0 - (x * x).sum(1, keepdim=True) + 2 * x @ centers.T - c2) / 2.0
        ineqs.append(obstacles)
    return bk.constrain(None, sphere(d, radius=5.0), equalities=eqs, inequalities=ineqs)


def cost_per_step(d, p, n_obstacles, method, n_chains, n_steps, seed=0):
    target = stress_target(d, p, n_obstacles, seed)
    opts = dict(step_size=1e-3, n_chains=n_chains)
    if method == "olla":
        opts["alpha"] = 100.0
    sampler = SAMPLERS[method](seed=seed, device="cpu", **opts).fit(target, n_steps=3)
    t0 = time.perf_counter()
    sampler.fit(target, n_steps=n_steps)
    sec = (time.perf_counter() - t0) / n_steps
    viol = float(sampler.history["violation_mean"][-1])
    return {"d": d, "p_eq": p, "n_ineq": n_obstacles, "method": method, "seconds_per_step": sec,
            "violation_mean_last": viol, "n_chains": n_chains}


# ---------------------------------------------------------------------------- main
def plot(acc, cost, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    probs = sorted({r["problem"] for r in acc})
    methods = list(SAMPLERS)
    width = 0.25
    for j, m in enumerate(methods):
        xs = [i + (j - 1) * width for i, p in enumerate(probs)]
        rows = [next((r for r in acc if r["problem"] == p and r["method"] == m), None) for p in probs]
        axes[0].bar(xs, [r["w2"] if r else 0 for r in rows], width, label=m)
        axes[1].bar(xs, [r["ess_per_second"] if r else 0 for r in rows], width, label=m)
    floor = [next(r["w2_iid"] for r in acc if r["problem"] == p) for p in probs]
    axes[0].scatter(range(len(probs)), floor, color="k", marker="_", s=400, label="iid floor", zorder=3)
    for ax, title in ((axes[0], "W2 to the exact law (equal wall time)"), (axes[1], "ESS per second")):
        ax.set_xticks(range(len(probs)))
        ax.set_xticklabels(probs)
        ax.set_title(title)
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    ax = axes[2]
    for m in methods:
        for n_ineq, ls in ((0, "-"), (10, "--")):
            for d in sorted({r["d"] for r in cost}):
                rows = sorted((r for r in cost if r["method"] == m and r["n_ineq"] == n_ineq and r["d"] == d),
                              key=lambda r: r["p_eq"])
                if rows and d == max(r["d"] for r in cost):
                    ax.plot([r["p_eq"] for r in rows], [1e3 * r["seconds_per_step"] for r in rows], ls,
                            marker="o", label=f"{m}, {n_ineq} ineq, d={d}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of equalities p")
    ax.set_ylabel("ms per step")
    ax.set_title("cost per step")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=6.0, help="wall seconds per sampler and problem")
    ap.add_argument("--n-chains", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="smaller cost scan")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ConvergenceWarning)

    acc = []
    for name, prob in problems().items():
        for method in SAMPLERS:
            if method == "slack_langevin" and prob["target"].domain.n_ineq == 0:
                continue  # identical to projected_langevin without inequalities
            row = run_equal_time(name, prob, method, args.budget, args.n_chains, args.seed)
            acc.append(row)
            print(f"{name:11s} {method:19s} W2 {row['w2']:.4f} (iid {row['w2_iid']:.4f})  mean err "
                  f"{row['mean_error']:+.4f}  viol {row['violation_mean']:.1e}/{row['violation_max']:.1e}  "
                  f"ESS/s {row['ess_per_second']:.0f}  {1e3 * row['seconds_per_step']:.2f} ms/step", flush=True)

    dims = (100, 1000) if args.quick else (100, 300, 1000)
    ps = (1, 10, 50)
    cost = []
    for d in dims:
        for p in ps:
            for n_ineq in (0, 10):
                for method in SAMPLERS:
                    if method == "slack_langevin" and n_ineq == 0:
                        continue
                    row = cost_per_step(d, p, n_ineq, method, n_chains=8, n_steps=10 if args.quick else 20)
                    cost.append(row)
                    print(f"d={d:5d} p={p:3d} ineq={n_ineq:2d} {method:19s} "
                          f"{1e3 * row['seconds_per_step']:8.2f} ms/step  viol {row['violation_mean_last']:.1e}",
                          flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"args": vars(args), "accuracy_equal_time": acc, "cost_per_step": cost,
           "versions": bk._utils.versions(), "torch_threads": torch.get_num_threads()}
    (RESULTS / "olla_constraints.json").write_text(json.dumps(out, indent=2))
    plot(acc, cost, RESULTS / "olla_constraints.png")
    print(f"wrote {RESULTS / 'olla_constraints.json'} and .png")


if __name__ == "__main__":
    main()
