"""SCLD-trained NAAS against adjoint-matching NAAS and plain SMC at equal energy evaluations.

Sequential Controlled Langevin Diffusions (Chen, Richter, Berner et al., ICLR 2025, arXiv
2412.07081) train the control on the SMC-resampled sub-trajectories of the sampler's own SMC
pass (log-variance loss per segment). In boltzkit this is ``NAAS(train_on="smc")``
(:mod:`boltzkit.samplers._shared.scld`). Rows per target and seed:

* ``naas+smc``        NAAS trained by (importance-weighted) adjoint matching, the configs of
  ``smc_neural.py``, sampled as island SMC (16 islands, resampling at ESS < 0.5);
* ``scld-naas+smc``   the same NAAS path and network trained with ``train_on="smc"``
  (``scld_segments`` segments, resampling at every boundary, learned backward kernel), sampled
  the same way; ``scld-naas+smc+mala`` adds 2 MALA steps per level; ``scld-naas`` is plain
  importance sampling; ``scld-naas-fixed*`` the same with ``scld_backward="fixed"``;
* ``scld-pdns+smc``   (``--variants pdns``) continuous PDNS trained with ``train_on="smc"`` (10 segments,
  the PDNS config of ``smc_neural.py``), sampled as island SMC (+ ``+smc+mala``);
* ``naas-untrained+smc`` (``--variants untrained``) the same path with zero control: where SCLD
  training starts;
* ``smc``             the package's SMC for continuous targets (``AIS`` with one MALA step per
  level, resampling at ESS < 0.5, 16 islands) at each neural row's total budget: ``B_scld``
  (SCLD training + SMC sampling), ``B_scld_mala``, ``B_scld-fixed``, ``B_naas`` (NAAS training +
  SMC sampling), ``B_untrained``, ``B_scld_pdns`` / ``B_scld_pdns_mala``.

Every energy and gradient evaluation on the target is counted (``smc_neural.EvalCounter``; a
Hessian-vector product of NAAS's adjoint counts as two more gradients), training included.
Metrics as in ``smc_neural.py``: log Z error, island stderr, ESS, modes covered (GMM-40) or the
right-well fraction (many-well-32), reliable flag, wall time (2-core CPU shared with other jobs:
compare within a run).

Measured (results/scld.json, 2048 particles, 16 islands, 2 seeds, 2-core CPU shared with 4-6
other jobs; |error| and stderr are means over seeds):

* GMM-40 (FAB): SCLD-NAAS+SMC (60 steps, 0.75M training + 0.15M sampling evaluations) |error|
  0.022, stderr 0.026, ESS 0.84, 40/40 modes; the same path untrained (0.29M) 0.024 +- 0.040,
  ESS 0.68; adjoint-matching NAAS+SMC (30 steps, 1.30M) 0.061 +- 0.049, ESS 0.75; SCLD with the
  fixed reverse-ULA backward kernel 0.015 +- 0.033, ESS 0.59 (no gain over untrained). SMC at
  SCLD's total (0.79M): 0.018 +- 0.018, ESS 0.59. SCLD lifts the SMC ESS (0.68 -> 0.84) and the
  whole-path importance ESS (0.22 -> 0.32) and beats adjoint-matching NAAS at 70 % of its
  evaluations, but plain SMC at equal evaluations still has the smaller error bar.
* many-well-32: SCLD training (30 steps of 128 particles) makes the sampler worse: SCLD-NAAS+SMC
  -2.96 +- 0.24 (flagged, right-well fraction 0.70 vs 0.844), +2 MALA steps -0.48 +- 0.24; the
  untrained path -0.13 +- 0.68 (flagged); SMC at SCLD's totals -0.59 +- 0.25 (1.15M, flagged)
  and -0.24 +- 0.17 (2.5M, reliable). The training pass's own log Z swings by +-5 nats between
  steps at 128 particles: the segment log-variance is dominated by a few particles. With the
  fixed backward kernel: -1.51 +- 0.49 (flagged), +MALA -0.13 +- 0.26.
* HarmonicOscillatorArray (``--targets ho15 --seeds 1``, 1024 particles): every row within
  0.009 of the exact log Z (SCLD-NAAS+SMC +0.0002 +- 0.0022, ESS 0.99; NAAS+SMC +0.0026); SMC is
  exact (the probe's frame is the exact Gaussian) and spends far less than its budget (its
  pilot's per-level count includes the scale probe).
* SCLD-PDNS (``--variants pdns``, 400 steps, no energy gradients in training): GMM-40 +SMC
  |error| 0.041 +- 0.055, ESS 0.70, 40/40 modes at 0.32M (proximal-trained PDNS+SMC in
  ``smc_neural.py``: 0.020 +- 0.054, ESS 0.68 at 0.23M), SMC at 0.28M 0.029 +- 0.027;
  many-well-32 +SMC -8.7 (flagged), +2 MALA steps +0.38 +- 0.38 (1.62M), SMC at 1.42M
  0.21 +- 0.27.

Run:  nice -n 5 python benchmarks/scld.py [--targets gmm40,mw32] [--seeds 2] [--seed-start 0]
      [--variants naas,scld,scld-fixed,untrained,pdns] [--quick]
Writes benchmarks/results/scld.json (a rerun replaces only the rows it recomputes) and scld.png.
Not run by pytest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from boltzkit._utils import versions  # noqa: E402
from boltzkit.samplers.naas import NAAS  # noqa: E402
from boltzkit.samplers.pdns import PDNS  # noqa: E402
from smc_neural import (CONFIGS, N_ISLANDS, PDNS_MALA, RESAMPLE, EvalCounter, make_target,  # noqa: E402
                        plot, run_ais, run_neural, summarize)

RESULTS = HERE / "results"
# SCLD options on top of each target's NAAS config (same path, network, batch): segments of 8
# levels, SCLD's buffer, and enough steps to spend about NAAS's training evaluations or less.
SCLD = {"gmm40": dict(scld_segments=8, scld_steps=60, naas_steps=30),
        "mw32": dict(scld_segments=16, scld_steps=30, naas_steps=15),
        "ho15": dict(scld_segments=8, scld_steps=30, naas_steps=15)}


def _smc_rows(name, budgets, seed, n, cfg, target, counter, exact, extra, device, max_levels):
    return [run_ais(name, True, b, bname, seed, n, cfg["init_std"], target, counter, exact, extra, device,
                    max_levels) for bname, b in budgets.items()]


def run_naas(name, seed, n, target, counter, exact, extra, device, max_levels, quick):
    """``naas+smc`` (adjoint matching) and SMC at its total (``B_naas``)."""
    cfg = CONFIGS[name]
    na = run_neural(name, NAAS, cfg["naas"], 2 if quick else SCLD[name]["naas_steps"], seed, n, target, counter,
                    exact, extra, device, variants=[("+smc", 0)])
    return na + _smc_rows(name, {"B_naas": na[0]["evals_total"]}, seed, n, cfg, target, counter, exact, extra,
                          device, max_levels)


def _run_scld(name, seed, n, target, counter, exact, extra, device, max_levels, quick, backward):
    cfg = CONFIGS[name]
    tag = "" if backward == "learned" else "-fixed"
    opts = {**cfg["naas"], "train_on": "smc", "scld_segments": SCLD[name]["scld_segments"],
            "scld_backward": backward}
    sd = run_neural(name, NAAS, opts, 2 if quick else SCLD[name]["scld_steps"], seed, n, target, counter, exact,
                    extra, device, label=f"scld-naas{tag}",
                    variants=[("", None), ("+smc", 0), ("+smc+mala", PDNS_MALA)])
    budgets = {f"B_scld{tag}": sd[1]["evals_total"], f"B_scld{tag}_mala": sd[2]["evals_total"]}
    return sd + _smc_rows(name, budgets, seed, n, cfg, target, counter, exact, extra, device, max_levels)


def run_scld(*a):
    """``scld-naas`` (learned backward, the default) plain, +SMC, +SMC+MALA, and SMC at their totals."""
    return _run_scld(*a, backward="learned")


def run_scld_fixed(*a):
    """The same with ``scld_backward="fixed"`` (reverse-ULA backward kernels): ``scld-naas-fixed``."""
    return _run_scld(*a, backward="fixed")


def run_untrained(name, seed, n, target, counter, exact, extra, device, max_levels, quick):
    """``naas-untrained+smc``: the SCLD path (no prior stage) with zero control, i.e. where SCLD
    training starts, and SMC at its total (``B_untrained``)."""
    cfg = CONFIGS[name]
    opts = {**cfg["naas"], "train_on": "smc", "scld_segments": SCLD[name]["scld_segments"]}
    un = run_neural(name, NAAS, opts, 0, seed, n, target, counter, exact, extra, device,
                    label="naas-untrained", variants=[("+smc", 0)])
    return un + _smc_rows(name, {"B_untrained": un[0]["evals_total"]}, seed, n, cfg, target, counter, exact,
                          extra, device, max_levels)


def run_pdns(name, seed, n, target, counter, exact, extra, device, max_levels, quick):
    """``scld-pdns`` (continuous PDNS, ``train_on="smc"``, the PDNS config of ``smc_neural.py``,
    10 segments) +SMC and +SMC+MALA, and SMC at their totals."""
    cfg = CONFIGS[name]
    opts = {**cfg["pdns"], "train_on": "smc", "scld_segments": 10}
    sd = run_neural(name, PDNS, opts, 2 if quick else cfg["pdns_steps"], seed, n, target, counter, exact,
                    extra, device, label="scld-pdns", variants=[("+smc", 0), ("+smc+mala", PDNS_MALA)])
    budgets = {"B_scld_pdns": sd[0]["evals_total"], "B_scld_pdns_mala": sd[1]["evals_total"]}
    return sd + _smc_rows(name, budgets, seed, n, cfg, target, counter, exact, extra, device, max_levels)


VARIANTS = {"naas": run_naas, "scld": run_scld, "scld-fixed": run_scld_fixed, "untrained": run_untrained,
            "pdns": run_pdns}


def _key(r):
    return r["target"], r["seed"], r["method"], r.get("budget")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", default="gmm40,mw32")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--seed-start", type=int, default=0)
    p.add_argument("--variants", default="naas,scld,scld-fixed,untrained",
                   help=f"comma-separated groups of rows to run, of {tuple(VARIANTS)}")
    p.add_argument("--n-samples", type=int, default=2048)
    p.add_argument("--max-levels", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "scld.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else {"rows": []}
    if args.plot_only:
        plot(old["rows"], out.with_suffix(".png"))
        return
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {tuple(VARIANTS)}")
    rows = list(old.get("rows", []))
    n = 256 if args.quick else args.n_samples
    seeds = range(args.seed_start, args.seed_start + (1 if args.quick else args.seeds))
    for seed in seeds:
        for name in args.targets.split(","):
            target, exact, extra = make_target(name)
            counter = EvalCounter(target)
            for v in variants:
                t0 = time.perf_counter()
                new = VARIANTS[v](name, seed, n, target, counter, exact, extra, "cpu", args.max_levels, args.quick)
                keys = {_key(r) for r in new}
                rows = [r for r in rows if _key(r) not in keys] + new  # a rerun replaces its rows
                print(f"{name} seed {seed} {v}: {time.perf_counter() - t0:.0f} s", flush=True)
                doc = {"benchmark": "scld", "versions": versions(), "scld": SCLD, "n_islands": N_ISLANDS,
                       "naas_configs": {k: CONFIGS[k]["naas"] for k in SCLD},
                       "pdns_configs": {k: CONFIGS[k]["pdns"] for k in SCLD}, "resample_ess": RESAMPLE,
                       "rows": rows, "summary": summarize(rows),
                       "note": "2-core CPU shared by several developers: wall times are under contention"}
                out.write_text(json.dumps(doc, indent=1, default=float))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
