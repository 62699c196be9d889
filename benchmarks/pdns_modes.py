"""PDNS vs non-proximal samplers on multimodal targets (run on demand, not in CI).

Question: on targets with well-separated modes, does the sampler trained without the
proximal term (MDNS without temperature warm-up, plain bridge-matching WDCE, NAAS) collapse
onto a subset of modes where PDNS does not? Every method gets the same network and the same
number of gradient steps / batch size (NAAS: its own default network, a fixed step budget).

Targets (all with exact log Z and exact mode masses):

* ``ising4`` / ``ising6``: Ising 4 x 4 / 6 x 6 at beta = 0.6 (below T_c; two ordered states,
  P(m > 0) = P(m < 0) exactly; log Z by Kaufman's formula); ``ising3``: 3 x 3 at beta = 0.7
  (cheap, for many seeds).
* ``gmm4``: 2-D mixture of 4 Gaussians (std 0.5) at (+-8, +-8), weights 0.1, 0.2, 0.3, 0.4
  (log Z = 0).
* ``manywell6``: ManyWell d = 6, 8 wells of unequal mass (product of the exact per-pair
  masses, ~0.844 / 0.156), log Z by quadrature.

Metrics per run: log Z error and its reported stderr, ESS fraction, the total variation
between the weighted mode masses and the exact ones, the modes the *unweighted* samples visit
(raw mass >= 20 % of the exact mass), whether the run collapsed (a mode with >= 10 % exact
mass gets < 2 % of the weighted mass) and wall time (training + sampling).

The paper's figures (arXiv 2510.03824, via the brief ``pdns.md`` section 9; 24 x 24 Ising,
GMM-40 in d = 50, GPU budgets) are stored in the JSON and printed in the figure next to ours;
they are not the same experiments and are not reproduced here.

Measured (2-core CPU shared with other jobs, ``torch.set_num_threads(1)``; defaults below:
lattices 300 steps, continuous 1500 steps, batch 256, lr 3e-3; NAAS 100 iterations):

* Ising 3 x 3, beta 0.7, 8 seeds (``--targets ising3 --seeds 0..7``): runs that lost one of
  the two ordered states -- PDNS 0/8, PDNS model anchor 0/8, MDNS without warm-up 5/8 (log Z
  low by ~0.7 = log 2 while its ESS stays ~0.96-1.0), MDNS with its warm-up 0/8.
* Ising 4 x 4, beta 0.6, 3 seeds: PDNS 0/3 (|log Z err| 0.002, ESS 0.94), model anchor 1/3,
  MDNS without warm-up 1/3, MDNS with warm-up 0/3.
* gmm4: no method drops a mode; ESS PDNS 0.47, plain WDCE 0.30 (one seed 0.02), NAAS 0.21.
* manywell6: no method drops a mode; ESS PDNS 0.22 (|log Z err| 0.03), model anchor 0.10,
  plain WDCE 0.002 (|log Z err| 0.20, degenerate weights), NAAS 0.17 (uses energy gradients).
* Same cost per gradient step as MDNS (back to back, Ising 3 x 3, 150 steps: 9.5 / 8.7 s
  vs 8.2 / 8.9 s); the wall times in the JSON vary with the machine's load.

Writes ``benchmarks/results/pdns_modes.json`` and ``.png``. Examples::

    python benchmarks/pdns_modes.py                      # the small CPU configuration (~40 min)
    python benchmarks/pdns_modes.py --targets ising3 --seeds 0 1 2 3 4 5 6 7 --out pdns_modes_ising3
    python benchmarks/pdns_modes.py --replot             # redraw the PNG from the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from boltzkit._utils import versions
from boltzkit.energies import GaussianMixture, Ising, ManyWell
from boltzkit.samplers.mdns import MDNS
from boltzkit.samplers.naas import NAAS
from boltzkit.samplers.pdns import PDNS

RESULTS = Path(__file__).resolve().parent / "results"

PAPER = {  # [paper, via the brief; different scale and hardware -- context, not a reproduction]
    "ising24_beta0.6": {"metric": "magnetization error", "PDNS": 9.0e-3, "LEAPS": 3.0e-2, "MH": 1.6e-3,
                        "note": "plain WDCE collapses onto one sign of m (paper's ablation)"},
    "potts16_q4_beta1.3": {"metric": "magnetization error", "PDNS": 8.4e-4, "LEAPS": 3.6e-1, "MH": 7.6e-1},
    "potts16_q4_beta_c": {"metric": "ESS", "PDNS": 0.948, "LEAPS": 0.112},
    "gmm40_d50": {"metric": "Sinkhorn", "PDNS": 327.83, "best baseline (NAAS)": 496.48},
    "mos_d50": {"metric": "Sinkhorn", "PDNS": 353.05, "best baseline (NAAS)": 394.55},
    "mw54_d5": {"metric": "Sinkhorn", "PDNS": 0.08, "best baseline (NAAS)": 0.10},
}


# ---------------------------------------------------------------------------- targets
def _manywell_pair_mass() -> float:
    """Exact probability of the right well of one ManyWell pair (1-D quadrature)."""
    from scipy import integrate

    mw = ManyWell(2)
    f = lambda t: math.exp(-(t ** 4 - 6 * t ** 2 - 0.5 * t) - 9.0)  # noqa: E731
    right = integrate.quad(f, mw.barrier, 6.0, limit=200)[0]
    left = integrate.quad(f, -6.0, mw.barrier, limit=200)[0]
    return right / (left + right)


def make_target(name: str):
    """(target, mode_fn, exact mode masses, kind)."""
    if name in ("ising3", "ising4", "ising6"):
        t = Ising(L=3, beta=0.7) if name == "ising3" else Ising(L=int(name[-1]), beta=0.6)
        # m = 0 states (even L) are split evenly between the two modes by the weights below
        return t, (lambda x: (x.flatten(1).sum(1) > 0).long() + (x.flatten(1).sum(1) == 0).long() * 2), \
            np.array([0.5, 0.5]), "discrete"
    if name == "gmm4":
        t = GaussianMixture([[-8.0, -8.0], [-8.0, 8.0], [8.0, -8.0], [8.0, 8.0]], 0.5, [0.1, 0.2, 0.3, 0.4])
        return t, t.mode_assignment, t.mode_probabilities().numpy(), "continuous"
    if name == "manywell6":
        t = ManyWell(6)
        p = _manywell_pair_mass()
        masses = np.array([np.prod([p if (k >> i) & 1 else 1 - p for i in range(3)]) for k in range(8)])
        return t, t.mode_assignment, masses, "continuous"
    raise SystemExit(f"unknown target {name!r}")


def continuous_options(name: str) -> dict:
    if name == "gmm4":
        return dict(reference_std=10.0, noise_ratio=100.0)
    return dict(reference_std=2.5, noise_ratio=50.0)


def naas_options(name: str) -> dict:
    if name == "gmm4":
        return dict(prior_std=10.0, target_scale=0.5, beta_power=2.0)
    return dict(prior_std=2.0, target_scale=0.5)


# ---------------------------------------------------------------------------- methods
def methods_for(kind: str, name: str, args) -> dict:
    """name -> (sampler class, options, n_steps). Same network, batch and gradient steps."""
    if kind == "discrete":
        common = dict(batch_size=args.batch_size, lr=args.lr)
        return {
            "pdns": (PDNS, dict(common, inner_steps=10), args.steps),
            "pdns_model_anchor": (PDNS, dict(common, inner_steps=10, anchor="model"), args.steps),
            "mdns_no_warmup": (MDNS, dict(common, resample_every=10, warmup=None), args.steps),
            "mdns_warmup": (MDNS, dict(common, resample_every=10), args.steps),
        }
    common = dict(batch_size=args.batch_size, lr=args.lr, n_time_steps=50, inner_steps=5,
                  **continuous_options(name))
    return {
        "pdns": (PDNS, common, args.cont_steps),
        "pdns_model_anchor": (PDNS, dict(common, anchor="model"), args.cont_steps),
        "plain_wdce": (PDNS, dict(common, schedule="none"), args.cont_steps),
        "naas": (NAAS, naas_options(name), args.naas_steps),
    }


def mode_masses(res, mode_fn, n_modes: int) -> "tuple[np.ndarray, np.ndarray]":
    """(weighted, raw) mode masses; code n_modes (Ising m = 0) is split evenly."""
    codes = mode_fn(res.samples).long()
    w = torch.as_tensor(res.weights())
    weighted = torch.zeros(n_modes + 1, dtype=torch.float64).index_add_(0, codes, w).numpy()
    raw = np.bincount(codes.numpy(), minlength=n_modes + 1).astype(float) / len(codes)
    if codes.max() >= n_modes:  # Ising m = 0: half to each sign
        weighted = weighted[:n_modes] + weighted[n_modes] / n_modes
        raw = raw[:n_modes] + raw[n_modes] / n_modes
    return weighted[:n_modes], raw[:n_modes]


def run_one(target_name, method, seed, args):
    target, mode_fn, exact_masses, kind = make_target(target_name)
    cls, opts, n_steps = methods_for(kind, target_name, args)[method]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler = cls(device="cpu", seed=seed, progress=False, **opts).fit(target, n_steps=n_steps)
        res = sampler.sample(args.n_samples)
    wall = time.perf_counter() - t0
    exact = target.exact_log_z()
    weighted, raw = mode_masses(res, mode_fn, len(exact_masses))
    big = exact_masses >= 0.1
    out = {
        "target": target_name, "method": method, "seed": seed, "n_steps": n_steps,
        "log_z": res.log_z, "log_z_stderr": res.log_z_stderr, "exact_log_z": exact,
        "log_z_err": res.log_z - exact, "ess_frac": res.diagnostics["ess_frac"],
        "pareto_k": res.diagnostics["pareto_k"],
        "mode_tv_weighted": 0.5 * float(np.abs(weighted - exact_masses).sum()),
        "modes_visited_raw": int((raw >= 0.2 * exact_masses).sum()), "n_modes": len(exact_masses),
        "collapsed": bool((weighted[big] < 0.02).any()),
        "weighted_masses": weighted.tolist(), "raw_masses": raw.tolist(),
        "exact_masses": exact_masses.tolist(), "wall_time_s": wall,
    }
    if isinstance(sampler, PDNS):
        out.update(final_stage=int(sampler.schedule.stage), final_lambda=sampler.schedule.lam)
    return out


# ---------------------------------------------------------------------------- report
def summarize(rows):
    table = {}
    for r in rows:
        table.setdefault(r["target"], {}).setdefault(r["method"], []).append(r)
    summary = {}
    for t, by_method in table.items():
        summary[t] = {}
        for m, rs in by_method.items():
            summary[t][m] = {
                "n_runs": len(rs), "collapsed_runs": sum(r["collapsed"] for r in rs),
                "mean_abs_log_z_err": float(np.mean([abs(r["log_z_err"]) for r in rs])),
                "mean_mode_tv": float(np.mean([r["mode_tv_weighted"] for r in rs])),
                "mean_ess_frac": float(np.mean([r["ess_frac"] for r in rs])),
                "mean_modes_visited_raw": float(np.mean([r["modes_visited_raw"] for r in rs])),
                "mean_wall_time_s": float(np.mean([r["wall_time_s"] for r in rs])),
            }
    return summary


def plot(rows, summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(summary)
    fig = plt.figure(figsize=(4.2 * len(targets) + 5.5, 10))
    grid = fig.add_gridspec(3, len(targets) + 1, width_ratios=[1] * len(targets) + [1.3])
    axes = np.array([[fig.add_subplot(grid[i, j]) for j in range(len(targets))] for i in range(3)])
    for j, t in enumerate(targets):
        methods = list(summary[t])
        for i, (key, label, log) in enumerate((("log_z_err", "|log Z error|", True),
                                               ("mode_tv_weighted", "TV(weighted modes, exact)", False),
                                               ("ess_frac", "ESS fraction", False))):
            ax = axes[i, j]
            for k, m in enumerate(methods):
                vals = [abs(r[key]) for r in rows if r["target"] == t and r["method"] == m]
                ax.bar(k, np.mean(vals), color=f"C{k}", alpha=0.6)
                ax.scatter([k] * len(vals), vals, color="k", s=10, zorder=3)
            ax.set_xticks(range(len(methods)))
            ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
            if log:
                ax.set_yscale("log")
            ax.set_ylabel(label)
            if i == 0:
                ax.set_title(t)
    text = ["Paper (arXiv 2510.03824, via the brief;", "other scale, GPU):", ""]
    for k, v in PAPER.items():
        line = f"{k}: " + ", ".join(f"{a}={b}" for a, b in v.items() if a not in ("note",))
        text += textwrap.wrap(line, 64, subsequent_indent="    ")
    text += ["", "Ours (mean over seeds):"]
    for t in summary:
        for m, s in summary[t].items():
            text.append(f"{t}/{m}:")
            text.append(f"    |dlogZ|={s['mean_abs_log_z_err']:.3f} TV={s['mean_mode_tv']:.3f} "
                        f"ESS={s['mean_ess_frac']:.3f} collapsed {s['collapsed_runs']}/{s['n_runs']} "
                        f"t={s['mean_wall_time_s']:.0f}s")
    notes = fig.add_subplot(grid[:, -1])
    notes.axis("off")
    notes.text(0, 1, "\n".join(text), va="top", ha="left", fontsize=6.5, family="monospace",
               transform=notes.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", default=["ising4", "gmm4", "manywell6"])
    ap.add_argument("--methods", nargs="+", default=None, help="subset of the methods to run")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300, help="gradient steps on lattices (PDNS, MDNS)")
    ap.add_argument("--cont-steps", type=int, default=1500,
                    help="gradient steps on continuous targets (PDNS, plain WDCE)")
    ap.add_argument("--naas-steps", type=int, default=100, help="NAAS iterations")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--n-samples", type=int, default=10_000)
    ap.add_argument("--out", default="pdns_modes")
    ap.add_argument("--replot", action="store_true", help="redraw the PNG from an existing JSON")
    args = ap.parse_args()
    if args.replot:
        data = json.loads((RESULTS / f"{args.out}.json").read_text())
        plot(data["runs"], data["summary"], RESULTS / f"{args.out}.png")
        return
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    for t in args.targets:
        kind = make_target(t)[3]
        for m in methods_for(kind, t, args):
            if args.methods and m not in args.methods:
                continue
            for seed in args.seeds:
                r = run_one(t, m, seed, args)
                rows.append(r)
                print(f"{t:10s} {m:18s} seed {seed}: log Z err {r['log_z_err']:+.3f} "
                      f"(+- {r['log_z_stderr']:.3f}) ESS {r['ess_frac']:.3f} TV {r['mode_tv_weighted']:.3f} "
                      f"raw modes {r['modes_visited_raw']}/{r['n_modes']} collapsed {r['collapsed']} "
                      f"{r['wall_time_s']:.0f}s", flush=True)
    summary = summarize(rows)
    out = {"config": vars(args), "paper": PAPER, "summary": summary, "runs": rows,
           "versions": versions()}
    path = RESULTS / f"{args.out}.json"
    path.write_text(json.dumps(out, indent=1))
    plot(rows, summary, RESULTS / f"{args.out}.png")
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
