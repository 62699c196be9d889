"""Cross-check of the shipped alanine-dipeptide reference by replica-exchange MD (parallel tempering).

The shipped reference (``benchmarks/alanine_reference.py``, ``boltzkit/data/alanine_dipeptide_reference.npz``)
comes from one well-tempered metadynamics bias and frozen-bias reweighting. This benchmark
estimates the same basin free energies with an independent method at the same force field:

* System: ``alanine_dipeptide_system("vacuum")`` -- the System of
  ``bk.energies.AlanineDipeptide("vacuum")`` (AMBER ff96, NoCutoff, no constraints), 300 K.
* Sampler: hand-rolled parallel tempering (Sugita & Okamoto 1999; Swendsen & Wang 1986).
  ``n_replicas`` OpenMM contexts (Reference platform), each with a LangevinMiddle integrator
  (1 fs, friction 1/ps, the reference's integrator and step, no constraints, so both target
  exactly the same configurational density up to the integrator's shared O(dt^2) bias), at
  geometrically spaced temperatures ``T_min .. T_max``. Every ``exchange_ps`` neighbouring
  temperatures (even and odd pairs alternately) swap with probability
  ``min(1, exp[(beta_i - beta_j)(U_i - U_j)])``; a swap exchanges the two integrators'
  temperatures and rescales the velocities by ``sqrt(T_new / T_old)``.
* Estimators (basin labels: :func:`boltzkit.analysis.alanine_basin`, the reference's boxes):

  1. ``mbar``: MBAR (pymbar) over all temperatures, ``u_k(x) = U(x) / kT_k``, reweighted to
     300 K; error from a delete-one-block jackknife over ``n_blocks`` contiguous time blocks
     (all temperatures' frames of a block removed together, MBAR re-solved for each).
  2. ``t300``: the 300 K ensemble alone (frames of whichever replica sits at 300 K),
     :func:`boltzkit.analysis.basin_free_energies` with its block jackknife, plus the
     statistical inefficiency of each basin indicator (``pymbar.timeseries``).

Failure modes: too few round trips (the 300 K C7ax population then comes from a handful of
visits; ``round_trips`` and ``n_c7ax_entries_300K`` in the JSON say how many), too wide a
temperature spacing (``acceptance`` per pair), too short blocks (compare the jackknife with
the statistical-inefficiency error).

Measured (2026-12-07, six independent runs x 7 replicas, 2 x 2 ns (seeds 7, 8) + 4 x 3 ns (seeds
9-12), 16 ns per replica, 8330 s wall in all on the shared 2-core machine; swap acceptance
0.53, 2019 round trips, 110 entries into C7ax at 300 K; 32 jackknife blocks, none straddling two
runs): dF(alpha_R - C7eq) = 4.22 +- 0.03 kT (metadynamics 4.22 +- 0.05: agrees, z = -0.01);
dF(C7ax - C7eq) = 4.41 +- 0.19 kT (metadynamics 4.74 +- 0.08: z = -1.6; -1.4 with each error
widened to its run-to-run / half-run spread). The six runs' C7ax values (4.44, 3.68, 5.27,
4.62, 4.29, 4.43 for seeds 7-12) scatter with a standard error of the mean of 0.21, close to
the pooled jackknife 0.19: C7ax is entered only 10-20 times per run at 300 K, so single runs
differ by up to 1.6 kT. The earlier two-run check (4.00 +- 0.28, 2.5 sigma from the
metadynamics value) was a low draw with an optimistic error bar; with 16 ns per replica the
two methods agree within 2 sigma, and the shipped (metadynamics) reference stands. Not the
basin boxes (alpha_L carries < 0.1% of C7ax in both) nor the MBAR temperature range.

Output: ``benchmarks/results/alanine_remd.json``, ``.png`` and ``.npz`` (the frames, for ``--from-npz``), and a ``cross_check`` field in
``benchmarks/results/alanine_reference.json`` (its existing values are kept).

Defaults: 7 replicas at 300-800 K (ratio 1.18 between neighbours: swap acceptance about 0.5 in
a 6-replica 300-600 K pilot at ratio 1.15, so 800 K is within reach and crosses to C7ax far
more often than 600 K), exchanges every 0.5 ps, 50 ps equilibration, 2 ns production per
replica, 20 jackknife blocks.

Usage: ``nice -n 5 python benchmarks/alanine_remd.py [--ns 2.0 --replicas 7]`` (one thread);
``--seed 8 --out X`` for an independent run, then ``--from-npz A.npz B.npz`` pools the runs
(MBAR and jackknife over the pooled frames; per-run values kept for the run-to-run spread).
The shipped result pools six runs: ``--from-npz alanine_remd.npz alanine_remd.seed{8..12}.npz
--n-blocks 32`` (seeds 7 and 8 at 2 ns, 9-12 at ``--ns 3``).
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

from boltzkit.analysis import (
    ALANINE_BASINS,
    alanine_basin,
    basin_free_energies,
    plot_ramachandran,
)
from boltzkit.energies.molecular import AlanineDipeptide, alanine_dipeptide_system

KB = 8.314462618e-3  # kJ/mol/K


def dihedrals(x: np.ndarray, atoms) -> np.ndarray:
    """Dihedral angle (radians) of the four atoms ``atoms`` in each frame of ``x`` (B, N, 3)."""
    b0 = x[:, atoms[0]] - x[:, atoms[1]]
    b1 = x[:, atoms[2]] - x[:, atoms[1]]
    b2 = x[:, atoms[3]] - x[:, atoms[2]]
    b1n = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - (b0 * b1n).sum(-1, keepdims=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdims=True) * b1n
    return np.arctan2((np.cross(b1n, v) * w).sum(-1), (v * w).sum(-1))


def run_remd(args) -> dict:
    import openmm as mm
    import openmm.unit as u

    system, _, pos = alanine_dipeptide_system("vacuum")
    if system.getNumConstraints() != 0:
        raise RuntimeError("expected the unconstrained ff96 System of AlanineDipeptide('vacuum')")
    temps = np.geomspace(args.t_min, args.t_max, args.replicas)
    beta = 1.0 / (KB * temps)
    platform = mm.Platform.getPlatformByName("Reference")
    ctxs, integs = [], []
    for i, t in enumerate(temps):
        integ = mm.LangevinMiddleIntegrator(t * u.kelvin, args.friction / u.picosecond,
                                           args.dt_ps * u.picosecond)
        integ.setRandomNumberSeed(args.seed + i)
        ctx = mm.Context(system, integ, platform)
        ctx.setPositions(pos)
        ctx.setVelocitiesToTemperature(t * u.kelvin, args.seed + i)
        ctxs.append(ctx)
        integs.append(integ)
    rng = np.random.default_rng(args.seed)
    state_of = np.arange(args.replicas)  # state_of[r]: temperature index of replica (context) r
    steps = round(args.exchange_ps / args.dt_ps)
    n_equil = round(args.equil_ps / args.exchange_ps)
    n_iter = n_equil + round(args.ns * 1000 / args.exchange_ps)
    K = args.replicas
    phi = np.empty((n_iter, K))
    psi = np.empty((n_iter, K))
    ene = np.empty((n_iter, K))  # kJ/mol, indexed by temperature state
    rep_at = np.empty((n_iter, K), dtype=np.int16)  # replica sitting at each state
    n_try, n_acc = np.zeros(K - 1), np.zeros(K - 1)
    atoms = np.array([AlanineDipeptide.PHI_ATOMS, AlanineDipeptide.PSI_ATOMS])
    t0 = time.time()
    for it in range(n_iter):
        for integ in integs:
            integ.step(steps)
        st = [c.getState(getPositions=True, getEnergy=True) for c in ctxs]
        U = np.array([s.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) for s in st])
        X = np.stack([s.getPositions(asNumpy=True).value_in_unit(u.nanometer) for s in st])
        ang = np.stack([dihedrals(X, a) for a in atoms], -1)  # (K replicas, 2)
        # record by temperature state, before the exchange (the frame is an equilibrium sample)
        rep = np.argsort(state_of)
        rep_at[it] = rep
        ene[it], phi[it], psi[it] = U[rep], ang[rep, 0], ang[rep, 1]
        # neighbour swaps, even pairs on even iterations, odd pairs on odd ones
        for k in range(it % 2, K - 1, 2):
            ri, rj = rep[k], rep[k + 1]
            n_try[k] += 1
            log_acc = (beta[k] - beta[k + 1]) * (U[ri] - U[rj])
            if log_acc >= 0 or rng.random() < math.exp(log_acc):
                n_acc[k] += 1
                state_of[ri], state_of[rj] = k + 1, k
                rep[k], rep[k + 1] = rj, ri
        for r in range(K):  # apply the new temperatures, rescale velocities of swapped replicas
            t_new = temps[state_of[r]]
            t_old = integs[r].getTemperature().value_in_unit(u.kelvin)
            if t_new != t_old:
                integs[r].setTemperature(t_new * u.kelvin)
                v = ctxs[r].getState(getVelocities=True).getVelocities(asNumpy=True)
                ctxs[r].setVelocities(v * math.sqrt(t_new / t_old))
        if args.progress and (it + 1) % max(1, n_iter // 10) == 0:
            print(f"  {it + 1}/{n_iter} exchanges, {time.time() - t0:.0f} s", flush=True)
    wall = time.time() - t0
    sl = slice(n_equil, None)
    return {"temps": temps, "phi": phi[sl], "psi": psi[sl], "energy": ene[sl], "rep_at": rep_at[sl],
            "acceptance": (n_acc / np.maximum(n_try, 1)).tolist(), "wall_s": wall,
            "md_steps": int(n_iter * steps * K)}


def round_trips(rep_at: np.ndarray) -> int:
    """Number of completed lowest -> highest -> lowest temperature round trips over all replicas."""
    K = rep_at.shape[1]
    trips = 0
    for r in range(K):
        s = np.argmax(rep_at == r, axis=1)  # state of replica r over time
        last, went_up = None, False
        for v in s:
            if v == 0:
                if went_up:
                    trips += 1
                went_up, last = False, 0
            elif v == K - 1 and last == 0:
                went_up, last = True, K - 1
    return trips


def mbar_log_weights(u_kn: np.ndarray, n_k: np.ndarray, f_init=None):
    """Log-weights of every pooled frame for state 0 (MBAR), and the f_k."""
    from pymbar import MBAR
    from scipy.special import logsumexp

    mbar = MBAR(u_kn, n_k, initial_f_k=f_init, verbose=False)
    f = mbar.f_k
    log_den = logsumexp(np.log(n_k)[:, None] + f[:, None] - u_kn, axis=0)
    return -u_kn[0] - log_den, f


def delta_f_from(lab: np.ndarray, lw: np.ndarray, r: int = 0) -> np.ndarray:
    w = np.exp(lw - lw.max())
    p = np.bincount(lab, weights=w, minlength=len(ALANINE_BASINS))
    with np.errstate(divide="ignore"):
        return -np.log(p / p[r])


def analyse(res: dict, args) -> dict:
    from pymbar import timeseries

    temps, phi, psi, ene = res["temps"], res["phi"], res["psi"], res["energy"]
    T, K = phi.shape
    beta = 1.0 / (KB * temps)
    # pooled frames ordered by (time, state) so that contiguous blocks are time blocks
    U = ene.reshape(-1)
    lab = alanine_basin(phi.reshape(-1), psi.reshape(-1))
    u_kn = beta[:, None] * U[None, :]
    n_k = np.full(K, T, dtype=float)
    lw, f_k = mbar_log_weights(u_kn, n_k)
    full = delta_f_from(lab, lw)
    blocks = np.array_split(np.arange(T), args.n_blocks)
    loo = []
    for b in blocks:
        keep = np.ones(T, bool)
        keep[b] = False
        keep_n = np.repeat(keep, K)
        lw_b, _ = mbar_log_weights(u_kn[:, keep_n], np.full(K, keep.sum(), float), f_k)
        loo.append(delta_f_from(lab[keep_n], lw_b))
    loo = np.array(loo)
    nb = args.n_blocks
    with np.errstate(invalid="ignore"):  # a block without a basin: infinite error bar
        se = np.sqrt((nb - 1) / nb * ((loo - loo.mean(0)) ** 2).sum(0))
    se = np.where(np.isfinite(loo).all(0), se, np.inf)
    se[0] = 0.0
    mbar_df = {b: [float(full[i]), float(se[i])] for i, b in enumerate(ALANINE_BASINS)}
    w300 = np.exp(lw - lw.max())
    kish = float(w300.sum() ** 2 / (w300 ** 2).sum())
    # the 300 K ensemble alone
    t300 = basin_free_energies(phi[:, 0], psi[:, 0], n_blocks=nb)
    lab0 = alanine_basin(phi[:, 0], psi[:, 0])
    g = {}
    for i, b in enumerate(ALANINE_BASINS):
        ind = (lab0 == i).astype(float)
        g[b] = float(timeseries.statistical_inefficiency(ind)) if 0 < ind.sum() < ind.size else None
    # delta method: ln(P_A / P_C7eq) is linearized by the series y_t = 1[A]/P_A - 1[C7eq]/P_C7eq,
    # whose variance of the mean is g_y var(y) / T (g_y: its statistical inefficiency)
    se_g = {}
    p0 = (lab0 == 0).mean()
    for i, b in enumerate(ALANINE_BASINS[1:], 1):
        pa = (lab0 == i).mean()
        if 0 < pa < 1:
            y = (lab0 == i) / pa - (lab0 == 0) / p0
            g_y = float(timeseries.statistical_inefficiency(y))
            se_g[b] = [float(math.sqrt(g_y * y.var() / T)), g_y]
    entries = int(((lab0[1:] == 2) & (lab0[:-1] != 2)).sum())
    return {
        "mbar": mbar_df, "mbar_f_k": f_k.tolist(), "mbar_kish_ess_300K": kish,
        "t300": {b: list(v) for b, v in t300.items()},
        "t300_stat_inefficiency": g, "t300_stderr_from_g": se_g,
        "n_c7ax_entries_300K": entries,
        "populations_300K_replica": {b: float((lab0 == i).mean()) for i, b in enumerate(ALANINE_BASINS)},
        "round_trips": round_trips(res["rep_at"]), "frames_per_state": int(T),
        "lw": lw,
    }


def metad_quarters() -> dict:
    """The shipped metadynamics frames split into the two halves of each of its runs: the spread
    of these four estimates checks the reference's own jackknife error bar."""
    from boltzkit.analysis import load_alanine_reference

    r = load_alanine_reference()
    out = []
    for k in np.unique(r["run"]):
        m = np.flatnonzero(r["run"] == k)
        for h in np.array_split(m, 2):
            d = basin_free_energies(r["phi"][h], r["psi"][h], r["log_weight"][h], n_blocks=5)
            out.append({b: d[b][0] for b in ("alpha_R", "C7ax")})
    sd = {b: float(np.std([q[b] for q in out], ddof=1)) for b in ("alpha_R", "C7ax")}
    return {"quarters": out, "std": sd,
            "stderr_of_mean": {b: v / math.sqrt(len(out)) for b, v in sd.items()}}


def plot(res, ana, ref, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.9))
    K = res["phi"].shape[1]
    plot_ramachandran(res["phi"].reshape(-1), res["psi"].reshape(-1), ana["lw"], ax=axes[0],
                      title="REMD, MBAR to 300 K")
    plot_ramachandran(res["phi"][:, 0], res["psi"][:, 0], ax=axes[1], title="REMD, 300 K replica")
    ax = axes[2]
    rows = [("metaD (shipped)", ref["delta_f_kT"], "k"), ("REMD MBAR", ana["mbar"], "C0"),
            ("REMD 300 K", ana["t300"], "C1")]
    for j, (name, d, c) in enumerate(rows):
        xs = np.arange(2) + (j - 1) * 0.22
        ys = [d[b][0] for b in ("alpha_R", "C7ax")]
        es = [d[b][1] for b in ("alpha_R", "C7ax")]
        ax.errorbar(xs, ys, yerr=es, fmt="o", color=c, capsize=4, label=name)
    ax.set_xticks([0, 1], ["alpha_R - C7eq", "C7ax - C7eq"])
    ax.set_ylabel("dF (kT, 300 K)")
    ax.set_title(f"basin free energies ({K} replicas)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_cross_check(check: dict) -> None:
    """Record the cross-check in the shipped data file's metadata (``meta["cross_check"]`` of
    :func:`boltzkit.energies.alanine.load_alanine_reference`), arrays untouched; written to a
    temporary file and renamed, so a failed write leaves the old file whole."""
    from boltzkit.energies.alanine import ALANINE_REFERENCE_FILE

    path = os.path.join(os.path.dirname(HERE), "boltzkit", "data", ALANINE_REFERENCE_FILE)
    with np.load(path, allow_pickle=False) as d:
        arrays = {k: d[k] for k in d.files}
    meta = json.loads(str(arrays.pop("meta_json")))
    keep = ("method", "delta_f_kT", "delta_f_kJ_mol", "delta_f_kT_per_run", "n_runs", "ns_per_run",
            "stderr_run_to_run_kT", "z_vs_metadynamics", "agree_within_2_sigma", "results_file")
    meta["cross_check"] = {k: check[k] for k in keep}
    meta["cross_check"]["settings"] = {k: check["settings"][k] for k in
                                       ("replicas", "t_min", "t_max", "temperatures_K", "dt_ps",
                                        "friction", "exchange_ps", "platform")}
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays, meta_json=np.array(json.dumps(meta)))
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--replicas", type=int, default=7)
    p.add_argument("--t-min", type=float, default=300.0)
    p.add_argument("--t-max", type=float, default=800.0)
    p.add_argument("--ns", type=float, default=2.0, help="production length per replica (ns)")
    p.add_argument("--equil-ps", type=float, default=50.0)
    p.add_argument("--exchange-ps", type=float, default=0.5)
    p.add_argument("--dt-ps", type=float, default=0.001)
    p.add_argument("--friction", type=float, default=1.0)
    p.add_argument("--n-blocks", type=int, default=20)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results", "alanine_remd"))
    p.add_argument("--no-update-reference", action="store_true")
    p.add_argument("--from-npz", nargs="+", default=None,
                   help="re-analyse the frames saved by earlier runs (several: pooled)")
    args = p.parse_args(argv)

    if args.from_npz:  # re-analyse saved runs (several: independent runs pooled along time)
        runs = []
        for f in args.from_npz:
            with np.load(f) as d:
                runs.append({k: d[k] for k in d.files})
        if any(not np.allclose(r["temps"], runs[0]["temps"]) for r in runs):
            raise SystemExit("the runs in --from-npz use different temperature ladders; pool only equal ones")
    else:
        res = run_remd(args)
        np.savez_compressed(args.out + ".npz", temps=res["temps"], phi=res["phi"].astype(np.float32),
                            psi=res["psi"].astype(np.float32), energy=res["energy"],
                            rep_at=res["rep_at"], acceptance=np.array(res["acceptance"]),
                            wall_s=res["wall_s"], md_steps=res["md_steps"])
        runs = [res]
    per_run = [analyse(r, args) for r in runs] if len(runs) > 1 else []
    res = {"temps": runs[0]["temps"],
           **{k: np.concatenate([r[k] for r in runs]) for k in ("phi", "psi", "energy")},
           "rep_at": np.concatenate([r["rep_at"] for r in runs]),
           "acceptance": np.mean([np.asarray(r["acceptance"]) for r in runs], 0).tolist(),
           "wall_s": float(sum(float(r["wall_s"]) for r in runs)),
           "md_steps": int(sum(int(r["md_steps"]) for r in runs))}
    ana = analyse(res, args)
    if per_run:  # blocks never straddle two runs when n_blocks is a multiple of the number of runs
        ana["round_trips"] = sum(a["round_trips"] for a in per_run)
    ref_path = os.path.join(HERE, "results", "alanine_reference.json")
    with open(ref_path) as fh:
        ref = json.load(fh)
    z = {}
    for b in ("alpha_R", "C7ax"):
        (a, ea), (m, em) = ref["delta_f_kT"][b], ana["mbar"][b]
        z[b] = (m - a) / math.hypot(ea, em)
    # a second, more conservative comparison: REMD error = max(jackknife, run-to-run standard
    # error of the mean), metadynamics error = max(jackknife, spread of its four half-runs / 2)
    quarters = metad_quarters()
    z_cons, se_runs = {}, {}
    for b in ("alpha_R", "C7ax"):
        vals = [a["mbar"][b][0] for a in per_run]
        se_runs[b] = float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else None
        e_remd = max(ana["mbar"][b][1], se_runs[b] or 0.0)
        e_meta = max(ref["delta_f_kT"][b][1], quarters["stderr_of_mean"][b])
        z_cons[b] = (ana["mbar"][b][0] - ref["delta_f_kT"][b][0]) / math.hypot(e_remd, e_meta)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "progress", "no_update_reference")}
    out = {
        "system": "alanine dipeptide, AMBER ff96 (alanine_dipeptide_system('vacuum'), the System of "
                  "AlanineDipeptide('vacuum')), vacuum, NoCutoff, no constraints",
        "method": "parallel tempering: OpenMM Reference LangevinMiddle replicas at geometric "
                  "temperatures, neighbour swaps (alternating even/odd pairs), velocities rescaled",
        "settings": settings, "temperatures_K": res["temps"].tolist(),
        "acceptance_per_pair": res["acceptance"], "round_trips": ana["round_trips"],
        "frames_per_state": ana["frames_per_state"], "md_steps_total": res["md_steps"],
        "wall_s": res["wall_s"],
        "delta_f_kT_mbar": ana["mbar"], "mbar_f_k": ana["mbar_f_k"],
        "mbar_kish_ess_300K": ana["mbar_kish_ess_300K"],
        "delta_f_kT_300K_replica": ana["t300"],
        "stat_inefficiency_300K_indicators": ana["t300_stat_inefficiency"],
        "stderr_300K_delta_method_[se,g]": ana["t300_stderr_from_g"],
        "populations_300K_replica": ana["populations_300K_replica"],
        "n_c7ax_entries_300K": ana["n_c7ax_entries_300K"],
        "n_runs": len(runs),
        "delta_f_kT_mbar_per_run": [a["mbar"] for a in per_run],
        "metadynamics_reference_kT": ref["delta_f_kT"],
        "metadynamics_quarter_runs_kT": quarters,
        "stderr_run_to_run_kT": se_runs, "z_conservative": z_cons,
        "z_mbar_vs_metadynamics": z,
        "note": "wall time measured on a shared 2-core machine under contention (one thread)",
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(out, fh, indent=1)
    plot(res, ana, ref, args.out + ".png")
    if not args.no_update_reference:
        ref["cross_check"] = {
            "method": "replica-exchange MD (parallel tempering), benchmarks/alanine_remd.py; "
                      "MBAR over all temperatures to 300 K, delete-one-block jackknife "
                      f"({args.n_blocks} time blocks, MBAR re-solved per block)",
            "settings": {**settings, "temperatures_K": [round(t, 2) for t in res["temps"]],
                         "constraints": None, "platform": "Reference"},
            "delta_f_kT": ana["mbar"],
            "delta_f_kJ_mol": {b: [v[0] * ref["kT_kJ_mol"], v[1] * ref["kT_kJ_mol"]]
                               for b, v in ana["mbar"].items()},
            "delta_f_kT_300K_replica_only": ana["t300"],
            "acceptance_per_pair": res["acceptance"], "round_trips": ana["round_trips"],
            "delta_f_kT_per_run": [a["mbar"] for a in per_run],
            "n_runs": len(runs),
            "ns_per_run": [len(r["phi"]) * args.exchange_ps / 1000.0 for r in runs],
            "z_vs_metadynamics": z,
            "agree_within_2_sigma": bool(all(abs(v) < 2 for v in z.values())),
            "stderr_run_to_run_kT": se_runs,
            "z_conservative": z_cons,
            "z_conservative_note": "REMD error max(jackknife, run-to-run); metadynamics error "
                                   "max(jackknife, std of its four half-runs / 2)",
            "results_file": "benchmarks/results/alanine_remd.json",
        }
        with open(ref_path, "w") as fh:
            json.dump(ref, fh)
        write_cross_check(ref["cross_check"])
    print(json.dumps({k: out[k] for k in ("acceptance_per_pair", "round_trips", "delta_f_kT_mbar",
                                          "delta_f_kT_300K_replica", "stderr_300K_delta_method_[se,g]",
                                          "n_c7ax_entries_300K", "z_mbar_vs_metadynamics", "z_conservative",
                                          "stderr_run_to_run_kT", "wall_s")},
                     indent=1))


if __name__ == "__main__":
    main()
