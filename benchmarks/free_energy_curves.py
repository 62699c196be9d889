"""Thermodynamic curves from one SMC run, against the exact finite-lattice curves.

For each periodic L x L Ising lattice (default 8 x 8 and 16 x 16), one SMC run over inverse
temperature (``bk.sample(Ising(L, beta_max), method="smc", cess=0.999)``: adaptive ladder that
keeps 99.9 % conditional ESS between levels, island resampling, heat-bath sweeps) records log Z
at every level (``Result.log_z_path``); ``Result.thermo_curves()`` turns it into the energy
U(beta)/N and heat capacity C(beta)/N per site with error bars (local linear fits of the log Z
increments). The exact curves come from Kaufman's log Z (``exact.ising_curve``: analytic
d log Z/dK and its Richardson difference). Reported per lattice: the maximum and rms deviation
in standard errors over all levels, the largest absolute deviations, the C peak (height and
position) against the exact one, and the final log Z against Kaufman.

Also draws the Ramachandran free-energy map F(phi, psi) (kT, 1 kT contours, bootstrap error
bars) of the shipped alanine-dipeptide metadynamics reference through
``Result.free_energy_profile`` (unbiasing weights respected).

``--alanine`` (run separately): alanine-dipeptide basin free energies at 300 K by MBAR
(``bk.mbar(...).region_free_energies``) over unrestricted AIS-with-resampling runs at several
temperatures (default 300, 360, 430, 520 K; 512 particles x 200 levels each), against the shipped
metadynamics reference; the per-run basin ESS and the pooled draws per basin are recorded.

Writes ``benchmarks/results/free_energy_curves.json`` and ``.png`` and
``free_energy_ramachandran.png``. Not run by pytest. Timings are on a shared 2-core CPU
(under contention from other jobs).

Usage: ``python benchmarks/free_energy_curves.py [--sizes 8,16 --n-samples 1024 --beta-max 0.66]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boltzkit as bk  # noqa: E402
from boltzkit.energies import exact as ex  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def run_lattice(L: int, args) -> "tuple[dict, object, object]":
    target = bk.energies.Ising(L=L, beta=args.beta_max)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bk.errors.UnreliableEstimateWarning)
        res = bk.sample(target, method="smc", n_samples=args.n_samples, seed=args.seed, progress=False,
                        cess=args.cess)
    wall = time.perf_counter() - t0
    path = res.log_z_path
    cur = res.thermo_curves()
    exact = ex.ising_curve(L, cur.beta)
    dev = cur.deviation(exact)
    dense = ex.ising_curve(L, np.linspace(0.0, args.beta_max, 661))
    k, kx = int(np.argmax(cur.heat_capacity)), int(np.argmax(dense.heat_capacity))
    row = {"L": L, "n_samples": args.n_samples, "cess": args.cess, "levels": len(path) - 1,
           "n_sweeps": res.diagnostics.get("n_sweeps"), "n_islands": res.diagnostics.get("n_islands"),
           "energy_evaluations": res.diagnostics.get("energy_evaluations"), "wall_s": round(wall, 1),
           "window_levels": cur.method, "points": int(cur.beta.size),
           "beta_range": [float(cur.beta[0]), float(cur.beta[-1])], **dev,
           "C_peak_estimate": [float(cur.beta[k]), float(cur.heat_capacity[k]), float(cur.heat_capacity_stderr[k])],
           "C_peak_exact": [float(dense.beta[kx]), float(dense.heat_capacity[kx])],
           "log_z": [float(res.log_z), float(res.log_z_stderr)],
           "log_z_exact": float(ex.ising_log_z(L, L, args.beta_max))}
    return row, cur, exact


def ramachandran(out: Path) -> dict:
    from boltzkit.analysis import load_alanine_reference

    ref = load_alanine_reference()
    ang = torch.as_tensor(np.stack([ref["phi"], ref["psi"]], 1))
    res = bk.result.result_from_log_weights(ang, torch.as_tensor(ref["log_weight"]), warn=False,
                                            method="metadynamics reference")
    cv = bk.cv.CollectiveVariable(lambda x: x, ("phi", "psi"), (True, True))
    prof = res.free_energy_profile(cv, bins=48, n_bootstrap=100)
    ax = prof.plot(max_kT=10.0, label="alanine dipeptide (ff96, vacuum, 300 K): F(phi, psi)")
    ax.figure.tight_layout()
    ax.figure.savefig(out, dpi=130)
    ok = np.isfinite(prof.f)
    return {"bins": 48, "filled": int(ok.sum()), "median_stderr_kT_below_6kT":
            float(np.nanmedian(prof.stderr[ok & (prof.f < 6)])), "n_frames": int(ang.shape[0]),
            "kish_ess": float(res.ess)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="8,16")
    p.add_argument("--n-samples", type=int, default=1024)
    p.add_argument("--beta-max", type=float, default=0.66)
    p.add_argument("--cess", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-rama", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": "free_energy_curves", "args": vars(args), "hardware": "shared 2-core CPU, contended",
           "lattices": {}}
    from boltzkit.plot import _plt

    plt = _plt()
    sizes = [int(s) for s in args.sizes.split(",")]
    fig, axes = plt.subplots(len(sizes), 2, figsize=(8.6, 3.3 * len(sizes)), squeeze=False)
    for i, L in enumerate(sizes):
        row, cur, exact = run_lattice(L, args)
        out["lattices"][f"{L}x{L}"] = row
        print(json.dumps(row))
        cur.plot(exact=exact, axes=axes[i], label=f"SMC, {L}x{L} ({row['levels']} levels)")
        axes[i][0].set_title(f"{L} x {L} Ising: U/N, max |dev| {row['energy_max_z']:.1f} stderr", fontsize=9)
        axes[i][1].set_title(f"C/N, max |dev| {row['heat_capacity_max_z']:.1f} stderr", fontsize=9)
        with open(RESULTS / "free_energy_curves.json", "w") as fh:
            json.dump(out, fh, indent=1)
    fig.tight_layout()
    fig.savefig(RESULTS / "free_energy_curves.png", dpi=130)
    if not args.no_rama:
        out["ramachandran"] = ramachandran(RESULTS / "free_energy_ramachandran.png")
        print(json.dumps(out["ramachandran"]))
    with open(RESULTS / "free_energy_curves.json", "w") as fh:
        json.dump(out, fh, indent=1)
    return out




def alanine_mbar(args) -> dict:
    """Alanine dipeptide basins at 300 K by MBAR over unrestricted runs at several temperatures."""
    from boltzkit.analysis import ALANINE_BASINS, alanine_basin, basin_ess, load_alanine_reference
    from boltzkit.energies.molecular import AlanineDipeptide

    temps = [float(t) for t in args.temperatures.split(",")]
    targets, results, runs = [], [], []
    for i, T in enumerate(temps):
        ala = AlanineDipeptide("vacuum", temperature=T)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bk.errors.UnreliableEstimateWarning)
            res = bk.sample(ala, method="ais", n_samples=args.ala_samples, n_steps=args.ala_levels,
                            resample_ess=0.5, seed=args.seed + i, progress=False)
        phi, psi = ala.phi_psi(res.samples)
        runs.append({"T": T, "wall_s": round(time.perf_counter() - t0, 1), "ess": float(res.ess),
                     "basin_ess": basin_ess(phi, psi, res.log_weights)})
        print(json.dumps(runs[-1]))
        targets.append(ala)
        results.append(res)
    m = bk.mbar(results, targets, seed=args.seed)
    cv = bk.cv.phi_psi()

    def basin(i):
        return lambda x: torch.as_tensor(alanine_basin(*cv(x).T) == i)

    regions = {b: basin(i) for i, b in enumerate(ALANINE_BASINS)}
    dfs = m.region_free_energies(regions, state=0)
    labels = alanine_basin(*cv(m._x).T)
    ref = load_alanine_reference()["meta"]
    return {"temperatures_K": temps, "samples_per_run": args.ala_samples, "levels": args.ala_levels,
            "energy_evaluations_per_run": args.ala_samples * args.ala_levels, "runs": runs,
            "mbar_draws_per_state": m.n_samples.tolist(), "overlap": m.overlap,
            "pooled_draws_per_basin": {b: int((labels == i).sum()) for i, b in enumerate(ALANINE_BASINS)},
            "dF_300K_kT": {b: [d.value, d.stderr] for b, d in dfs.items()},
            "reference_delta_f_kT": ref["delta_f_kT"]}


def alanine_main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="alanine basins by MBAR over temperatures")
    p.add_argument("--temperatures", default="300,360,430,520")
    p.add_argument("--ala-samples", type=int, default=512)
    p.add_argument("--ala-levels", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out_path = RESULTS / "free_energy_curves.json"
    doc = json.loads(out_path.read_text()) if out_path.exists() else {}
    doc["alanine_mbar"] = alanine_mbar(args)
    print(json.dumps(doc["alanine_mbar"], indent=1))
    with open(out_path, "w") as fh:
        json.dump(doc, fh, indent=1)
    return doc


if __name__ == "__main__":
    if "--alanine" in sys.argv:  # the alanine part alone: python benchmarks/free_energy_curves.py --alanine
        sys.argv.remove("--alanine")
        alanine_main()
    else:
        main()
