"""NAAS on the continuous benchmark targets, against AIS and MALA at equal energy evaluations.

Targets: GMM-40 (2-D, log Z = 0), Many-Well-32 (log Z = 164.69568), DW-4 and LJ-13 (no exact
log Z; reference samples from long MALA runs). Metrics, all on ``n_eval`` points:

* ``log_z_error`` = log Z_hat - exact (GMM-40, MW-32), with the estimator's own stderr.
* ``w2`` = 2-Wasserstein distance between equal-size empirical measures (optimal assignment,
  ``sqrt(mean |x - y|^2)``; weighted samples are first resampled by weight) against exact
  samples (GMM-40, MW-32) or the long-MALA reference (DW-4, LJ-13; no alignment).
  ``w2_floor_reference_vs_reference`` is the same metric between two independent reference
  sets: the value a perfect sampler would get.
* ``energy_w1`` = 1-D W1 between the energy distributions (not squared, not square-rooted);
  ``distance_w1`` = 1-D W1 between pooled interatomic distances (particles).
* mode coverage: GMM-40 modes hit by at least one (resampled) point, and the total variation
  between weighted mode masses and 1/40; MW-32: fraction of quartic coordinates in the right
  well (exact value by quadrature) and the number of distinct wells patterns.
* ``ess_frac`` (Kish, weighted methods) and wall time.

Equal energy evaluations: NAAS counts every energy gradient of training and sampling plus two
gradients per Hessian-vector product (a double-backward costs about two gradients). AIS gets
``n_steps = budget / n_samples`` MALA levels (capped by ``--ais-max-steps``, the cap is
reported); MALA gets ``budget / n_chains`` steps per chain, half of them burn-in.

Paper figures: the NAAS result tables (arXiv 2506.18165) were **not retrieved** by the
research brief (``/work/shared/research/continuous_samplers.md`` section 9), so no paper
numbers are printed beside ours; the brief's third-party numbers use other targets/metrics
and are unverified.

Run:  python benchmarks/naas_continuous.py --targets gmm40,mw32 [--size small|paper]
Writes benchmarks/results/naas_continuous.json and .png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import integrate
from scipy.optimize import linear_sum_assignment
from scipy.stats import wasserstein_distance

from boltzkit._utils import versions
from boltzkit.energies.continuous import GaussianMixture, ManyWell
from boltzkit.energies.particles import DoubleWell4, LennardJones
from boltzkit.samplers.ais import ais
from boltzkit.samplers.mala import MALA, adapt_log_step, mala_move
from boltzkit.samplers.naas import NAAS

RESULTS = Path(__file__).resolve().parent / "results"

# NAAS options per target and size. "small" is the CPU configuration run for the report;
# "paper" is the scale of the AS/ASBS configs (K = 200-1000, thousands of epochs; GPU).
CONFIGS = {
    "gmm40": {
        "small": dict(naas=dict(prior_std=25.0, target_scale=1.3, relaxation=4.0, beta_power=3.0,
                                n_time_steps=64, batch_size=256), train_steps=150),
        "paper": dict(naas=dict(prior_std=25.0, target_scale=1.3, relaxation=4.0, beta_power=3.0,
                                n_time_steps=200, batch_size=512, hidden=128), train_steps=3000),
        "init_std": 25.0,
    },
    "mw32": {
        "small": dict(naas=dict(prior_std=2.0, target_scale=0.2, relaxation=10.0, n_time_steps=128,
                                beta_power=2.0, batch_size=256), train_steps=60),
        "paper": dict(naas=dict(prior_std=2.0, target_scale=0.2, relaxation=10.0, n_time_steps=256,
                                beta_power=2.0, batch_size=512, hidden=128), train_steps=3000),
        "init_std": 2.0,
    },
    "dw4": {
        "small": dict(naas=dict(prior_std=2.0, target_scale=0.5, relaxation=3.0, n_time_steps=64,
                                batch_size=128, grad_clip=100.0, hidden=32), train_steps=40),
        "paper": dict(naas=dict(prior_std=2.0, target_scale=0.5, relaxation=3.0, n_time_steps=200,
                                batch_size=512, grad_clip=100.0, hidden=128), train_steps=5000),
        "init_std": 2.0,
    },
    "lj13": {
        "small": dict(naas=dict(prior_std=1.0, target_scale=0.1, relaxation=3.0, n_time_steps=200,
                                refine_end=2.0, batch_size=64, grad_clip=100.0, hidden=32),
                      train_steps=4, n_samples=1000),
        "paper": dict(naas=dict(prior_std=1.0, target_scale=0.1, relaxation=3.0, n_time_steps=1000,
                                refine_end=2.0, batch_size=512, grad_clip=100.0, hidden=128),
                      train_steps=4000),
        "init_std": 1.0,
    },
}


def make_target(name):
    return {"gmm40": GaussianMixture.gmm40, "mw32": lambda: ManyWell(32), "dw4": DoubleWell4,
            "lj13": lambda: LennardJones(13, 3)}[name]()


# ----------------------------------------------------------------------------- references
def mala_reference(target, n, *, n_chains=256, burn_in=4000, thin=20, init_std=1.0, seed=0):
    """Long MALA chains (ambient coordinates; the energies are translation invariant, so the
    centre of mass decouples) projected onto the zero-centre-of-mass subspace."""
    gen = torch.Generator().manual_seed(seed)
    dom = target.domain
    if isinstance(target, LennardJones):  # start from a loose grid, not from overlapping particles
        grid = torch.stack(torch.meshgrid(*[torch.arange(3.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
        x = dom.project(grid[: dom.n_particles].reshape(1, -1).repeat(n_chains, 1))
        x = dom.project(x + 0.05 * torch.randn(x.shape, generator=gen))
    else:
        x = init_std * dom.reference(n_chains, generator=gen)
    pot = lambda y: (target.energy(y), dom.project(target.grad_energy(y)))  # noqa: E731
    state, log_h = pot(x), math.log(1e-3)
    kept = []
    n_rec = -(-n // n_chains)
    for t in range(burn_in + n_rec * thin):
        with torch.no_grad():
            x, state, acc = mala_move(pot, x, state, math.exp(log_h), gen)
        x = dom.project(x)
        if t < burn_in:
            log_h = adapt_log_step(log_h, float(acc.double().mean()), 0.574, 1.0 / math.sqrt(1 + t / 10))
        elif (t - burn_in) % thin == thin - 1:
            kept.append(x.clone())
    return torch.cat(kept)[:n], burn_in * n_chains + n_rec * thin * n_chains


def reference_samples(name, target, n, seed):
    if name in ("gmm40", "mw32"):
        return target.sample_exact(n, generator=torch.Generator().manual_seed(seed + 1000)), 0
    return mala_reference(target, n, init_std=1.0 if name == "lj13" else 2.0, seed=seed + 1000)


# ----------------------------------------------------------------------------- metrics
def w2_assignment(a: torch.Tensor, b: torch.Tensor) -> float:
    cost = torch.cdist(a.double(), b.double()).pow(2).numpy()
    r, c = linear_sum_assignment(cost)
    return float(math.sqrt(cost[r, c].mean()))


def mw_right_mass():
    f = lambda t: math.exp(-(t ** 4 - 6 * t ** 2 - 0.5 * t) - 9.0)  # noqa: E731
    tab = ManyWell(2)
    right, _ = integrate.quad(f, tab.barrier, 6.0, limit=200)
    total, _ = integrate.quad(f, -6.0, 6.0, points=[tab.barrier], limit=200)
    return right / total


def evaluate(name, target, res, ref, n_eval, seed):
    out = {"n_samples": res.n_samples}
    if res.log_weights is not None:
        pts = res.resample(n_eval, seed=seed)
        out.update(log_z=res.log_z, log_z_stderr=res.log_z_stderr, ess_frac=res.ess / res.n_samples,
                   pareto_k=res.diagnostics.get("pareto_k"))
        exact = target.exact_log_z()
        if exact is not None:
            out["log_z_error"] = res.log_z - exact
    else:
        idx = torch.linspace(0, res.n_samples - 1, n_eval).long()
        pts = res.samples[idx]
    refp = ref[:n_eval]
    with torch.no_grad():
        out["w2"] = w2_assignment(pts, refp)
        out["energy_w1"] = float(wasserstein_distance(target.energy(pts).double().numpy(),
                                                      target.energy(refp).double().numpy()))
    if name == "gmm40":
        modes = target.mode_assignment(pts)
        out["modes_hit"] = int(torch.unique(modes).numel())
        if res.log_weights is not None:
            m_all = target.mode_assignment(res.samples).numpy()
            mass = np.bincount(m_all, weights=res.weights(), minlength=40)
            out["mode_mass_tv"] = float(0.5 * np.abs(mass - 1 / 40).sum())
    if name == "mw32":
        bits = (pts[:, 0::2] > target.barrier)
        out["right_well_frac"] = float(bits.double().mean())
        out["right_well_exact"] = mw_right_mass()
        out["distinct_modes"] = int(torch.unique(target.mode_assignment(pts)).numel())
    if name in ("dw4", "lj13"):
        out["distance_w1"] = float(wasserstein_distance(target.distances(pts).flatten().numpy(),
                                                        target.distances(refp).flatten().numpy()))
    return out


# ----------------------------------------------------------------------------- runs
def run_target(name, size, *, n_samples, n_eval, seed, ais_max_steps, device):
    cfg = CONFIGS[name]
    target = make_target(name)
    ref, ref_evals = reference_samples(name, target, max(2 * n_eval, 2000), seed)
    # finite-sample floor of the W2 metric: two independent reference sets
    floor = w2_assignment(ref[:n_eval], ref[n_eval:2 * n_eval])
    ref = ref[:n_eval]
    row = {"target": target.name, "exact_log_z": target.exact_log_z(), "reference_evals": ref_evals,
           "w2_floor_reference_vs_reference": floor,
           "naas_config": cfg[size]["naas"], "train_steps": cfg[size]["train_steps"]}

    n_samples = cfg[size].get("n_samples", n_samples)
    # NAAS
    t0 = time.perf_counter()
    sampler = NAAS(seed=seed, device=device, progress=False, **cfg[size]["naas"])
    sampler.fit(target, n_steps=cfg[size]["train_steps"])
    t_train = time.perf_counter() - t0
    res = sampler.sample(n_samples)
    wall = time.perf_counter() - t0
    d = res.diagnostics
    budget = int(d["training_energy_grads"] + 2 * d["training_energy_hvps"] + d["sampling_energy_grads"])
    row["naas"] = {**evaluate(name, target, res, ref, n_eval, seed), "wall_s": wall,
                   "train_wall_s": t_train, "energy_evals": budget,
                   "history": {k: list(map(float, v)) for k, v in res.history.items()
                               if k in ("loss", "ess_frac", "log_z", "log_z_running")}}
    print(f"[{name}] NAAS: {json.dumps({k: v for k, v in row['naas'].items() if k != 'history'})}",
          flush=True)

    # AIS (Reals only in boltzkit) at equal energy evaluations
    if name in ("gmm40", "mw32"):
        steps = max(1, budget // n_samples)
        used = min(steps, ais_max_steps)
        t0 = time.perf_counter()
        r_ais = ais(target, n_samples=n_samples, n_steps=used, seed=seed, device=device,
                    progress=False, init_std=cfg["init_std"])
        row["ais"] = {**evaluate(name, target, r_ais, ref, n_eval, seed),
                      "wall_s": time.perf_counter() - t0, "energy_evals": used * n_samples,
                      "n_steps": used, "n_steps_equal_budget": steps}
        print(f"[{name}] AIS: {json.dumps(row['ais'])}", flush=True)

        n_chains = 128
        total = max(2, budget // n_chains)
        t0 = time.perf_counter()
        mala = MALA(seed=seed, device=device, progress=False, n_chains=n_chains,
                    init_std=cfg["init_std"], thin=max(1, (total // 2) // max(1, n_samples // n_chains)))
        mala.fit(target, n_steps=total // 2)
        r_mala = mala.sample(n_samples)
        row["mala"] = {**evaluate(name, target, r_mala, ref, n_eval, seed),
                       "wall_s": time.perf_counter() - t0,
                       "energy_evals": n_chains * mala.n_total}
        print(f"[{name}] MALA: {json.dumps(row['mala'])}", flush=True)
    else:
        row["ais"] = {"skipped": "boltzkit's AIS is registered for Reals, not ParticleCloud"}
        row["mala"] = {"note": "the long-MALA reference itself", "energy_evals": ref_evals}
        # NAAS after one training step ~ its uncontrolled annealed-Langevin (ULA-AIS) chain;
        # both estimates are unbiased for Z, so their log Z must agree within error bars
        t0 = time.perf_counter()
        base = NAAS(seed=seed + 1, device=device, progress=False, **cfg[size]["naas"])
        r0 = base.fit(target, n_steps=1).sample(n_samples)
        d0 = r0.diagnostics
        row["naas_1_step"] = {**evaluate(name, target, r0, ref, n_eval, seed),
                              "wall_s": time.perf_counter() - t0,
                              "energy_evals": int(d0["training_energy_grads"] + 2 * d0["training_energy_hvps"]
                                                  + d0["sampling_energy_grads"])}
        print(f"[{name}] NAAS after 1 step: {json.dumps(row['naas_1_step'])}", flush=True)
    return row, res, ref


def plot(rows, samples, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(len(names), 3, figsize=(13, 3.6 * len(names)), squeeze=False)
    for i, nm in enumerate(names):
        row = rows[nm]
        res, ref = samples[nm]
        ax = axes[i, 0]
        pts = res.resample(2000, seed=0)
        ax.scatter(ref[:2000, 0], ref[:2000, 1], s=2, alpha=0.3, label="reference")
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.3, label="NAAS (resampled)")
        ax.set_title(f"{row['target']}: coordinates 0, 1")
        ax.legend(markerscale=4, fontsize=7)
        ax = axes[i, 1]
        methods = [m for m in ("naas", "naas_1_step", "ais", "mala") if "w2" in row.get(m, {})]
        w2 = [row[m]["w2"] for m in methods]
        colors = {"naas": "C0", "naas_1_step": "C4", "ais": "C1", "mala": "C2"}
        ax.bar(methods, w2, color=[colors[m] for m in methods])
        ax.axhline(row["w2_floor_reference_vs_reference"], color="k", ls=":", label="reference vs reference")
        ax.legend(fontsize=7)
        ax.set_ylabel("W2 to reference")
        ax.set_title("sample quality at equal energy evaluations")
        for j, m in enumerate(methods):
            if "log_z_error" in row[m]:
                ax.text(j, w2[j], f"dlogZ {row[m]['log_z_error']:+.2f}", ha="center", va="bottom", fontsize=7)
        ax = axes[i, 2]
        h = row["naas"]["history"]
        ax.plot(h["ess_frac"], label="ESS fraction (fresh trajectories)")
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1)
        ax2 = ax.twinx()
        ax2.plot(h["log_z_running"], color="C3", label="running log Z")
        if row["exact_log_z"] is not None:
            ax2.axhline(row["exact_log_z"], color="C3", ls=":")
        ax.legend(loc="upper left", fontsize=7)
        ax2.legend(loc="upper right", fontsize=7)
        ax.set_title("NAAS training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", default="gmm40,mw32,dw4,lj13")
    p.add_argument("--size", default="small", choices=("small", "paper"))
    p.add_argument("--n-samples", type=int, default=4000)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ais-max-steps", type=int, default=2000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(RESULTS / "naas_continuous"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows, samples = {}, {}
    for name in args.targets.split(","):
        rows[name], res, ref = run_target(name, args.size, n_samples=args.n_samples,
                                          n_eval=args.n_eval, seed=args.seed,
                                          ais_max_steps=args.ais_max_steps, device=args.device)
        samples[name] = (res, ref)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"size": args.size, "seed": args.seed, "n_samples": args.n_samples, "n_eval": args.n_eval,
            "device": args.device, "versions": versions(), "argv": sys.argv[1:],
            "paper_numbers": "not retrieved (research brief section 9); none shown",
            "evals_convention": "energy gradients + 2 x Hessian-vector products"}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "targets": rows}, indent=1,
                                                   default=float))
    plot(rows, samples, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
