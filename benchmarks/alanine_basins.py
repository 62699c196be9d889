"""Alanine dipeptide (ff96, vacuum, 300 K): basin free energies by restriction.

Each Ramachandran basin is sampled on its own (``AlanineDipeptide.basin(name)``: internal
coordinates around the basin's own structure, a flat-bottom wall on (phi, psi) outside the
basin box), so no sampler has to cross the phi barrier. The basin's log Z is the run's log Z
plus the log of the weighted fraction of samples inside the box
(``BasinEnergy.log_z_inside``, which removes the layer beyond the wall);
``dF(A) = -(log Z_A - log Z_C7eq)`` with the error bars of the two log Z added in quadrature.
Compared with the shipped metadynamics reference (the same basin boxes).

Variants (energy evaluations per basin are recorded; the defaults spend about 2M on each):

* ``smc``: AIS with island resampling (``resample_ess=0.5``, 16 islands; error bars from the
  spread of the independent islands), 2048 particles x 1000 levels.
* ``ais``: plain AIS (delta-method error bars; biased low when the weights degenerate).
* ``naas``: NAAS (K = 256 time steps, relaxation 0.3), ``--naas-steps`` training steps of 64
  trajectories, then 2048 samples.
* ``naas0``: the same NAAS untrained (its annealed Langevin reference alone: a Jarzynski
  estimate with exact path weights), 2048 samples.
* ``pdns``: PDNS (Brownian reference from the basin structure's harmonic frame; no energy
  gradients), ``--pdns-steps`` steps of 256 trajectories, then 2048 samples.

Writes ``benchmarks/results/alanine_basins.json`` (rows of variants run earlier are kept, so
variants may run in separate processes) and ``.png``. Not run by pytest.

Usage: ``python benchmarks/alanine_basins.py [--variants smc,ais --n-samples 2048 --levels 1000]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import boltzkit as bk  # noqa: E402
from boltzkit.analysis import ALANINE_BASINS, load_alanine_reference  # noqa: E402
from boltzkit.energies.molecular import AlanineDipeptide  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-samples", type=int, default=2048)
    p.add_argument("--levels", type=int, default=1000)
    p.add_argument("--variants", default="smc,ais,naas0,naas,pdns")
    p.add_argument("--naas-steps", type=int, default=30)
    p.add_argument("--pdns-steps", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", bk.errors.UnreliableEstimateWarning)
    ala = AlanineDipeptide("vacuum")
    ref = load_alanine_reference()["meta"]["delta_f_kT"]
    ais = {"method": "ais", "n_steps": args.levels}
    naas = {"method": "naas", "n_time_steps": 256, "relaxation": 0.3, "batch_size": 64, "lr": 3e-4}
    options = {"smc": {**ais, "resample_ess": 0.5, "n_islands": 16}, "ais": ais,
               "naas0": {**naas, "n_steps": 0}, "naas": {**naas, "n_steps": args.naas_steps},
               "pdns": {"method": "pdns", "n_steps": args.pdns_steps, "batch_size": 256}}
    out_dir = os.path.join(HERE, "results")
    path = os.path.join(out_dir, "alanine_basins.json")
    rows = {}
    for variant in args.variants.split(","):
        log_z, row = {}, {"variant": variant, "options": options[variant], "basins": {}}
        for basin in ALANINE_BASINS:
            target = ala.basin(basin)
            ala.n_evaluations = 0
            t0 = time.time()
            res = bk.sample(target, n_samples=args.n_samples, seed=args.seed, progress=False,
                            **options[variant])
            log_z[basin] = target.log_z_inside(res)
            row["basins"][basin] = {"log_z": log_z[basin][0], "log_z_stderr": log_z[basin][1],
                                    "log_z_with_wall": res.log_z, "ess": res.ess,
                                    "inside_fraction": float(target.inside(res.samples).double().mean()),
                                    "wall_time_s": time.time() - t0,
                                    "n_energy_evaluations": ala.n_evaluations,
                                    "resample_events": res.diagnostics.get("resample_events")}
            print(f"{variant:>5} {basin:>7}: log Z {log_z[basin][0]:.3f} +- {log_z[basin][1]:.3f} "
                  f"ESS {res.ess:.0f}/{args.n_samples}  {time.time() - t0:.0f} s, "
                  f"{ala.n_evaluations / 1e6:.2f}M evaluations", flush=True)
        z0, s0 = log_z["C7eq"]
        row["delta_f_kT"] = {b: [-(log_z[b][0] - z0), math.hypot(log_z[b][1], s0)]
                             for b in ALANINE_BASINS if b != "C7eq"}
        row["z_vs_reference"] = {b: (v[0] - ref[b][0]) / math.hypot(v[1], ref[b][1])
                                 for b, v in row["delta_f_kT"].items()}
        rows[variant] = row
        print(f"{variant:>5}: " + "  ".join(f"dF({b}) {v[0]:.2f} +- {v[1]:.2f} (ref {ref[b][0]:.2f} +- "
                                             f"{ref[b][1]:.2f})" for b, v in row["delta_f_kT"].items()),
              flush=True)
    if os.path.exists(path):  # keep the rows of variants not run now (read at the end: the
        with open(path) as fh:  # variants may run in parallel processes)
            rows = {**{r["variant"]: r for r in json.load(fh)["results"]}, **rows}
    rows = list(rows.values())

    os.makedirs(out_dir, exist_ok=True)
    summary = {"target": ala.to_config(), "args": vars(args), "reference_delta_f_kT": ref,
               "results": rows, "versions": {"torch": torch.__version__}}
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(summary, fh, indent=1, default=float)
    os.replace(tmp, path)

    from boltzkit.plot import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    basins = [b for b in ALANINE_BASINS if b != "C7eq"]
    width = 0.8 / (len(rows) + 1)
    for j, (label, vals) in enumerate([("reference (metadynamics)", ref)]
                                      + [(r["variant"], r["delta_f_kT"]) for r in rows]):
        xs = [i + (j - len(rows) / 2) * width for i in range(len(basins))]
        ax.errorbar(xs, [vals[b][0] for b in basins], yerr=[vals[b][1] for b in basins], fmt="o",
                    capsize=3, label=label)
    ax.set_xticks(range(len(basins)), [f"{b} - C7eq" for b in basins])
    ax.set_ylabel("free energy difference (kT)")
    ax.set_title("alanine dipeptide, basins sampled separately")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "alanine_basins.png"), dpi=110)
    print(f"wrote {out_dir}/alanine_basins.json and .png")


if __name__ == "__main__":
    main()
