"""Alanine dipeptide (ff96, vacuum, 300 K): basin free energies from ONE unrestricted run, by MBAR
over the levels of the annealing path (issue 20, item 4).

One AIS/SMC run with its defaults (adaptive ladder, island resampling) in internal coordinates
(``AlanineDipeptide().internal()``: phi, psi and the methyl rotors spread over their circle),
with ``keep_levels`` particles kept at every level together with their reference and target
energies. Two estimates of ``dF(A) = -log(P_A / P_C7eq)`` (kT) for A = alpha_R, C7ax:

* ``final``: the run's final weighted particles alone
  (:func:`boltzkit.analysis.basin_free_energies`, jackknife over contiguous blocks = groups of
  islands).
* ``levels_mbar``: every kept particle of every level through MBAR
  (:func:`boltzkit.free_energy.level_mbar`; pymbar's ``compute_perturbed_free_energies`` of the
  target restricted to each basin), error bars by a delete-one-group jackknife over the run's
  independent islands (:func:`boltzkit.free_energy.level_mbar_jackknife`; pymbar's analytic
  errors are reported too but assume independent draws).

Each is compared with the shipped metadynamics reference
(``benchmarks/results/alanine_reference.json``): z = (estimate - reference) / sqrt(se^2 + se_ref^2).
The per-basin ESS (final weights) and the number of kept particles per basin are reported.

Writes ``benchmarks/results/alanine_levels.json`` and ``.png``. Not run by pytest.
Usage: ``nice -n 5 python benchmarks/alanine_levels.py [--n-samples 1024 --keep 32 --seed 0]``
(about 10 CPU-minutes at the defaults on a shared 2-core CPU).
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
from boltzkit.free_energy import level_mbar, level_mbar_jackknife  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-samples", type=int, default=1024)
    p.add_argument("--keep", type=int, default=32, help="particles kept per level")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--groups", type=int, default=8, help="island groups of the jackknife")
    p.add_argument("--islands", type=int, default=None, help="n_islands (None: the default, ~n/32)")
    p.add_argument("--out", default=str(RESULTS / "alanine_levels"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ala = AlanineDipeptide("vacuum")
    ic = ala.internal()
    ref = json.loads((RESULTS / "alanine_reference.json").read_text())["delta_f_kT"]

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bk.errors.UnreliableEstimateWarning)
        extra = {"n_islands": a.islands} if a.islands else {}
        res = bk.sample(ic, method="ais", n_samples=a.n_samples, keep_levels=a.keep, seed=a.seed,
                        device="cpu", progress=False, **extra)
    wall = time.perf_counter() - t0
    d = res.diagnostics

    def basins_of(x):
        phi, psi = ala.phi_psi_torch(ic.to_cartesian(torch.as_tensor(x)))
        return alanine_basin(phi.numpy(), psi.numpy())

    # --- final particles alone
    phi, psi = (v.numpy() for v in ala.phi_psi_torch(ic.to_cartesian(res.samples)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bk.errors.UnreliableEstimateWarning)
        final = basin_free_energies(phi, psi, res.log_weights.numpy(), n_blocks=a.groups)
    ess = basin_ess(phi, psi, res.log_weights.numpy())

    # --- MBAR over the levels
    t1 = time.perf_counter()
    regions = {b: (lambda x, i=i: torch.from_numpy(basins_of(x) == i)) for i, b in enumerate(ALANINE_BASINS)}

    def df(mb):
        r = mb.region_free_energies(regions, state=len(mb.states) - 1)
        return np.array([r[b].value for b in ALANINE_BASINS[1:]])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bk.errors.UnreliableEstimateWarning)
        mb = level_mbar(res, target=ic)
        analytic = mb.region_free_energies(regions, state=len(mb.states) - 1)
        val, se = level_mbar_jackknife(res, df, n_groups=a.groups)
    mbar_wall = time.perf_counter() - t1
    lab_all = basins_of(torch.as_tensor(res.history["level_samples"]).reshape(-1, 60))
    kept_counts = {b: int((lab_all == i).sum()) for i, b in enumerate(ALANINE_BASINS)}

    rows = []
    for j, b in enumerate(ALANINE_BASINS[1:]):
        r_v, r_se = ref[b]
        for name, v, s, extra in (("final", final[b][0], final[b][1], {"basin_ess_final": ess[b]}),
                                  ("levels_mbar", float(val[j]), float(se[j]),
                                   {"pymbar_analytic_stderr": analytic[b].stderr,
                                    "kept_particles_in_basin": kept_counts[b]})):
            z = (v - r_v) / math.sqrt(s ** 2 + r_se ** 2) if math.isfinite(s) else float("nan")
            rows.append({"basin": b, "estimator": name, "delta_f_kT": v, "stderr": s,
                         "reference": r_v, "reference_stderr": r_se, "z": z, **extra})
            print(json.dumps(rows[-1]), flush=True)
    out = {"meta": {"device": "cpu (2 cores shared)", "torch": torch.__version__, "argv": vars(a),
                    "run": {"n_samples": res.n_samples, "n_levels": d["n_levels"],
                            "pilot_levels": d.get("pilot_levels"), "n_islands": d.get("n_islands"),
                            "log_z": res.log_z, "log_z_stderr": res.log_z_stderr, "ess": res.ess,
                            "reliable": res.reliable, "energy_evaluations": d.get("energy_evaluations"),
                            "wall_s": wall, "mbar_wall_s": mbar_wall, "mbar_overlap": mb.overlap,
                            "kept_particles": int(res.history["level_u"].size)}},
           "rows": rows}
    path = Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(out, indent=1, default=float))
    plot(rows, path.with_suffix(".png"))
    print(f"wrote {path.with_suffix('.json')} and .png")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, b in enumerate(ALANINE_BASINS[1:]):
        sub = [r for r in rows if r["basin"] == b]
        ref, rse = sub[0]["reference"], sub[0]["reference_stderr"]
        ax.axhspan(ref - 2 * rse, ref + 2 * rse, xmin=k / 2 + 0.02, xmax=(k + 1) / 2 - 0.02, color="grey", alpha=0.3)
        for j, r in enumerate(sub):
            ax.errorbar(k + 0.15 * (2 * j - 1), r["delta_f_kT"], yerr=r["stderr"] if math.isfinite(r["stderr"]) else 0,
                        fmt="o" if j else "s", color=("tab:blue", "tab:orange")[j], capsize=3,
                        label=r["estimator"] if k == 0 else None)
    ax.set_xticks([0, 1])
    ax.set_xticklabels(ALANINE_BASINS[1:])
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylabel("dF vs C7eq (kT), +- 1 se; grey: reference +- 2 se")
    ax.set_title("Alanine dipeptide, one unrestricted SMC run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
