"""Alanine dipeptide (ff96, vacuum, 300 K): neural samplers vs MD/MALA vs the shipped reference.

For every method: the Ramachandran map, the free energies of alpha_R and C7ax relative to
C7eq (jackknife error bars; basins as in :mod:`boltzkit.analysis`), the Jensen-Shannon
divergence of the (phi, psi) histogram (36 x 36 bins) from the reference, the potential-energy
histogram, the number of energy(+force) evaluations and the wall time.

Methods
-------
The methods without a suffix run in Cartesian coordinates
(``AlanineDipeptide(coordinates="cartesian")``): the target's ``prior_hint()`` (the harmonic
frame of its minimized structure) centres and whitens the Gaussian prior / reference / chain
start of each continuous sampler, which returns samples in nm. The ``_ic`` methods run in
internal coordinates, where ``bk.sample(AlanineDipeptide())`` samples by default.

* ``naas``: NAAS in the Cartesian frame; weighted samples, log Z.
* ``naas0``: the same sampler untrained (``n_steps=0``, zero control): its uncontrolled
  annealed-Langevin (ULA-AIS) chain from the harmonic prior, the baseline the training has
  to beat.
* ``pdns``: continuous PDNS (Brownian reference from the minimized structure); one energy
  evaluation per trajectory, so it is run with its own (smaller) budget and the count is
  reported.
* ``ais``: annealed importance sampling with MALA moves from the harmonic frame, at the
  NAAS budget (particles x levels).
* ``mala``: MALA chains (preconditioned by the frame) with the same number of energy+gradient
  evaluations as NAAS used (or ``--budget``).
* ``naas_ic`` / ``naas0_ic``: NAAS trained / untrained in internal coordinates (the default
  of ``bk.sample(AlanineDipeptide())``; ``AlanineDipeptide.internal()``: bonds, angles and dihedrals, the full harmonic frame with
  phi, psi and the methyl rotors spread over their circle), K = 256; samples mapped back to
  Cartesian coordinates for the analysis.
* ``pdns_ic``: PDNS in the same internal coordinates, with the Cartesian run's options.
* ``ais_ic``: AIS with MALA moves from the same internal-coordinate frame, at the NAAS budget.
* ``md``: one OpenMM Langevin trajectory (LangevinMiddle, 1 fs, 1/ps, no constraints) with
  the same number of force evaluations (integration steps).

The reference is the shipped enhanced-sampling file (``benchmarks/alanine_reference.py``).
Writes ``benchmarks/results/alanine_dipeptide.json`` and ``.png``. Not run by pytest.

Usage: ``python benchmarks/alanine_dipeptide.py [--naas-steps 100 --budget 2000000]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import boltzkit as bk  # noqa: E402
from boltzkit.analysis import (basin_ess, basin_free_energies, load_alanine_reference,  # noqa: E402
                               plot_ramachandran, ramachandran_histogram)
from boltzkit.energies.molecular import AlanineDipeptide, alanine_dipeptide_system  # noqa: E402


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (nats) between two histograms."""
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(p.ravel(), q.ravel(), base=math.e) ** 2)


def summarize(name, phi, psi, energy_kT, log_weights, ref_hist, n_eval, wall, n_blocks=10, extra=None):
    dfs = basin_free_energies(phi, psi, log_weights, n_blocks=n_blocks)
    h, _ = ramachandran_histogram(phi, psi, log_weights, bins=36)
    out = {"method": name, "n_energy_evaluations": int(n_eval), "wall_time_s": wall,
           "n_samples": int(np.size(phi)), "delta_f_kT": {b: list(v) for b, v in dfs.items()},
           "js_divergence_36x36": js_divergence(h, ref_hist),
           "visited_C7ax_fraction_unweighted": float(np.mean((np.degrees(phi) > 0) & (np.degrees(phi) < 120)))}
    if log_weights is not None:  # how many effective samples each basin's dF rests on
        out["basin_ess"] = basin_ess(phi, psi, log_weights)
    if extra:
        out.update(extra)
    print(f"{name:>6}: evals {n_eval:>9,d}  wall {wall:7.1f} s  dF(alpha_R) "
          f"{dfs['alpha_R'][0]:6.2f} +- {dfs['alpha_R'][1]:.2f}  dF(C7ax) {dfs['C7ax'][0]:6.2f} +- "
          f"{dfs['C7ax'][1]:.2f} kT  JS {out['js_divergence_36x36']:.3f}", flush=True)
    return out, (phi, psi, energy_kT, log_weights)


def run_md(n_steps: int, seed: int, stride: int = 1000):
    import openmm as mm
    import openmm.unit as u

    system, _, pos = alanine_dipeptide_system("vacuum")
    integ = mm.LangevinMiddleIntegrator(300 * u.kelvin, 1.0 / u.picosecond, 0.001 * u.picosecond)
    integ.setRandomNumberSeed(seed)
    ctx = mm.Context(system, integ, mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos)
    ctx.setVelocitiesToTemperature(300 * u.kelvin, seed)
    frames, energies = [], []
    t0 = time.time()
    for _ in range(max(1, n_steps // stride)):
        integ.step(stride)
        st = ctx.getState(getPositions=True, getEnergy=True)
        frames.append(st.getPositions(asNumpy=True)._value.copy())
        energies.append(st.getPotentialEnergy()._value)
    return np.stack(frames), np.array(energies), time.time() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--naas-steps", type=int, default=100)
    p.add_argument("--naas-batch", type=int, default=64)
    p.add_argument("--naas-time-steps", type=int, default=64)
    p.add_argument("--pdns-steps", type=int, default=3000)
    p.add_argument("--pdns-batch", type=int, default=256)
    p.add_argument("--n-samples", type=int, default=4096)
    p.add_argument("--budget", type=int, default=None,
                   help="energy evaluations of AIS/MALA/MD (default: what NAAS used)")
    p.add_argument("--mala-chains", type=int, default=64)
    p.add_argument("--ic-steps", type=int, default=40)
    p.add_argument("--ic-time-steps", type=int, default=256)
    p.add_argument("--methods", default="naas,naas0,pdns,ais,mala,md,naas_ic,naas0_ic,pdns_ic,ais_ic")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", bk.errors.ConvergenceWarning)
    methods = args.methods.split(",")

    target = AlanineDipeptide("vacuum", coordinates="cartesian")
    kT = target.kT
    t0 = time.time()
    target.prior_hint()  # computed once (minimization + finite-difference Hessian), cached
    hint_s, hint_evals = time.time() - t0, target.n_evaluations
    ref = load_alanine_reference()
    ref_hist, _ = ramachandran_histogram(ref["phi"], ref["psi"], ref["log_weight"], bins=36)
    rows, data = [], {}
    rows_ref, data["reference"] = summarize("ref", ref["phi"], ref["psi"], ref["energy"], ref["log_weight"],
                                            ref_hist, 0, float(ref["meta"]["cpu_seconds"]),
                                            n_blocks=20)
    rows.append(rows_ref)

    def weighted(name, res, wall, n_eval, extra, x=None):
        x = res.samples.double() if x is None else x
        phi, psi = target.phi_psi(x)
        e = target.openmm_energy(x) / kT
        lw = None if res.log_weights is None else res.log_weights.double().numpy()
        row, data[name] = summarize(name, phi, psi, e, lw, ref_hist, n_eval, wall,
                                    extra={"log_z": res.log_z, "log_z_stderr": res.log_z_stderr,
                                           "ess": res.ess, "pareto_k": res.diagnostics.get("pareto_k"),
                                           "all_L": bool(target.is_l(x).all()),
                                           "energy_median_kT": float(np.median(e)), **extra})
        rows.append(row)

    # ---------------------------------------------------------------- neural samplers
    budget = args.budget
    neural = {"naas": dict(n_steps=args.naas_steps, batch_size=args.naas_batch,
                           n_time_steps=args.naas_time_steps),
              "pdns": dict(n_steps=args.pdns_steps, batch_size=args.pdns_batch)}
    neural["naas0"] = {**neural["naas"], "n_steps": 0}
    for name in ("naas", "naas0", "pdns"):
        if name not in methods:
            continue
        method = name.rstrip("0")
        opts = dict(neural[name])
        n_steps = opts.pop("n_steps")
        target.n_evaluations = 0
        t0 = time.time()
        try:
            res = bk.sample(target, method=method, n_samples=args.n_samples, n_steps=n_steps,
                            seed=args.seed, progress=False, **opts)
        except Exception as exc:
            print(f"{method}: failed with {type(exc).__name__}: {exc}")
            rows.append({"method": name, "error": f"{type(exc).__name__}: {exc}",
                         "n_energy_evaluations": target.n_evaluations, "wall_time_s": time.time() - t0})
            continue
        wall, n_eval = time.time() - t0, target.n_evaluations
        h = res.history
        weighted(name, res, wall, n_eval,
                 {"options": opts, "n_steps": n_steps,
                  "train_ess_frac_last10": float(np.mean(h["ess_frac"][-10:])) if "ess_frac" in h else None})
        if name == "naas":
            budget = budget or n_eval
    budget = budget or 2_000_000

    # ---------------------------------------------------------------- internal coordinates
    ic = target.internal()
    naas_ic = dict(batch_size=args.naas_batch, n_time_steps=args.ic_time_steps, lr=3e-4)
    ic_runs = {"naas_ic": ("naas", args.ic_steps, naas_ic), "naas0_ic": ("naas", 0, naas_ic),
               "pdns_ic": ("pdns", args.pdns_steps, dict(batch_size=args.pdns_batch))}
    for name, (method, n_steps, opts) in ic_runs.items():
        if name not in methods:
            continue
        target.n_evaluations = 0
        t0 = time.time()
        res = bk.sample(ic, method=method, n_samples=args.n_samples, n_steps=n_steps,
                        seed=args.seed, progress=False, **opts)
        wall, n_eval = time.time() - t0, target.n_evaluations
        h = res.history
        weighted(name, res, wall, n_eval,
                 {"options": opts, "n_steps": n_steps, "coordinates": "internal (full hint)",
                  "log_z_cartesian": ic.cartesian_log_z(res.log_z),
                  "soft_torsions": [int(i) for i in ic.soft_index],
                  "train_ess_frac_last10": float(np.mean(h["ess_frac"][-10:])) if "ess_frac" in h else None},
                 x=ic.to_cartesian(res.samples))

    # ---------------------------------------------------------------- AIS at equal evaluations
    # (ais_ic: the same frame and path family as naas_ic, MALA moves instead of a control)
    for name, tgt, to_x in (("ais_ic", ic, ic.to_cartesian), ("ais", target, None)):
        if name not in methods:
            continue
        n_part = 1024
        levels = max(2, budget // n_part)
        target.n_evaluations = 0
        t0 = time.time()
        res = bk.sample(tgt, method="ais", n_samples=n_part, n_steps=levels, seed=args.seed,
                        progress=False)
        extra = {"n_levels": levels, "acceptance": res.diagnostics["acceptance"]}
        if to_x is not None:
            extra.update(coordinates="internal (full hint)", log_z_cartesian=ic.cartesian_log_z(res.log_z))
        weighted(name, res, time.time() - t0, target.n_evaluations, extra,
                 x=None if to_x is None else to_x(res.samples))

    # ---------------------------------------------------------------- MALA at equal evaluations
    if "mala" in methods:
        target.n_evaluations = 0
        C = args.mala_chains
        total_steps = max(2, budget // C)
        burn = total_steps // 4
        t0 = time.time()
        res = bk.sample(target, method="mala", n_samples=C * (total_steps - burn), n_steps=burn,
                        n_chains=C, seed=args.seed, progress=False)
        wall = time.time() - t0
        x = res.samples.double()
        keep = slice(None, None, max(1, x.shape[0] // 20000))  # analysis subsample
        x = x[keep]
        phi, psi = target.phi_psi(x)
        row, data["mala"] = summarize("mala", phi, psi, target.openmm_energy(x) / kT, None, ref_hist,
                                      target.n_evaluations, wall,
                                      extra={"acceptance": res.diagnostics["acceptance"],
                                             "step_size": res.diagnostics["step_size"],
                                             "all_L": bool(target.is_l(x).all())})
        rows.append(row)

    # ---------------------------------------------------------------- plain MD
    if "md" in methods:
        frames, e_md, wall = run_md(budget, args.seed + 1)
        xm = torch.from_numpy(frames.reshape(len(frames), -1))
        phi, psi = target.phi_psi(xm)
        row, data["md"] = summarize("md", phi, psi, e_md / kT, None, ref_hist, budget, wall,
                                    n_blocks=min(10, len(frames)))
        rows.append(row)

    # ---------------------------------------------------------------- outputs
    out_dir = os.path.join(HERE, "results")
    os.makedirs(out_dir, exist_ok=True)
    summary = {"target": target.to_config(), "budget_evaluations": budget, "args": vars(args),
               "prior_hint": {"seconds": hint_s, "energy_evaluations": hint_evals,
                              "log_det": target.prior_hint().log_det,
                              "max_std_nm": target.hint_max_std},
               "reference_meta": {k: ref["meta"][k] for k in ("delta_f_kT", "method", "n_frames")},
               "results": rows, "versions": {"torch": torch.__version__}}
    with open(os.path.join(out_dir, "alanine_dipeptide.json"), "w") as fh:
        json.dump(summary, fh, indent=1, default=float)

    from boltzkit.plot import _plt

    plt = _plt()
    names = list(data)
    ncol = min(4, len(names) + 1)
    nrow = -(-(len(names) + 1) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.3 * ncol, 3.8 * nrow), squeeze=False)
    axes = axes.ravel()
    for ax, name in zip(axes, names):
        phi, psi, _, lw = data[name]
        plot_ramachandran(phi, psi, lw, ax=ax, bins=36, title=name)
    for ax in axes[len(names) + 1:]:
        ax.set_axis_off()
    ax = axes[len(names)]
    bins = np.linspace(-45, 15, 61)
    for name in names:
        _, _, e, lw = data[name]
        w = None if lw is None else np.exp(np.asarray(lw) - np.max(lw))
        ax.hist(np.asarray(e), bins=bins, weights=w, density=True, histtype="step", label=name)
    ax.set(xlabel="potential energy (kT)", ylabel="density", title="energy histogram")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "alanine_dipeptide.png"), dpi=110)
    print(f"wrote {out_dir}/alanine_dipeptide.json and .png")


if __name__ == "__main__":
    main()
