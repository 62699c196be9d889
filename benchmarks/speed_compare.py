"""Speed of the hot paths of issue 23 -- NAAS on alanine dipeptide in internal coordinates, the
OpenMM bridge, SMC on the 16 x 16 Ising model -- this code against an older revision of
boltzkit, in one process, calls interleaved.

The older revision is extracted with ``git archive <rev> boltzkit`` into a temporary folder and
imported as ``boltzkit_old`` (the package imports itself relatively), so both run on the same
machine at the same moment: under a shared, loaded CPU only such ratios mean anything.

Sections
--------
* ``naas``: the setting ``bk.sample(AlanineDipeptide())`` uses (``AlanineDipeptide().sampling_view()``:
  internal coordinates, full harmonic hint; NAAS with batch 64, lr 3e-4, ``--K`` time steps),
  ``--reps`` training steps of each sampler alternately, then ``sample(--n-sample)`` of each.
  Same seed: the losses, log-weights and samples of old and new are compared (they must agree
  to float rounding).
* ``bridge``: energy+force evaluations per second of a batch of ``--batch`` states near the
  alanine structure: old bridge, new bridge, a bare OpenMM Context loop (``setPositions``,
  ``getState``, public ``getPotentialEnergy``/``getForces(asNumpy=True)``), and the torch force
  field (``backend="torch"``), plus the Hessian-vector product (finite difference on the OpenMM
  bridge, autograd on the torch force field).
* ``smc``: ``bk.sample(Ising(L=16, beta=0.4407), method="smc")`` (heat-bath sweeps) with
  ``--smc-n`` particles, old and new alternately (same seed: the same log Z is required).
* ``nerf``: one Hessian-vector product through the internal-coordinate map alone (the double
  backward that NAAS's adjoint runs), old vs new ``ZMatrix.to_cartesian``.

Writes ``benchmarks/results/speed_compare.json`` and ``.png``. Not run by pytest.

Usage: ``python benchmarks/speed_compare.py --old-rev 331d404 [--K 64 --reps 3]``
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def import_old(rev: str):
    tmp = tempfile.mkdtemp(prefix="bk_old_")
    data = subprocess.run(["git", "-C", ROOT, "archive", rev, "boltzkit"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp, filter="data")
    os.rename(os.path.join(tmp, "boltzkit"), os.path.join(tmp, "boltzkit_old"))
    sys.path.insert(0, tmp)
    return importlib.import_module("boltzkit_old")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def naas_section(pkgs, args):
    out = {}
    views, samplers = {}, {}
    shared = None
    for name, pkg in pkgs.items():
        (view, dt) = timed(lambda: pkg.energies.AlanineDipeptide().sampling_view())
        _, dt_hint = timed(lambda: view.target.prior_hint())
        # the hint's five soft eigenvalues are equal, so eigh's basis of that subspace (and
        # with it the z frame NAAS works in) moves with float rounding: give both the same
        # hint so that the same seed must give the same samples
        if shared is None:
            shared = view.target.prior_hint()
        else:
            view.target._hint = pkg.energies.PriorHint(shared.loc.clone(), shared.scale.clone())
        from importlib import import_module

        NAAS = import_module(pkg.__name__ + ".samplers.naas").NAAS
        s = NAAS(seed=0, device="cpu", n_time_steps=args.K, batch_size=64, lr=3e-4)
        _, dt_fit = timed(lambda: s.fit(view.target, n_steps=0))
        views[name], samplers[name] = view, s
        out[f"setup_s_{name}"] = dt + dt_hint + dt_fit
        print(f"{name}: setup {dt + dt_hint + dt_fit:.1f} s", flush=True)
    # untrained (zero control): the same seed must give bitwise the same samples and weights
    untrained = {}
    for name, pkg in pkgs.items():
        NAAS = importlib.import_module(pkg.__name__ + ".samplers.naas").NAAS
        s0 = NAAS(seed=0, device="cpu", n_time_steps=args.K, batch_size=64).fit(views[name].target, n_steps=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            untrained[name] = s0.sample(64)
    out["untrained_identical"] = bool(torch.equal(untrained["old"].samples, untrained["new"].samples)
                                      and torch.equal(untrained["old"].log_weights,
                                                      untrained["new"].log_weights))
    steps = {n: [] for n in pkgs}
    metrics = {n: [] for n in pkgs}
    for r in range(args.reps):
        for name in (pkgs if r % 2 == 0 else list(pkgs)[::-1]):
            m, dt = timed(samplers[name].train_step)
            samplers[name].step += 1
            steps[name].append(dt)
            metrics[name].append({k: float(m[k]) for k in ("loss", "prior_loss", "log_z", "ess_frac")})
            print(f"rep {r} {name}: train step {dt:.1f} s  loss {m['loss']:.6g}", flush=True)
    samples = {}
    for name in pkgs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res, dt = timed(lambda: samplers[name].sample(args.n_sample))
        samples[name] = res
        out[f"sample_s_{name}"] = dt
        print(f"{name}: sample({args.n_sample}) {dt:.1f} s", flush=True)
    out["train_step_s"] = steps
    out["train_step_ratio_sum"] = sum(steps["old"]) / sum(steps["new"])
    out["train_step_ratio_median"] = float(np.median(np.array(steps["old"]) / np.array(steps["new"])))
    out["sample_ratio"] = out["sample_s_old"] / out["sample_s_new"]
    out["setup_ratio"] = out["setup_s_old"] / out["setup_s_new"]
    out["metrics"] = metrics
    a, b = samples["old"], samples["new"]
    dx = (a.samples.double() - b.samples.double()).abs().max(1).values.numpy()
    dlw = (a.log_weights - b.log_weights).abs().numpy()
    # after training, the networks differ by float rounding (losses agree to ~1e-6); Langevin
    # trajectories through a molecule's energy amplify that for some samples, hence quantiles
    out["abs_diff_samples_q50_q90_max"] = [float(v) for v in np.quantile(dx, [0.5, 0.9, 1.0])]
    out["abs_diff_log_weights_q50_q90_max"] = [float(v) for v in np.quantile(dlw, [0.5, 0.9, 1.0])]
    out["log_z"] = {"old": float(a.log_z), "new": float(b.log_z)}
    out["max_rel_diff_loss"] = max(abs(x["loss"] - y["loss"]) / abs(x["loss"])
                                   for x, y in zip(metrics["old"], metrics["new"]))
    return out


def bridge_section(pkgs, args):
    torch.manual_seed(1)
    out = {}
    tgt = {n: p.energies.AlanineDipeptide(com_restraint=None) for n, p in pkgs.items()}
    tgt["torch"] = pkgs["new"].energies.AlanineDipeptide(com_restraint=None, backend="torch")
    x = tgt["new"].reference_state().double() + 0.003 * torch.randn(args.batch, 66, dtype=torch.float64)
    w = torch.randn_like(x)
    pos = x.numpy().reshape(-1, 22, 3)
    ctx = tgt["new"]._backend_impl.context

    def bare():
        for p in pos:
            ctx.setPositions(p)
            st = ctx.getState(getEnergy=True, getForces=True)
            st.getPotentialEnergy()
            st.getForces(asNumpy=True)

    fns = {"bare_context": bare}
    for n in ("old", "new", "torch"):
        fns[f"eval_{n}"] = (lambda t: lambda: t._evaluate(x, True))(tgt[n])
        fns[f"hvp_{n}"] = (lambda t: lambda: t._hvp(x, w))(tgt[n])
    times = {k: [] for k in fns}
    for _ in range(args.bridge_reps):
        for k, fn in fns.items():
            times[k].append(timed(fn)[1])
    for k, v in times.items():
        out[f"{k}_states_per_s"] = args.batch / float(np.median(v))
    out["eval_ratio_new_vs_old"] = out["eval_new_states_per_s"] / out["eval_old_states_per_s"]
    out["eval_ratio_new_vs_bare"] = out["eval_new_states_per_s"] / out["bare_context_states_per_s"]
    out["eval_ratio_torch_vs_new"] = out["eval_torch_states_per_s"] / out["eval_new_states_per_s"]
    out["hvp_ratio_torch_vs_new"] = out["hvp_torch_states_per_s"] / out["hvp_new_states_per_s"]
    u_old, g_old = tgt["old"]._evaluate(x, True)
    u_new, g_new = tgt["new"]._evaluate(x, True)
    out["bridge_identical"] = bool(torch.equal(u_old, u_new) and torch.equal(g_old, g_new))
    for k, v in out.items():
        print(f"bridge {k}: {v}", flush=True)
    return out


def nerf_section(pkgs, args):
    out = {}
    ics = {n: p.energies.AlanineDipeptide().internal() for n, p in pkgs.items()}
    hint = ics["new"].prior_hint()
    g = torch.Generator().manual_seed(2)
    q = hint.to_x(torch.randn(64, 60, generator=g, dtype=torch.float64))
    a = torch.randn(64, 60, generator=g, dtype=torch.float64)

    def hvp(zm):
        qq = q.clone().requires_grad_(True)
        x = zm.to_cartesian(qq)
        (gq,) = torch.autograd.grad((x.sin() * x).sum(), qq, create_graph=True)
        (h,) = torch.autograd.grad(gq, qq, grad_outputs=a)
        return h

    times = {n: [] for n in pkgs}
    for _ in range(args.bridge_reps):
        for n in pkgs:
            times[n].append(timed(lambda: hvp(ics[n].zmatrix))[1])
    out["nerf_hvp_ms"] = {n: 1e3 * float(np.median(v)) for n, v in times.items()}
    out["nerf_hvp_ratio"] = out["nerf_hvp_ms"]["old"] / out["nerf_hvp_ms"]["new"]
    out["nerf_forward_identical"] = bool(torch.equal(ics["old"].zmatrix.to_cartesian(q),
                                                     ics["new"].zmatrix.to_cartesian(q)))
    out["nerf_hvp_max_rel_diff"] = float((hvp(ics["old"].zmatrix) - hvp(ics["new"].zmatrix)).abs().max()
                                         / hvp(ics["old"].zmatrix).abs().max())
    print(f"nerf: {out}", flush=True)
    return out


def smc_section(pkgs, args):
    """SMC with heat-bath sweeps on the README's first target (16 x 16 Ising at beta_c), a fixed
    number of particles, old and new alternately; same seed, so the same log Z is required."""
    out, times, log_z = {}, {n: [] for n in pkgs}, {}
    for r in range(args.smc_reps):
        for name in (pkgs if r % 2 == 0 else list(pkgs)[::-1]):
            pkg = pkgs[name]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res, dt = timed(lambda: pkg.sample(pkg.energies.Ising(L=16, beta=0.4407), method="smc",
                                                   n_samples=args.smc_n, seed=0, device="cpu",
                                                   progress=False))
            times[name].append(dt)
            log_z[name] = float(res.log_z)
            print(f"smc rep {r} {name}: {dt:.1f} s  log Z {res.log_z:.6f}", flush=True)
    out["smc_s"] = times
    out["smc_ratio_sum"] = sum(times["old"]) / sum(times["new"])
    out["smc_log_z"] = log_z
    out["smc_identical"] = log_z["old"] == log_z["new"]
    return out


def plot(res, out, old_rev):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels, ratios = [], []
        if "naas" in res:  # setup is left out: the old package pays the first imports
            labels += ["NAAS train step", "NAAS sample"]
            ratios += [res["naas"]["train_step_ratio_sum"], res["naas"]["sample_ratio"]]
        if "nerf" in res:
            labels.append("IC-map HVP")
            ratios.append(res["nerf"]["nerf_hvp_ratio"])
        if "smc" in res:
            labels.append("SMC Ising 16x16")
            ratios.append(res["smc"]["smc_ratio_sum"])
        if "bridge" in res:
            labels += ["bridge eval", "bridge vs bare Context", "torch FF vs bridge"]
            ratios += [res["bridge"]["eval_ratio_new_vs_old"], res["bridge"]["eval_ratio_new_vs_bare"],
                       res["bridge"]["eval_ratio_torch_vs_new"]]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.barh(labels, ratios)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xlabel(f"speed-up vs {old_rev} (same process, loaded CPU)")
        fig.tight_layout()
        fig.savefig(out.replace(".json", ".png"), dpi=120)
    except Exception as exc:  # the plot is optional
        print(f"no plot: {exc}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old-rev", default="331d404", help="git revision to compare against")
    ap.add_argument("--K", type=int, default=64, help="NAAS time steps (the view's default is 256)")
    ap.add_argument("--reps", type=int, default=4, help="training steps per sampler")
    ap.add_argument("--n-sample", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256, help="states per bridge call")
    ap.add_argument("--bridge-reps", type=int, default=7)
    ap.add_argument("--smc-n", type=int, default=1024, help="SMC particles")
    ap.add_argument("--smc-reps", type=int, default=2)
    ap.add_argument("--sections", default="bridge,nerf,naas,smc")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "speed_compare.json"))
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON")
    args = ap.parse_args()
    if args.plot_only:
        with open(args.out) as fh:
            plot(json.load(fh), args.out, args.old_rev)
        return
    torch.set_num_threads(1)
    import boltzkit

    pkgs = {"old": import_old(args.old_rev), "new": boltzkit}
    res = {"args": vars(args), "torch": torch.__version__, "threads": 1,
           "load_average_start": os.getloadavg(),
           "note": "CPU shared with other jobs; compare the ratios, not the absolute times"}
    for sec in args.sections.split(","):
        res[sec] = {"bridge": bridge_section, "nerf": nerf_section, "naas": naas_section,
                "smc": smc_section}[sec](pkgs, args)
    res["load_average_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)
    plot(res, args.out, args.old_rev)
    print(json.dumps({k: v for k, v in res.items() if k != "args"}, indent=1, default=str)[:3000])


if __name__ == "__main__":
    main()
