"""Swendsen-Wang vs checkerboard Metropolis on the 2-D Ising model at beta_c.

For each lattice size L (default 16 and 32) and method this measures

* the integrated autocorrelation time (tau_int = 1 + 2 sum rho, in sweeps) of the energy
  and of |m|, with Sokal's error bar and whether the chains were long enough (50 tau);
* sweeps per second and effective samples per second (ESS = n_chains * n_sweeps / tau_int),
  per CPU second of the process (robust on a shared machine; wall-clock rates are also saved);
* the mean energy against the exact finite-lattice value (Kaufman), as a correctness check;
* log Z by annealed importance sampling (``boltzkit.samplers.ais``, heat-bath path)
  against Kaufman's exact value ``Ising.exact_log_z()``.

Writes ``benchmarks/results/mcmc_lattice.json`` and ``benchmarks/results/mcmc_lattice.png``.
The defaults take a few minutes on one CPU core; raise ``--sweeps-*`` and ``--ais-levels-per-site``
for tighter numbers (``--quick`` for a smoke run).

    python benchmarks/mcmc_lattice.py
    python benchmarks/mcmc_lattice.py --sizes 16 32 64 --sweeps-metropolis 100000
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from boltzkit._utils import versions
from boltzkit.energies import BETA_C_ISING, Ising
from boltzkit.energies.exact import ising_mean_energy
from boltzkit.errors import UnreliableEstimateWarning
from boltzkit.estimators import autocorr_estimate, autocorr_function
from boltzkit.samplers.mcmc import checkerboard_sweep, swendsen_wang_update

RESULTS = Path(__file__).resolve().parent / "results"

UPDATES = {
    "swendsen_wang": lambda e, x, g: swendsen_wang_update(e, x, generator=g),
    "metropolis": lambda e, x, g: checkerboard_sweep(e, x, generator=g, rule="metropolis"),
    "heat_bath": lambda e, x, g: checkerboard_sweep(e, x, generator=g, rule="heat_bath"),
}


def run_chains(target: Ising, method: str, *, n_chains: int, burn_in: int, n_sweeps: int,
               seed: int) -> dict:
    """Burn in, then record energy and |m| after every sweep; time the recorded sweeps."""
    gen = torch.Generator().manual_seed(seed)
    update = UPDATES[method]
    x = target.domain.reference(n_chains, generator=gen)
    for _ in range(burn_in):
        x, _ = update(target, x, gen)
    energy = np.empty((n_sweeps, n_chains))
    abs_m = np.empty((n_sweeps, n_chains))
    t0, c0 = time.perf_counter(), time.process_time()
    for t in range(n_sweeps):
        x, _ = update(target, x, gen)
        energy[t] = target.energy(x).double().numpy()
        abs_m[t] = x.flatten(1).double().mean(1).abs().numpy()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # rates per CPU second of this process: robust on a shared machine (wall time is recorded too)
    out = {"n_chains": n_chains, "burn_in": burn_in, "n_sweeps": n_sweeps, "wall_s": wall,
           "cpu_s": cpu, "sweeps_per_s": n_sweeps / cpu, "chain_sweeps_per_s": n_sweeps * n_chains / cpu}
    n = n_sweeps * n_chains
    for name, trace in (("energy", energy), ("abs_m", abs_m)):
        est = autocorr_estimate(trace, warn=False)
        out[name] = {"tau_int": est.tau, "tau_int_stderr": est.stderr, "window": est.window,
                     "converged": est.converged, "ess": est.ess, "ess_per_s": est.ess / cpu,
                     "ess_per_wall_s": est.ess / wall,
                     "mean": float(trace.mean()),
                     "mean_stderr": float(trace.std() * math.sqrt(est.tau / n)),
                     "acf": autocorr_function(trace)[: min(n_sweeps, 3 * est.window + 1)].tolist()}
    return out


def run_ais(target: Ising, *, n_samples: int, n_levels: int, seed: int) -> dict:
    try:
        from boltzkit.samplers.ais import ais
    except ImportError as exc:  # AIS is optional for this benchmark
        return {"skipped": f"boltzkit.samplers.ais is not available ({exc})"}
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnreliableEstimateWarning)
        res = ais(target, n_samples=n_samples, n_steps=n_levels, seed=seed, progress=False)
    wall = time.perf_counter() - t0
    exact = target.exact_log_z()
    return {"n_samples": n_samples, "n_levels": n_levels, "kernel": res.diagnostics.get("kernel"),
            "log_z": res.log_z, "log_z_stderr": res.log_z_stderr, "exact_log_z": exact,
            "error": res.log_z - exact,
            "z_score": (res.log_z - exact) / res.log_z_stderr if res.log_z_stderr else float("nan"),
            "ess": res.ess, "pareto_k": res.diagnostics.get("pareto_k"),
            "reliable": res.reliable, "warnings": [str(w.message) for w in caught], "wall_s": wall}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = {"swendsen_wang": "-", "metropolis": "--", "heat_bath": ":"}
    for i, (key, run) in enumerate(runs.items()):
        L, method = run["L"], run["method"]
        for obs, ax_i in (("energy", 0), ("abs_m", 0)):
            acf = np.asarray(run["chains"][obs]["acf"])
            lag = np.arange(acf.size)
            axes[0].plot(lag[acf > 0], acf[acf > 0], styles.get(method, "-"), color=f"C{i}",
                         alpha=1.0 if obs == "energy" else 0.5,
                         label=f"L={L} {method} {'E' if obs == 'energy' else '|m|'} "
                               f"(tau={run['chains'][obs]['tau_int']:.1f})")
    axes[0].set_xscale("symlog", linthresh=1)
    axes[0].set_yscale("log")
    axes[0].set_ylim(1e-3, 1.1)
    axes[0].set_xlabel("lag (sweeps)")
    axes[0].set_ylabel("autocorrelation rho(t)")
    axes[0].set_title("autocorrelation at beta_c")
    axes[0].legend(fontsize=6)

    labels = list(runs)
    xs = np.arange(len(labels))
    for j, obs in enumerate(("energy", "abs_m")):
        vals = [runs[k]["chains"][obs]["ess_per_s"] for k in labels]
        axes[1].bar(xs + (j - 0.5) * 0.38, vals, width=0.38, label=obs)
    axes[1].set_xticks(xs, [k.replace("_", "\n", 1) for k in labels], fontsize=7)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("effective samples per CPU second (1 thread)")
    axes[1].set_title("ESS per second")
    axes[1].legend()

    ais_rows = [(L, r) for L, r in results["ais"].items() if "skipped" not in r]
    if ais_rows:
        Ls = [int(L) for L, _ in ais_rows]
        err = [r["error"] for _, r in ais_rows]
        se = [r["log_z_stderr"] for _, r in ais_rows]
        axes[2].errorbar(Ls, err, yerr=se, fmt="o", capsize=4)
        axes[2].axhline(0.0, color="k", lw=0.8, ls="--", label="Kaufman exact")
        axes[2].set_xlabel("L")
        axes[2].set_ylabel("log Z (AIS) - log Z (exact)")
        axes[2].set_title("AIS log Z at beta_c")
        axes[2].legend()
    else:
        axes[2].text(0.5, 0.5, "AIS skipped", ha="center", va="center")
        axes[2].axis("off")
    fig.suptitle("2-D Ising at beta_c: Swendsen-Wang vs checkerboard Metropolis")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    p.add_argument("--methods", nargs="+", default=["swendsen_wang", "metropolis"],
                   choices=sorted(UPDATES))
    p.add_argument("--chains", type=int, default=32)
    p.add_argument("--burn-in", type=int, default=1000, help="sweeps (Metropolis; SW uses 1/10)")
    p.add_argument("--sweeps-swendsen-wang", type=int, default=1000)
    p.add_argument("--sweeps-metropolis", type=int, default=10000,
                   help="also used for heat_bath")
    p.add_argument("--ais-samples", type=int, default=128)
    p.add_argument("--ais-levels-per-site", type=float, default=12.0)
    p.add_argument("--no-ais", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--out", type=Path, default=RESULTS / "mcmc_lattice.json")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.chains, a.burn_in = [8], 8, 100
        a.sweeps_swendsen_wang, a.sweeps_metropolis, a.ais_samples = 200, 400, 32
    torch.set_num_threads(a.threads)

    results = {"beta": BETA_C_ISING, "args": {k: (str(v) if isinstance(v, Path) else v)
                                               for k, v in vars(a).items()},
               "machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "torch_threads": torch.get_num_threads()},
               "versions": versions(), "runs": {}, "ais": {}}
    for L in a.sizes:
        target = Ising(L=L, beta=BETA_C_ISING)
        u_exact = ising_mean_energy(L, L, BETA_C_ISING)
        for method in a.methods:
            cluster = method == "swendsen_wang"
            n_sweeps = a.sweeps_swendsen_wang if cluster else a.sweeps_metropolis
            burn_in = max(a.burn_in // 10, 10) if cluster else a.burn_in
            t0 = time.perf_counter()
            chains = run_chains(target, method, n_chains=a.chains, burn_in=burn_in,
                                n_sweeps=n_sweeps, seed=a.seed)
            e = chains["energy"]
            z = (e["mean"] - u_exact) / e["mean_stderr"] if u_exact is not None else float("nan")
            results["runs"][f"L{L}_{method}"] = {"L": L, "method": method, "chains": chains,
                                                 "mean_energy_exact": u_exact, "energy_z_score": z}
            print(f"L={L:3d} {method:14s} tau_E={e['tau_int']:8.2f}+-{e['tau_int_stderr']:.2f} "
                  f"tau_|m|={chains['abs_m']['tau_int']:8.2f}+-{chains['abs_m']['tau_int_stderr']:.2f} "
                  f"(converged E/|m|: {e['converged']}/{chains['abs_m']['converged']}) "
                  f"sweeps/s={chains['sweeps_per_s']:.0f} ESS/s E={e['ess_per_s']:.0f} "
                  f"|m|={chains['abs_m']['ess_per_s']:.0f}  <U> z-score vs exact {z:+.2f} "
                  f"[{time.perf_counter() - t0:.0f}s]", flush=True)
        if not a.no_ais:
            levels = int(round(a.ais_levels_per_site * L * L))
            r = run_ais(target, n_samples=a.ais_samples, n_levels=levels, seed=a.seed)
            results["ais"][str(L)] = r
            if "skipped" in r:
                print(f"L={L:3d} AIS skipped: {r['skipped']}")
            else:
                print(f"L={L:3d} AIS ({levels} levels, {a.ais_samples} particles): log Z = "
                      f"{r['log_z']:.4f} +- {r['log_z_stderr']:.4f}, exact {r['exact_log_z']:.4f}, "
                      f"error {r['error']:+.4f} ({r['z_score']:+.2f} sigma), ESS {r['ess']:.1f}, "
                      f"Pareto k {r['pareto_k']:.2f} [{r['wall_s']:.0f}s]", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1))
    plot(results, a.out.with_suffix(".png"))
    print(f"wrote {a.out} and {a.out.with_suffix('.png')}")
    return results


if __name__ == "__main__":
    main()
