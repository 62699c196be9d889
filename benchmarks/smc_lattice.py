"""SMC over beta vs plain AIS (vs MDNS's stored numbers) for log Z of Ising and Potts lattices.

Targets: the 16 x 16 Ising model at beta_c (Kaufman's exact log Z) and the 6 x 6 three-state
Potts model at beta_c (transfer matrix), the lattices of ``benchmarks/mdns_lattice.py``.
Methods:

* ``smc_heat_bath``: ``bk.sample(target, method="smc")`` with its defaults (adaptive ladder,
  32 islands, checkerboard heat bath; for 16 x 16 this is what ``bk.sample(target)`` runs);
* ``smc_swendsen_wang``: the same with Swendsen-Wang moves (``n_sweeps`` halved: a cluster
  sweep costs about 3 heat-bath sweeps), to see which move is cheaper per accuracy;
* ``ais``: plain AIS with heat-bath sweeps (no resampling, linear ladder) at about the same
  number of particle-sweeps as ``smc_heat_bath``;
* ``mdns``: the stored results of ``benchmarks/mdns_lattice.py`` (not rerun: hours on a CPU).

For each: log Z, its standard error, the error against the exact value in standard errors,
wall and CPU time (the machine is shared: CPU time of the process is the fairer cost),
energy evaluations and particle-sweeps. ``--calibration`` adds the
calibration run: SMC with defaults on the 6 x 6 Ising lattice over ``--seeds`` seeds, the
fraction with |error| <= 3 stderr and whether every seed outside is flagged unreliable.

Writes ``benchmarks/results/smc_lattice.json`` and ``.png``.

    python benchmarks/smc_lattice.py                 # ~20 min on a loaded 2-core CPU
    python benchmarks/smc_lattice.py --calibration --only-calibration --seeds 40
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import boltzkit as bk
from boltzkit._utils import versions
from boltzkit.energies import BETA_C_ISING, Ising, Potts
from boltzkit.errors import UnreliableEstimateWarning

RESULTS = Path(__file__).resolve().parent / "results"
MDNS_STORED = {"ising16": ("mdns_lattice_cpu_L16_steps300.json", "ising_c"),
               "potts6": ("mdns_lattice_cpu_L8_steps500.json", "potts_c")}


def targets(quick: bool) -> dict:
    return {"ising16": Ising(8 if quick else 16, BETA_C_ISING), "potts6": Potts(6, 3)}


def run(target, method, seed, **kw) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableEstimateWarning)
        res = bk.sample(target, method=method, seed=seed, device="cpu", **kw)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    exact = target.exact_log_z()
    d = res.diagnostics
    levels = d.get("n_levels")
    sweeps = d.get("sweeps_total") or res.n_samples * levels * d.get("n_mcmc", 1)
    evals = d.get("energy_evaluations") or res.n_samples * levels
    return {"log_z": res.log_z, "log_z_stderr": res.log_z_stderr, "exact_log_z": exact,
            "error": res.log_z - exact, "error_in_stderr": (res.log_z - exact) / res.log_z_stderr,
            "reliable": res.reliable, "wall_s": wall, "cpu_s": cpu, "n_samples": res.n_samples,
            "n_levels": levels, "particle_sweeps": int(sweeps), "energy_evaluations": int(evals),
            "ess_frac": d.get("ess_frac"), "kernel": d.get("kernel"),
            "island_log_z_std": d.get("island_log_z_std")}


def stored_mdns(key: str) -> "dict | None":
    name, entry = MDNS_STORED[key]
    path = RESULTS / name
    if not path.exists():
        return None
    r = json.loads(path.read_text())["results"][entry]
    return {"log_z": r["log_z"], "log_z_stderr": r["log_z_stderr"], "exact_log_z": r["exact_log_z"],
            "error": r["log_z_err"], "error_in_stderr": r["log_z_err"] / r["log_z_stderr"],
            "wall_s": r["train_wall_s"] + r["sample_wall_s"], "ess_frac": r["ess_frac"],
            "training_steps": r["steps"], "target": r["target"]["name"], "stored_from": name}


def calibration(seeds: int, L: int = 6, first_seed: int = 1000) -> dict:
    m = Ising(L, BETA_C_ISING)
    exact = m.exact_log_z()
    rows = []
    for s in range(seeds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnreliableEstimateWarning)
            res = bk.sample(m, method="smc", seed=first_seed + s, device="cpu")
        z = (res.log_z - exact) / res.log_z_stderr
        d = res.diagnostics
        rows.append({"seed": first_seed + s, "log_z": res.log_z, "stderr": res.log_z_stderr, "z": z,
                     "reliable": res.reliable, "island_pareto_k": d.get("island_pareto_k"),
                     "island_log_z_std": d.get("island_log_z_std"),
                     "unreliable_because": d.get("unreliable_because")})
    z = np.array([r["z"] for r in rows])
    inside = np.abs(z) <= 3
    outside_flagged = all(not r["reliable"] for r, ok in zip(rows, inside) if not ok)
    return {"target": m.name, "exact_log_z": exact, "seeds": seeds, "frac_within_3_stderr": float(inside.mean()),
            "flagged_unreliable": int(sum(not r["reliable"] for r in rows)),
            "every_outside_flagged": bool(outside_flagged), "z_rms": float(np.sqrt(np.mean(z ** 2))),
            "mean_stderr": float(np.mean([r["stderr"] for r in rows])), "runs": rows}


def plot(out: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(out["runs"])
    fig, axes = plt.subplots(1, 2 + ("calibration" in out), figsize=(5 * (2 + ("calibration" in out)), 4))
    for ax, what, label in ((axes[0], "error_in_stderr", "log Z error / stderr"),
                            (axes[1], "cpu_s", "CPU time of the process (s, log; MDNS: wall)")):
        for i, key in enumerate(keys):
            methods = list(out["runs"][key])
            vals = [out["runs"][key][m].get(what, out["runs"][key][m]["wall_s"]) for m in methods]
            ax.bar(np.arange(len(methods)) + 0.4 * i, vals, width=0.4, label=key)
            ax.set_xticks(np.arange(len(methods)) + 0.2, methods, rotation=20, fontsize=8)
        ax.set_ylabel(label)
        if what == "cpu_s":
            ax.set_yscale("log")
        else:
            ax.axhline(3, color="k", lw=0.5)
            ax.axhline(-3, color="k", lw=0.5)
        ax.legend(fontsize=8)
    if "calibration" in out:
        z = [r["z"] for r in out["calibration"]["runs"]]
        axes[2].hist(z, bins=15)
        axes[2].set_xlabel(f"z = error / stderr ({out['calibration']['target']}, "
                           f"{out['calibration']['seeds']} seeds)")
    fig.suptitle("SMC over beta vs AIS vs MDNS (CPU, shared machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 x 8 instead of 16 x 16 (smoke run)")
    ap.add_argument("--calibration", action="store_true")
    ap.add_argument("--only-calibration", action="store_true")
    ap.add_argument("--seeds", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--first-seed", type=int, default=1000, help="first calibration seed")
    ap.add_argument("--particles", type=int, default=4096, help="SMC particles (the default's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "smc_lattice.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = {"meta": {"argv": vars(a), "versions": versions(), "torch_threads": a.threads,
                    "note": "timings on a shared 2-core CPU under load; compare within one run"},
           "runs": {}}
    if a.only_calibration and Path(a.out).exists():  # keep the stored comparison runs
        out["runs"] = json.loads(Path(a.out).read_text()).get("runs", {})
    if not a.only_calibration:
        for key, target in targets(a.quick).items():
            rows = {}
            rows["smc_heat_bath"] = run(target, "smc", a.seed, n_samples=a.particles)
            print(key, "smc_heat_bath", rows["smc_heat_bath"], flush=True)
            from boltzkit.samplers.smc import default_n_sweeps
            rows["smc_swendsen_wang"] = run(target, "smc", a.seed, n_samples=a.particles,
                                            kernel="swendsen_wang",
                                            n_sweeps=max(1, default_n_sweeps(target) // 2))
            print(key, "smc_swendsen_wang", rows["smc_swendsen_wang"], flush=True)
            n_ais = 256
            levels = max(10, rows["smc_heat_bath"]["particle_sweeps"] // n_ais)
            rows["ais"] = run(target, "ais", a.seed, n_samples=n_ais, n_steps=int(levels),
                              schedule="linear")
            print(key, "ais", rows["ais"], flush=True)
            mdns = stored_mdns(key)
            if mdns is not None and not a.quick:
                rows["mdns (stored)"] = mdns
            out["runs"][key] = rows
    if a.calibration or a.only_calibration:
        out["calibration"] = calibration(a.seeds, first_seed=a.first_seed)
        c = out["calibration"]
        print("calibration", {k: v for k, v in c.items() if k != "runs"}, flush=True)
    path = Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    if out["runs"] or "calibration" in out:
        plot(out, path.with_suffix(".png"))
    return out


if __name__ == "__main__":
    main()
