"""Generate the shipped alanine-dipeptide reference (ff96, vacuum, 300 K, no constraints).

Method
------
Plain MD at 300 K never crosses to phi > 0 (C7ax) on this machine's time scales, so the
reference comes from enhanced sampling with OpenMM only (offline):

1. Well-tempered metadynamics on (phi, psi) (``openmm.app.metadynamics.Metadynamics``: bias
   factor 6, height 1.2 kJ/mol, width 0.35 rad, one Gaussian per ps, 72 x 72 grid) builds a
   bias ``V(phi, psi)`` that flattens the barriers.
2. The bias is then **frozen** and ``n_runs`` independent Langevin runs (different seeds,
   each continuing from its own metadynamics run) sample the biased ensemble. Frames are
   reweighted by ``exp(+V / kT)``, which is exact importance reweighting for a static bias.
   Each run has its own bias, so its log-weights are normalized to mean weight 1 before the
   runs are pooled (each run then counts in proportion to its number of frames).

Uncertainty: delete-one-block jackknife over contiguous blocks of every run (the blocks are
much longer than the crossing time under the bias), plus the spread between independent
runs, both written to the file. The integrator is LangevinMiddle with a 1 fs step and no
constraints (the sampler target is unconstrained); its O(dt^2) configurational bias is not
corrected.

Output: ``boltzkit/data/alanine_dipeptide_reference.npz`` (phi, psi in radians, unbiasing
log-weights, potential energies in kT, run index, and a JSON ``meta_json`` record) and a
PNG/JSON summary in ``benchmarks/results/``. About 12 min of CPU with the defaults
(measured 740 s on the shared 2-core machine: 165 + 275 s and 116 + 185 s per run).

Usage: ``python benchmarks/alanine_reference.py [--meta-ps 4000 --static-ps 8000 --runs 2]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from boltzkit.analysis import (ALANINE_REFERENCE_FILE, basin_free_energies,  # noqa: E402
                               basin_populations, plot_ramachandran)
from boltzkit.energies.molecular import AlanineDipeptide, alanine_dipeptide_system  # noqa: E402


def one_run(seed: int, args) -> dict:
    import openmm as mm
    import openmm.unit as u
    from openmm.app.metadynamics import BiasVariable, Metadynamics

    system, topology, pos = alanine_dipeptide_system("vacuum")
    kT = (u.MOLAR_GAS_CONSTANT_R * args.temperature * u.kelvin).value_in_unit(u.kilojoule_per_mole)
    cvs = []
    for atoms in (AlanineDipeptide.PHI_ATOMS, AlanineDipeptide.PSI_ATOMS):
        f = mm.CustomTorsionForce("theta")
        f.addTorsion(*atoms, [])
        cvs.append(BiasVariable(f, -math.pi, math.pi, 0.35, periodic=True, gridWidth=72))
    steps_per_ps = int(round(1.0 / args.dt_ps))
    meta = Metadynamics(system, cvs, args.temperature * u.kelvin, args.bias_factor,
                        args.height * u.kilojoule_per_mole, steps_per_ps)
    bias_group = meta._force.getForceGroup()  # the bias lives in its own force group
    other_groups = set(range(32)) - {bias_group}
    integ = mm.LangevinMiddleIntegrator(args.temperature * u.kelvin, args.friction / u.picosecond,
                                       args.dt_ps * u.picosecond)
    integ.setRandomNumberSeed(seed)
    platform = mm.Platform.getPlatformByName("Reference")
    from openmm.app import Simulation

    sim = Simulation(topology, system, integ, platform)
    sim.context.setPositions(pos)
    sim.context.setVelocitiesToTemperature(args.temperature * u.kelvin, seed)
    t0 = time.time()
    meta.step(sim, args.meta_ps * steps_per_ps)  # builds the bias
    t_meta = time.time() - t0
    # frozen bias: plain steps (no deposition), frames every `stride_ps`
    sim.step(args.equil_ps * steps_per_ps)
    n_frames = int(args.static_ps / args.stride_ps)
    stride = int(round(args.stride_ps * steps_per_ps))
    phi, psi, vb, ep = (np.empty(n_frames) for _ in range(4))
    t1 = time.time()
    for i in range(n_frames):
        sim.step(stride)
        phi[i], psi[i] = meta.getCollectiveVariables(sim)
        vb[i] = sim.context.getState(getEnergy=True, groups={bias_group}).getPotentialEnergy()._value
        ep[i] = sim.context.getState(getEnergy=True, groups=other_groups).getPotentialEnergy()._value
    t_static = time.time() - t1
    print(f"run seed={seed}: metaD {args.meta_ps} ps in {t_meta:.0f} s, static {args.static_ps} ps "
          f"in {t_static:.0f} s", flush=True)
    lw = vb / kT
    lw -= lw.max() + math.log(np.mean(np.exp(lw - lw.max())))  # mean weight 1 within a run
    return {"phi": phi, "psi": psi, "log_weight": lw, "energy": ep / kT,
            "time_meta_s": t_meta, "time_static_s": t_static,
            "free_energy_grid_kJ": meta.getFreeEnergy()._value.tolist()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--meta-ps", type=int, default=4000)
    p.add_argument("--equil-ps", type=int, default=20)
    p.add_argument("--static-ps", type=int, default=8000)
    p.add_argument("--stride-ps", type=float, default=1.0)
    p.add_argument("--dt-ps", type=float, default=0.001)
    p.add_argument("--friction", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=300.0)
    p.add_argument("--bias-factor", type=float, default=6.0)
    p.add_argument("--height", type=float, default=1.2)
    p.add_argument("--n-blocks", type=int, default=10)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "boltzkit", "data",
                                                ALANINE_REFERENCE_FILE))
    args = p.parse_args(argv)

    runs = [one_run(args.seed + r, args) for r in range(args.runs)]
    cat = {k: np.concatenate([r[k] for r in runs]) for k in ("phi", "psi", "log_weight", "energy")}
    run_idx = np.concatenate([np.full(r["phi"].size, i, dtype=np.int8) for i, r in enumerate(runs)])
    # jackknife over n_blocks contiguous blocks of every run (blocks never span two runs)
    nb = args.n_blocks * args.runs
    dfs = basin_free_energies(cat["phi"], cat["psi"], cat["log_weight"], n_blocks=nb)
    pops = basin_populations(cat["phi"], cat["psi"], cat["log_weight"], n_blocks=nb)
    per_run = [basin_free_energies(r["phi"], r["psi"], r["log_weight"], n_blocks=args.n_blocks)
               for r in runs]
    kT = 8.314462618e-3 * args.temperature
    lw = cat["log_weight"] - cat["log_weight"].max()
    w = np.exp(lw)
    meta = {
        "system": "alanine dipeptide, AMBER ff96 (openmmtools alanine-dipeptide-gbsa prmtop), "
                  "vacuum, no constraints, NoCutoff",
        "temperature_K": args.temperature, "kT_kJ_mol": kT,
        "method": "well-tempered metadynamics on (phi, psi) to build a bias, then frozen-bias "
                  "Langevin runs reweighted by exp(V/kT)",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "basins_deg": {"C7ax": "0 < phi < 120", "alpha_R": "-120 < phi <= 0 and -120 < psi < 50",
                       "C7eq": "everything else (extended region incl. C5/beta/PII, phi >= 120)"},
        "delta_f_kT": {b: list(v) for b, v in dfs.items()},
        "delta_f_kJ_mol": {b: [v[0] * kT, v[1] * kT] for b, v in dfs.items()},
        "populations": {b: list(v) for b, v in pops.items()},
        "delta_f_kT_per_run": [{b: list(v) for b, v in d.items()} for d in per_run],
        "kish_ess": float(w.sum() ** 2 / (w * w).sum()), "n_frames": int(w.size),
        "cpu_seconds": float(sum(r["time_meta_s"] + r["time_static_s"] for r in runs)),
        "reference_states": "delta_f = -log(P_basin / P_C7eq)",
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    np.savez_compressed(args.out, phi=cat["phi"].astype(np.float32), psi=cat["psi"].astype(np.float32),
                        log_weight=cat["log_weight"].astype(np.float32),
                        energy=cat["energy"].astype(np.float32), run=run_idx,
                        meta_json=np.array(json.dumps(meta)))
    print(json.dumps({k: meta[k] for k in ("delta_f_kT", "delta_f_kJ_mol", "populations",
                                             "delta_f_kT_per_run", "kish_ess", "cpu_seconds")}, indent=1))
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e3:.0f} kB)")

    res_dir = os.path.join(HERE, "results")
    os.makedirs(res_dir, exist_ok=True)
    with open(os.path.join(res_dir, "alanine_reference.json"), "w") as fh:
        json.dump({**meta, "free_energy_grid_kJ_run0": runs[0]["free_energy_grid_kJ"]}, fh)
    from boltzkit.plot import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, args.runs + 1, figsize=(4.4 * (args.runs + 1), 3.8))
    plot_ramachandran(cat["phi"], cat["psi"], cat["log_weight"], ax=axes[0],
                      title="reference (all runs, reweighted)")
    for i, r in enumerate(runs):
        plot_ramachandran(r["phi"], r["psi"], r["log_weight"], ax=axes[i + 1], title=f"run {i}")
    fig.tight_layout()
    fig.savefig(os.path.join(res_dir, "alanine_reference.png"), dpi=110)


if __name__ == "__main__":
    main()
