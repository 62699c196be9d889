"""MDNS benchmark on Ising and Potts lattices (run on demand, not in CI).

For each target: train MDNS, draw weighted samples, and compare with

* the exact log Z (Kaufman for zero-field Ising at any L, transfer matrix where tractable),
* a long Swendsen-Wang reference for <|m|> and the two-point correlation G(r), r = 1..L/2
  (Ising: <s_i s_{i+r}>; Potts: <q delta(x_i, x_{i+r}) - 1> / (q - 1)),
* Swendsen-Wang's effective samples per second (tau_int of the energy) at the same wall time.

The paper's 16 x 16 figures (arXiv 2508.10684, via the brief ``discrete_samplers.md`` 1.6;
GPU, 50k steps + warm-up) are stored next to ours in the JSON. Writes
``benchmarks/results/mdns_lattice_<tag>.json`` and ``.png``.

Examples::

    # what a 2-core CPU can do in ~15 min
    python benchmarks/mdns_lattice.py --L 8 --steps 600 --targets ising_c potts_c ising4_paper
    # the paper's setting (needs a GPU and hours)
    python benchmarks/mdns_lattice.py --L 16 --steps 50000 --batch-size 128 --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import boltzkit as bk
from boltzkit._utils import versions
from boltzkit.energies import BETA_C_ISING, Ising, Potts
from boltzkit.samplers.mcmc import lattice_model, order_parameter
from boltzkit.samplers.mdns import MDNS

RESULTS = Path(__file__).resolve().parent / "results"

# Paper figures [paper-2nd: from a third-party note reproducing the tables; see the brief].
PAPER = {
    "ising_c": {"L": 16, "beta": 0.4407, "ess": 0.933, "mag_err": 3.7e-3, "corr_err": 2.0e-3},
    "ising_low": {"L": 16, "beta": 0.6, "ess": 0.981, "mag_err": 9.9e-3, "corr_err": 2.4e-3},
    "ising_high": {"L": 16, "beta": 0.28, "ess": 0.962, "mag_err": 8.5e-3, "corr_err": 1.0e-3},
    "potts_c": {"L": 16, "q": 3, "beta": 1.005, "ess": 0.875, "mag_err": 4.3e-3, "corr_err": 2.9e-3},
    "ising4_paper": {"L": 4, "beta": 0.28, "h": 0.1, "steps": 1000, "batch": 256, "ess": 0.964,
                     "abs_log_z_err": 3.0e-4},
}


def make_target(name: str, L: int, potts_L: int):
    if name == "ising_c":
        return Ising(L=L, beta=BETA_C_ISING)
    if name == "ising_low":
        return Ising(L=L, beta=0.6)
    if name == "ising_high":
        return Ising(L=L, beta=0.28)
    if name == "potts_c":
        return Potts(L=potts_L, q=3)
    if name == "ising4_paper":
        return Ising(L=4, beta=0.28, h=0.1)
    raise SystemExit(f"unknown target {name!r}; choose from {sorted(PAPER)}")


def correlations(target, x: torch.Tensor) -> torch.Tensor:
    """Per-sample two-point correlation G(r), r = 1..L/2, averaged over sites and both axes."""
    model = lattice_model(target)
    rs = range(1, model.L // 2 + 1)
    out = []
    for r in rs:
        if model.kind == "ising":
            s = x.double()
            g = (s * torch.roll(s, r, 1) + s * torch.roll(s, r, 2)).flatten(1).mean(1) / 2
        else:
            same = (x == torch.roll(x, r, 1)).double() + (x == torch.roll(x, r, 2)).double()
            g = (model.q * same.flatten(1).mean(1) / 2 - 1.0) / (model.q - 1)
        out.append(g)
    return torch.stack(out, 1)


def observables(target, res) -> dict:
    """<|m|> and G(r) with standard errors (weighted for MDNS, tau-corrected for MCMC)."""
    model = lattice_model(target)
    m, m_se = res.expectation(lambda x: order_parameter(model, x))
    g = correlations(target, res.samples)
    corr = [res.expectation(lambda x, k=k: correlations(target, x)[:, k]) for k in range(g.shape[1])]
    return {"abs_m": m, "abs_m_se": m_se, "corr": [c[0] for c in corr], "corr_se": [c[1] for c in corr]}


def run_target(name: str, args) -> dict:
    target = make_target(name, args.L, args.potts_L)
    steps = args.paper_steps if name == "ising4_paper" else args.steps
    batch = 256 if name == "ising4_paper" else args.batch_size
    print(f"== {target.name}: {steps} steps, batch {batch}", flush=True)
    sampler = MDNS(device=args.device, seed=args.seed, progress=args.progress, batch_size=batch,
                   lr=args.lr, hidden=args.hidden, train_unmask_steps=args.train_unmask_steps)
    sampler.fit(target, n_steps=steps)
    res = sampler.sample(args.samples)
    exact = target.exact_log_z()
    out = {"target": target.to_config(), "steps": steps, "batch_size": batch,
           "train_wall_s": res.diagnostics["train_wall_time_s"],
           "sample_wall_s": res.diagnostics["sample_wall_time_s"], "n_samples": res.n_samples,
           "log_z": res.log_z, "log_z_stderr": res.log_z_stderr, "exact_log_z": exact,
           "log_z_err": None if exact is None else res.log_z - exact,
           "ess_frac": res.ess / res.n_samples, "pareto_k": res.diagnostics["pareto_k"],
           "history": {k: np.asarray(v).tolist() for k, v in res.history.items()
                       if k in ("ess_frac", "log_z", "energy_scale", "loss")},
           "paper": PAPER.get(name)}
    # fast mode: several sites per network pass from the same trained network (weights stay exact)
    k = max(1, target.domain.n_sites // args.sites_per_pass)
    fast = sampler.sample(args.samples, n_unmask_steps=k)
    out["fast"] = {"n_unmask_steps": k, "sample_wall_s": fast.diagnostics["sample_wall_time_s"],
                   "ess_frac": fast.ess / fast.n_samples, "log_z": fast.log_z,
                   "log_z_stderr": fast.log_z_stderr,
                   "log_z_err": None if exact is None else fast.log_z - exact}
    total = out["train_wall_s"] + out["sample_wall_s"]
    out["mdns_ess_per_s_sampling"] = res.ess / out["sample_wall_s"]
    out["mdns_ess_per_s_total"] = res.ess / total
    if not (isinstance(target, Ising) and target.h != 0.0):  # Swendsen-Wang needs h = 0
        mdns_obs = observables(target, res)
        t0 = time.perf_counter()
        sw = bk.sample(target, method="swendsen_wang", n_samples=args.sw_samples, seed=args.seed,
                       device=args.device, n_chains=args.sw_chains)
        sw_wall = time.perf_counter() - t0
        sw_obs = observables(target, sw)
        out["mdns_obs"], out["sw_obs"] = mdns_obs, sw_obs
        out["mag_err"] = abs(mdns_obs["abs_m"] - sw_obs["abs_m"])
        out["mag_err_se"] = math.hypot(mdns_obs["abs_m_se"], sw_obs["abs_m_se"])
        d = np.abs(np.subtract(mdns_obs["corr"], sw_obs["corr"]))
        out["corr_err_mean"], out["corr_err_max"] = float(d.mean()), float(d.max())
        out["sw"] = {"n_samples": sw.n_samples, "wall_s": sw_wall, "ess": sw.ess,
                     "tau_int_energy": sw.diagnostics.get("tau_int_energy"),
                     "ess_per_s": sw.ess / sw_wall}
        out["sw_ess_in_mdns_total_time"] = out["sw"]["ess_per_s"] * total
        out["mdns_ess"] = res.ess
    print(json.dumps({k: v for k, v in out.items() if k not in ("history", "mdns_obs", "sw_obs")},
                     default=float), flush=True)
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, r in results.items():
        h = r["history"]
        axes[0].plot(h["ess_frac"], label=name, lw=0.8)
        if r["exact_log_z"] is not None:
            err = np.abs(np.asarray(h["log_z"]) - r["exact_log_z"])
            done = np.asarray(h["energy_scale"]) >= 1.0  # before that the batch targets a tempered law
            axes[1].semilogy(np.flatnonzero(done), err[done], label=name, lw=0.8)
    axes[0].set(xlabel="training step", ylabel="batch ESS fraction", ylim=(0, 1.02))
    axes[1].set(xlabel="training step", ylabel="|batch log Z - exact|")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=["ising_c", "ising_low", "potts_c", "ising4_paper"])
    ap.add_argument("--L", type=int, default=16, help="Ising side length")
    ap.add_argument("--potts-L", type=int, default=None, help="Potts side length (default: --L)")
    ap.add_argument("--steps", type=int, default=2000, help="MDNS training steps")
    ap.add_argument("--paper-steps", type=int, default=1000, help="steps for ising4_paper")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--samples", type=int, default=10_000, help="MDNS samples")
    ap.add_argument("--train-unmask-steps", type=int, default=None,
                    help="network passes per training rollout (default: one site per pass)")
    ap.add_argument("--sites-per-pass", type=int, default=4, help="fast-mode sampling: sites per pass")
    ap.add_argument("--sw-samples", type=int, default=40_000, help="Swendsen-Wang reference samples")
    ap.add_argument("--sw-chains", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    args.potts_L = args.potts_L or args.L
    torch.set_num_threads(args.threads)
    results = {name: run_target(name, args) for name in args.targets}
    tag = args.tag or f"L{args.L}_steps{args.steps}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"argv": vars(args), "versions": versions(),
            "device": str(torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                                       else "cpu" if args.device == "auto" else args.device)),
            "torch_threads": torch.get_num_threads()}
    out = RESULTS / f"mdns_lattice_{tag}.json"
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=float))
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
