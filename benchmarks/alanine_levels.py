"""Alanine dipeptide (ff96, vacuum, 300 K): basin free energies from ONE unrestricted run, by MBAR
over the levels of the annealing path (issue 20, item 4), along two paths at the same budget.

One AIS/SMC run (adaptive ladder, island resampling, ``n_samples`` particles, 200 levels) in
internal coordinates (``AlanineDipeptide().internal()``: phi, psi and the methyl rotors spread
over their circle), with ``keep_levels`` particles kept at every level together with their
reference and target energies, per path and seed:

* ``geometric``: the default path from the reference to exp(-U);
* a temperature ladder (``beta_start=b``, e.g. 0.4 = 300 K / 750 K): geometric from the reference
  to exp(-b U), then tempering exp(-beta U) from beta = b to 1, so MBAR pools the temperatures.

Both have 200 levels of one MALA step, so the energy evaluations agree up to the pilot (reported).
Two estimates of ``dF(A) = -log(P_A / P_C7eq)`` (kT) for A = alpha_R, C7ax:

* ``final``: the run's final weighted particles alone
  (:func:`boltzkit.energies.alanine.basin_free_energies`, jackknife over contiguous blocks = groups
  of islands).
* ``levels_mbar``: every kept particle of every level through MBAR
  (:func:`boltzkit.free_energy.level_mbar`; pymbar's ``compute_perturbed_free_energies`` of the
  target restricted to each basin), error bars by a delete-one-group jackknife over the run's
  independent islands (:func:`boltzkit.free_energy.level_mbar_jackknife`; pymbar's analytic
  errors are reported too but assume independent draws).

Each is compared with the shipped metadynamics reference and the REMD cross-check
(``benchmarks/results/alanine_reference.json``): z = (estimate - reference) / sqrt(se^2 + se_ref^2).
Reported per run: the per-basin ESS (final weights; resampled copies count as independent, so it
overstates), how the final weight of each rare basin spreads over the islands, MBAR's Kish ESS per
basin at 300 K and the number of kept particles per basin.

Writes ``benchmarks/results/alanine_levels.json`` and ``.png``. Not run by pytest.
Usage: ``nice -n 5 python benchmarks/alanine_levels.py [--n-samples 2048 --keep 32 --seeds 0,1,2
--paths geometric,0.4]`` (about 1.5-3 minutes per run on a shared 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boltzkit as bk  # noqa: E402
from boltzkit.energies.alanine import ALANINE_BASINS, alanine_basin, basin_ess, basin_free_energies  # noqa: E402
from boltzkit.energies.molecular import AlanineDipeptide  # noqa: E402
from boltzkit.errors import TargetError  # noqa: E402
from boltzkit.free_energy import FreeEnergyDifference, level_mbar, level_mbar_jackknife  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def run_path(ala, ic, beta_start, seed, a, ref, ref_remd):
    """One unrestricted run along one path; returns (rows, meta)."""
    name = "geometric" if beta_start is None else f"temperature (beta_start={beta_start:g})"
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bk.errors.UnreliableEstimateWarning)
        extra = {"n_islands": a.islands} if a.islands else {}
        if beta_start is not None:
            extra["beta_start"] = beta_start
        if a.min_levels:
            extra["min_levels"] = a.min_levels
        res = bk.sample(ic, method="ais", n_samples=a.n_samples, keep_levels=a.keep, seed=seed,
                        device="cpu", progress=False, **extra)
    wall = time.perf_counter() - t0
    d = res.diagnostics

    def basins_of(x):
        phi, psi = ala.phi_psi_torch(ic.to_cartesian(torch.as_tensor(x)))
        return alanine_basin(phi.numpy(), psi.numpy())

    # --- final particles alone (jackknife over contiguous blocks = groups of islands)
    phi, psi = (v.numpy() for v in ala.phi_psi_torch(ic.to_cartesian(res.samples)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bk.errors.UnreliableEstimateWarning)
        final = basin_free_energies(phi, psi, res.log_weights.numpy(), n_blocks=a.groups)
    ess = basin_ess(phi, psi, res.log_weights.numpy())
    # how the final weight of each rare basin is spread over the independent islands
    lw = res.log_weights.numpy()
    w = np.exp(lw - lw.max())
    lab = alanine_basin(phi, psi)
    M = int(d.get("n_islands") or 1)
    spread = {}
    for i, b in enumerate(ALANINE_BASINS[1:], start=1):
        per = np.bincount(np.repeat(np.arange(M), lab.size // M), weights=w * (lab == i), minlength=M)
        tot = per.sum()
        spread[b] = {"islands_holding": int((per > 1e-3 * tot).sum()) if tot > 0 else 0,
                     "largest_island_share": float(per.max() / tot) if tot > 0 else float("nan"),
                     "particles": int((lab == i).sum())}

    # --- MBAR over the levels (for a temperature ladder: its tempering levels are beta_k U)
    t1 = time.perf_counter()
    regions = {b: (lambda x, i=i: torch.from_numpy(basins_of(x) == i)) for i, b in enumerate(ALANINE_BASINS)}

    def df(mb):
        try:
            r = mb.region_free_energies(regions, state=len(mb.states) - 1)
        except TargetError:  # a basin with no kept particle (at this jackknife replicate)
            return np.full(len(ALANINE_BASINS) - 1, np.inf)
        return np.array([r[b].value for b in ALANINE_BASINS[1:]])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bk.errors.UnreliableEstimateWarning)
        mb = level_mbar(res, target=ic)
        try:
            analytic = mb.region_free_energies(regions, state=len(mb.states) - 1)
        except TargetError:
            analytic = {b: FreeEnergyDifference(math.inf, math.nan, "MBAR", (), (), math.nan)
                        for b in ALANINE_BASINS}
        val, se = level_mbar_jackknife(res, df, n_groups=a.groups)
    mbar_wall = time.perf_counter() - t1
    lab_all = basins_of(torch.as_tensor(res.history["level_samples"]).reshape(-1, ic.domain.dim))
    kept_counts = {b: int((lab_all == i).sum()) for i, b in enumerate(ALANINE_BASINS)}
    # MBAR's effective number of kept samples per basin at the target (Kish, over its weights)
    w_t = np.asarray(mb._mbar.weights())[:, -1]  # pymbar's W_nk at the target state
    lab_mb = basins_of(mb._x)
    mbar_ess = {}
    for i, b in enumerate(ALANINE_BASINS):
        wb = w_t[lab_mb == i]
        mbar_ess[b] = float(wb.sum() ** 2 / (wb ** 2).sum()) if wb.size and wb.sum() > 0 else 0.0

    def z(v, s, r):
        return (v - r[0]) / math.sqrt(s ** 2 + r[1] ** 2) if math.isfinite(s) else float("nan")

    rows = []
    for j, b in enumerate(ALANINE_BASINS[1:]):
        for est, v, s, more in (("final", final[b][0], final[b][1], {"basin_ess_final": ess[b]}),
                                ("levels_mbar", float(val[j]), float(se[j]),
                                 {"pymbar_analytic_stderr": analytic[b].stderr,
                                  "kept_particles_in_basin": kept_counts[b],
                                  "mbar_basin_ess": mbar_ess.get(b)})):
            rows.append({"path": name, "seed": seed, "basin": b, "estimator": est, "delta_f_kT": v, "stderr": s,
                         "reference": ref[b][0], "reference_stderr": ref[b][1], "z": z(v, s, ref[b]),
                         "z_vs_remd": z(v, s, ref_remd[b]), **more})
            print(json.dumps(rows[-1]), flush=True)
    lam = res.history["lambda"]
    meta = {"path": name, "seed": seed, "beta_start": beta_start,
            "t_high_K": None if beta_start is None else 300.0 / beta_start,
            "n_samples": res.n_samples, "n_levels": d["n_levels"],
            "tempering_levels": None if beta_start is None else int((lam > beta_start).sum()),
            "pilot_levels": d.get("pilot_levels"), "n_islands": d.get("n_islands"),
            "log_z": res.log_z, "log_z_stderr": res.log_z_stderr, "ess": res.ess,
            "basin_ess_final": ess, "basin_spread_over_islands": spread, "reliable": res.reliable,
            "energy_evaluations": d.get("energy_evaluations"), "wall_s": wall, "mbar_wall_s": mbar_wall,
            "mbar_overlap": mb.overlap, "mbar_states": len(mb.states),
            "kept_particles": int(res.history["level_u"].size)}
    print(json.dumps(meta, default=float), flush=True)
    return rows, meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-samples", type=int, default=2048)
    p.add_argument("--keep", type=int, default=32, help="particles kept per level")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds (one run per path and seed)")
    p.add_argument("--groups", type=int, default=8, help="island groups of the jackknife")
    p.add_argument("--islands", type=int, default=None, help="n_islands (None: the default, ~n/32)")
    p.add_argument("--min-levels", type=int, default=None, help="min_levels of the ladder (None: 200)")
    p.add_argument("--paths", default="geometric,0.4",
                   help="comma list: 'geometric' and/or beta_start values (300 K / T_high)")
    p.add_argument("--out", default=str(RESULTS / "alanine_levels"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ala = AlanineDipeptide("vacuum")
    ic = ala.internal()
    refs = json.loads((RESULTS / "alanine_reference.json").read_text())
    ref, ref_remd = refs["delta_f_kT"], refs["cross_check"]["delta_f_kT"]
    rows, runs = [], []
    for seed in (int(v) for v in a.seeds.split(",")):
        for spec in a.paths.split(","):
            r, m = run_path(ala, ic, None if spec.strip() == "geometric" else float(spec), seed, a, ref,
                            ref_remd)
            rows += r
            runs.append(m)
    summary = {}
    for name in dict.fromkeys(r["path"] for r in rows):
        for b in ALANINE_BASINS[1:]:
            for est in ("final", "levels_mbar"):
                sub = [r for r in rows if (r["path"], r["basin"], r["estimator"]) == (name, b, est)]
                v = np.array([r["delta_f_kT"] for r in sub])
                se = np.array([r["stderr"] for r in sub])
                summary[f"{name} | {b} | {est}"] = {
                    "values": v.tolist(), "stderrs": se.tolist(), "median_stderr": float(np.median(se)),
                    "spread_over_seeds": float(v.std(ddof=1)) if v.size > 1 and np.isfinite(v).all() else None,
                    "within_2_sigma_of_reference": [bool(abs(r["z"]) <= 2) for r in sub]}
    print(json.dumps(summary, indent=1, default=float))
    out = {"meta": {"device": "cpu (2 cores shared with other jobs)", "torch": torch.__version__,
                    "argv": vars(a), "reference": "metadynamics (alanine_reference.json delta_f_kT)",
                    "reference_remd": ref_remd, "runs": runs, "summary": summary},
           "rows": rows}
    path = Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(out, indent=1, default=float))
    plot(rows, ref_remd, path.with_suffix(".png"))
    print(f"wrote {path.with_suffix('.json')} and .png")


def plot(rows, ref_remd, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(dict.fromkeys((r["path"], r["estimator"]) for r in rows))
    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    width = 0.7 / max(1, len(series))
    for k, b in enumerate(ALANINE_BASINS[1:]):
        sub = [r for r in rows if r["basin"] == b]
        ref, rse = sub[0]["reference"], sub[0]["reference_stderr"]
        ax.axhspan(ref - 2 * rse, ref + 2 * rse, xmin=k / 2 + 0.02, xmax=(k + 1) / 2 - 0.02, color="grey",
                   alpha=0.3, label="metadynamics +- 2 se" if k == 0 else None)
        rv, rs = ref_remd[b]
        ax.errorbar(k + 0.4, rv, yerr=rs, fmt="D", color="k", capsize=3, label="REMD +- 1 se" if k == 0 else None)
        for j, key in enumerate(series):
            for q, sd in enumerate(seeds):
                r = next((r for r in sub if (r["path"], r["estimator"], r["seed"]) == (*key, sd)), None)
                if r is None or not math.isfinite(r["delta_f_kT"]):
                    continue
                x = k - 0.35 + width * (j + (q + 0.5) / len(seeds))
                finite = math.isfinite(r["stderr"])  # open marker: no finite error bar
                ax.errorbar(x, r["delta_f_kT"], yerr=r["stderr"] if finite else 0,
                            fmt="o" if r["estimator"] == "final" else "s", color=colors[j % len(colors)],
                            mfc=None if finite else "none", capsize=2,
                            label=f"{key[0]}: {key[1]}" if k == 0 and q == 0 else None)
    ax.set_xticks([0, 1])
    ax.set_xticklabels(ALANINE_BASINS[1:])
    ax.set_xlim(-0.5, 1.6)
    ax.set_ylabel("dF vs C7eq (kT), +- 1 se (island jackknife; open: none)")
    ax.set_title(f"Alanine dipeptide: one unrestricted SMC run per path and seed (seeds {seeds})")
    ax.set_ylim(0, 12)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
