"""Discrete ASBS vs MDNS on Ising and Potts lattices (run on demand, not in CI).

The claim tested is the DASBS paper's (arXiv 2602.08243): comparable sample quality at a lower
training cost. For each target (the same names and metrics as ``benchmarks/mdns_lattice.py``):

1. train MDNS (its defaults, ``--steps`` steps) and record its training wall time T and its
   energy evaluations E (``batch_size`` per EMA rollout);
2. train discrete ASBS variants, each evaluated twice: when its training wall time reaches T
   (equal time) and when its energy-equivalent evaluations reach E (equal evaluations). A DASBS
   refresh costs ``batch_size`` energies plus ``batch_size`` discrete scores; a score is
   ``D (q - 1)`` single-site energy differences, computed from local fields at about the cost
   of one energy, so it is counted as one (the raw counts are stored too);
3. compare log Z with the exact value, the ESS, Pareto k, <|m|> and the two-point
   correlation G(r) against exact enumeration (small lattices) or a long Swendsen-Wang run,
   and, on enumerable lattices, the total-variation distance of the weighted histogram.

On enumerable lattices the script also computes, by Sinkhorn on the full state space, the
ESS *ceiling* of the exact path weights at the exact Schrödinger bridge (and at the
no-corrector fixed point) for the chosen reference schedule: the weights compare the sampler
with the reference bridge pinned at x_1, so even a perfect controller has ESS < 1 when the
reference remembers x_0; and the ESS of the exact optimal controller under tau-leaping with
``n_time_steps`` steps (the discretization ceiling).

The paper's figures (brief ``discrete_samplers.md`` 2.8, [paper-2nd]) are stored beside ours;
its per-cell tables were not available. Writes ``benchmarks/results/discrete_asbs_lattice_<tag>.json``
and ``.png``.

Variants (``--variants``): ``dasbs`` (boltzkit defaults: delta source, ``alpha = 0.5`` and the
closed-form corrector on these shift-invariant targets), ``dasbs_uniform`` (the previous
default: uniform source, ``alpha = 0.05``, no corrector), ``dasbs_alternating`` (uniform source,
corrector TM alternation) and ``dasbs_delta_paper`` (the paper's critical-temperature recipe:
delta source, ``alpha = 0.5``, corrector DM alternation).

Examples::

    # small CPU configuration (~20 min on 2 busy cores)
    python benchmarks/discrete_asbs_lattice.py --L 4 --potts-L 3 --targets ising_c potts_c --steps 600
    # the larger CPU runs (~12 min each, one thread; run the two side by side)
    python benchmarks/discrete_asbs_lattice.py --targets ising_c --L 6 --steps 600 \
        --variants dasbs dasbs_uniform --threads 1 --max-time-factor 2 --tag cpu_ising6
    python benchmarks/discrete_asbs_lattice.py --targets potts_c --L 4 --potts-L 4 --steps 600 \
        --variants dasbs dasbs_uniform --threads 1 --max-time-factor 2 --tag cpu_potts4
    # paper-like sizes (GPU)
    python benchmarks/discrete_asbs_lattice.py --L 16 --steps 20000 --device cuda --time-steps 100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import boltzkit as bk
from boltzkit.energies.exact import enumerate_states, state_to_index
from boltzkit.estimators.importance import log_z_from_log_weights
from boltzkit.nn.cyclic import cyclic_rollout, make_noise, sample_source
from boltzkit.samplers.discrete_asbs import DiscreteASBS, resolve_source
from boltzkit.samplers.mcmc import lattice_model, order_parameter
from boltzkit.samplers.mdns import MDNS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdns_lattice import PAPER as MDNS_PAPER, correlations, make_target, observables  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MAX_ENUM = 2**17  # enumerate (exact observables, TV, ceilings) up to this many states

# [paper-2nd] from the summary cited in the brief (2.8); the paper's tables were not retrievable.
PAPER_DASBS = {
    "claim": "most competitive uniform-reference sampler; Ising 24x24 beta=0.28 trained in ~3.75k "
             "steps / ~0.5 h vs 30k steps / ~8.4 h for LEAPS; MDNS (masked reference) still better "
             "on several error metrics",
    "settings": "Ising 24x24 (beta 0.28 / 0.4407 / 0.6) and Potts q=4 16x16 (beta 0.9 / 1.0986 / 1.3); "
                "metrics: magnetization error, two-point correlation error, energy W2 vs reference "
                "samples; ESS / log Z tables [unverified]",
    # [code] training budgets from the two repositories' configs (brief 1.4 and 2.6)
    "training_steps": {
        "dasbs_ising24_beta_c": "5 stages x (400 controller + 200 corrector) = 3000 steps, batch 64 x 2 GPUs, "
                                "200 tau-leaping steps, lr 5e-4, delta source, corrector DM",
        "dasbs_ising24_beta_0.28": "5 x (400 + 200) = 3000 steps (summary: ~3.75k steps, ~0.5 h)",
        "mdns_ising16": "20k warm-up (beta 0.28) + 50k steps, batch 128, WDCE with 8 replicates",
        "mdns_potts16_q3": "30k warm-up (beta 0.5) + 50k steps, batch 256",
        "leaps_ising24_beta_0.28": "30k steps, ~8.4 h (from the DASBS summary)",
    },
}

VARIANTS = {
    # boltzkit defaults: on Ising (h = 0) and Potts the delta source (uniform over the q constant
    # configurations; the paper's beta_init = inf) with the paper's reference schedule
    # (alpha = 0.5, Gamma = log 3) and the closed-form corrector (exact for these shift-invariant
    # targets), controller only, importance-weighted losses, temperature warm-up
    "dasbs": dict(n_stages=1000, controller_steps=200),
    # the previous default: uniform source, nearly memoryless reference (alpha = 0.05,
    # Gamma = log 21), no corrector
    "dasbs_uniform": dict(source="uniform", noise_alpha=0.05, corrector_loss="none", n_stages=1000,
                          controller_steps=200),
    # the paper's critical / low-temperature recipe: delta source, a reference with memory
    # (alpha = 0.5, Gamma = log 3) and the corrector fitted by denoising matching
    "dasbs_delta_paper": dict(source="delta", noise_alpha=0.5, corrector_loss="dm", n_stages=1000,
                              controller_steps=200, corrector_steps=100),
    # the paper's alternation (controller TM + corrector TM) on the same schedule
    "dasbs_alternating": dict(source="uniform", noise_alpha=0.05, corrector_loss="tm", n_stages=1000,
                              controller_steps=200, corrector_steps=100),
}


# ---------------------------------------------------------------------------- exact references
def _apply_kernel(v: np.ndarray, q: int, d: int, e: float) -> np.ndarray:
    """Apply the reference kernel (total noise -log e) to a function on Z_q^D, site by site."""
    a, b = (1 - e) / q, (1 + (q - 1) * e) / q
    v = v.reshape((q,) * d)
    for ax in range(d):
        v = (b - a) * v + a * v.sum(ax, keepdims=True)
    return v.reshape(-1)


def exact_reference(target, sampler_cfg: dict, n_opt: int, seed: int) -> "dict | None":
    """Exact observables and the ESS ceilings of the exact weights (enumerable lattices only)."""
    dom = target.domain
    if dom.q**dom.n_sites > MAX_ENUM:
        return None
    en = enumerate_states(target)
    pi = en.log_probs.exp().numpy()
    x = dom.decode(en.states)
    model = lattice_model(target)
    w = torch.as_tensor(pi)
    out = {"abs_m": float(w @ order_parameter(model, x)),
           "corr": (w @ correlations(target, x)).tolist(), "log_z": en.log_z}
    out.update(_ceilings(target, en, sampler_cfg, n_opt, seed))
    out["_pmf"], out["_en"] = pi, en
    return out


def _ceilings(target, en, sampler_cfg: dict, n_opt: int, seed: int) -> dict:
    """ESS ceilings of the exact path weights for one reference schedule and source."""
    dom = target.domain
    pi = en.log_probs.exp().numpy()
    q, d = dom.q, dom.n_sites
    noise = make_noise(sampler_cfg["noise"], sampler_cfg["noise_scale"], sampler_cfg["noise_alpha"])
    t0, source = sampler_cfg["t0"], sampler_cfg.get("source", "uniform")
    gamma = float(noise.integral(t0, 1.0))
    e = math.exp(-gamma)
    if source == "uniform":
        mu = np.full_like(pi, 1.0 / pi.size)
    else:  # uniform over the q constant configurations, flat index c (q^D - 1) / (q - 1)
        mu = np.zeros_like(pi)
        mu[np.arange(q) * ((q**d - 1) // (q - 1))] = 1.0 / q
    p1 = _apply_kernel(mu, q, d, e)  # reference terminal law (the kernel is symmetric)
    # Schrödinger bridge between mu and pi: P*(x0, x1) = a(x0) K(x0, x1) b(x1) (a absorbs mu)
    a, b = mu.copy(), np.ones_like(pi)
    for _ in range(500):
        a = mu / _apply_kernel(b, q, d, e)
        b = pi / _apply_kernel(a, q, d, e)
    # w / Z = pi(x1) mu(x0) / (p1(x1) a(x0) b(x1)) under P*: ESS = 1 / E[(w/Z)^2]
    kb = _apply_kernel(b, q, d, e)
    out = {"source": source,
           "ess_ceiling_bridge": float(1.0 / np.dot(pi**2 / (p1**2 * b), _apply_kernel(mu * kb, q, d, e)))}
    h0 = _apply_kernel(pi, q, d, e)  # no corrector: w ~ h_0(x0) / p1(x1), E[w / Z] = 1
    out["ess_ceiling_no_corrector"] = float(1.0 / np.dot(pi / p1**2, _apply_kernel(mu * h0, q, d, e)))
    out["reference_total_noise"] = gamma
    # exact bridge controller log phi_t(x)_{d,n} = log h_t(x^{d<-n}) - log h_t(x), h_t = K_{t,1} b
    times = torch.linspace(t0, 1.0, sampler_cfg["n_time_steps"] + 1, dtype=torch.float64)
    logh = [torch.as_tensor(np.log(_apply_kernel(b, q, d, math.exp(-float(noise.integral(float(t), 1.0))))))
            for t in times[:-1]]
    powers = q ** torch.arange(d - 1, -1, -1, dtype=torch.int64)

    def controller(xi, t):
        k = int(torch.argmin((times[:-1] - float(t[0])).abs()))
        idx = state_to_index(xi, q)
        moves = (torch.arange(q)[None, None, :] - xi[..., None]) * powers[None, :, None]
        shifted = idx[:, None, None] + moves
        return logh[k][shifted] - logh[k][idx][:, None, None]

    gen = torch.Generator().manual_seed(seed)
    x0 = sample_source(source, n_opt, d, q, generator=gen)
    path = cyclic_rollout(controller, x0, times, noise, q, generator=gen, max_jump=sampler_cfg["max_jump"])
    idx1 = state_to_index(path.x1, q)
    lw = en.log_probs[idx1] + en.log_z - torch.as_tensor(np.log(p1))[idx1] + path.log_ratio
    est = log_z_from_log_weights(lw, warn=False)
    out["ess_ceiling_optimal_controller_tau_leaping"] = est.ess_frac
    out["optimal_controller_log_z_err"] = est.log_z - en.log_z
    return out


def weighted_tv(res, target, pmf: np.ndarray) -> float:
    """Total variation between the self-normalized weighted histogram and the exact pmf."""
    idx = state_to_index(target.domain.encode(res.samples), target.domain.q).numpy()
    hist = np.bincount(idx, weights=res.weights(), minlength=pmf.size)
    return float(0.5 * np.abs(hist - pmf).sum())


def summarize(res, target, ref) -> dict:
    obs = observables(target, res)
    out = {"log_z": res.log_z, "log_z_stderr": res.log_z_stderr, "ess_frac": res.ess / res.n_samples,
           "pareto_k": res.diagnostics["pareto_k"], "n_samples": res.n_samples,
           "sample_wall_s": res.diagnostics["sample_wall_time_s"], "obs": obs}
    exact = target.exact_log_z()
    out["log_z_err"] = None if exact is None else res.log_z - exact
    if ref is not None:
        out["mag_err"] = abs(obs["abs_m"] - ref["abs_m"])
        d = np.abs(np.subtract(obs["corr"], ref["corr"]))
        out["corr_err_mean"], out["corr_err_max"] = float(d.mean()), float(d.max())
        if "_pmf" in ref:
            out["tv"] = weighted_tv(res, target, ref["_pmf"])
    return out


def sw_reference(target, args) -> dict:
    sw = bk.sample(target, method="swendsen_wang", n_samples=args.sw_samples, seed=args.seed,
                   device=args.device, n_chains=args.sw_chains)
    obs = observables(target, sw)
    return {"abs_m": obs["abs_m"], "corr": obs["corr"], "source": "swendsen_wang",
            "tau_int_energy": sw.diagnostics.get("tau_int_energy")}


# ---------------------------------------------------------------------------- runs
def run_mdns(target, args, ref) -> dict:
    sampler = MDNS(device=args.device, seed=args.seed, progress=args.progress, batch_size=args.mdns_batch)
    sampler.fit(target, n_steps=args.steps)
    res = sampler.sample(args.samples)
    cfg = sampler.config
    n_rollouts = len(range(0, args.steps, cfg.resample_every)) if cfg.loss == "wdce" else args.steps
    out = summarize(res, target, ref)
    out.update(steps=args.steps, train_wall_s=sampler.train_time, energy_evals=n_rollouts * cfg.batch_size,
               nfe_per_sample=res.diagnostics["nfe_per_sample"],
               history={"ess_frac": list(map(float, sampler.history["ess_frac"]))},
               config={k: v for k, v in sampler.config_dict().items()})
    return out


def run_dasbs(target, variant: str, args, ref, budget_time: float, budget_evals: int) -> dict:
    opts = dict(VARIANTS[variant], n_time_steps=args.time_steps, batch_size=args.batch_size,
                lr=args.lr, hidden=args.hidden)
    sampler = DiscreteASBS(device=args.device, seed=args.seed, progress=args.progress, **opts)
    evals = lambda: sampler.n_energy_evals + sampler.n_score_evals  # noqa: E731
    points, curve = {}, []
    limit_time = args.max_time_factor * budget_time
    while True:
        sampler.fit(target, n_steps=sampler.step + args.chunk)
        curve.append({"step": sampler.step, "train_wall_s": sampler.train_time, "evals": evals(),
                      "ess_frac": float(sampler.history["ess_frac"][-1])})
        for name, reached in (("equal_time", sampler.train_time >= budget_time),
                              ("equal_evals", evals() >= budget_evals)):
            if reached and name not in points:
                res = sampler.sample(args.samples)
                points[name] = summarize(res, target, ref)
                points[name].update(steps=sampler.step, train_wall_s=sampler.train_time, evals=evals(),
                                    energy_evals=sampler.n_energy_evals, score_evals=sampler.n_score_evals,
                                    capped_frac=res.diagnostics["capped_frac"],
                                    nfe_per_sample=res.diagnostics["nfe_per_sample"])
                print(f"   {variant} {name}: step {sampler.step}, log Z err "
                      f"{points[name]['log_z_err']}, ESS {points[name]['ess_frac']:.3f}", flush=True)
        if len(points) == 2 or sampler.train_time >= limit_time:
            break
    out = {"points": points, "curve": curve, "config": sampler.config_dict()}
    if ref is not None and "_en" in ref:  # ESS ceilings for this variant's source and schedule
        cfg = {**dataclasses.asdict(sampler.config), "source": sampler.source,
               "noise_alpha": sampler.noise_alpha}
        out["ceilings"] = _ceilings(target, ref["_en"], cfg, args.opt_samples, args.seed)
    return out


def run_target(name: str, args) -> dict:
    target = make_target(name, args.L, args.potts_L)
    print(f"== {target.name}", flush=True)
    cfg = dataclasses.asdict(DiscreteASBS.make_config(n_time_steps=args.time_steps))
    cfg["source"], cfg["noise_alpha"] = resolve_source(target, cfg["source"], cfg["corrector_loss"],
                                                       cfg["noise_alpha"])
    t0 = time.perf_counter()
    ref = exact_reference(target, cfg, args.opt_samples, args.seed)
    if ref is None and not (getattr(target, "h", 0.0) != 0.0):
        ref = sw_reference(target, args)
    ref_wall = time.perf_counter() - t0
    mdns = run_mdns(target, args, ref)
    print(f"   mdns: {mdns['train_wall_s']:.0f} s, {mdns['energy_evals']} energies, log Z err "
          f"{mdns['log_z_err']}, ESS {mdns['ess_frac']:.3f}", flush=True)
    out = {"target": target.to_config(), "exact_log_z": target.exact_log_z(), "mdns": mdns,
           "paper_mdns": MDNS_PAPER.get(name), "paper_dasbs": PAPER_DASBS, "reference_wall_s": ref_wall}
    if ref is not None:
        out["reference"] = {k: v for k, v in ref.items() if not k.startswith("_")}
    for variant in args.variants:
        out[variant] = run_dasbs(target, variant, args, ref, mdns["train_wall_s"], mdns["energy_evals"])
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(2, n, figsize=(5 * n, 7), squeeze=False)
    for j, (name, r) in enumerate(results.items()):
        ax = axes[0, j]
        m = r["mdns"]
        hist = np.asarray(m["history"]["ess_frac"])
        ax.plot(np.linspace(0, m["train_wall_s"], hist.size), hist, lw=0.8, label="MDNS")
        for v in (k for k in VARIANTS if k in r):
            c = r[v]["curve"]
            ax.plot([p["train_wall_s"] for p in c], [p["ess_frac"] for p in c], lw=0.8, label=v)
        ceiling = r.get("reference", {}).get("ess_ceiling_optimal_controller_tau_leaping")
        if ceiling is not None:  # enumerable lattices only
            ax.axhline(ceiling, ls=":", c="k", lw=0.8, label="exact controller (tau-leaping)")
        ax.axvline(m["train_wall_s"], c="gray", lw=0.5)
        ax.set(title=r["target"].get("name", name), xlabel="training wall time (s)",
               ylabel="batch ESS fraction", ylim=(0, 1.02))
        ax.legend(fontsize=7)
        ax = axes[1, j]
        labels, errs, ses = ["MDNS"], [abs(m["log_z_err"] or 0)], [m["log_z_stderr"]]
        for v in (k for k in VARIANTS if k in r):
            for pt, p in r[v]["points"].items():
                labels.append(f"{v}\n{pt}")
                errs.append(abs(p["log_z_err"] or 0))
                ses.append(p["log_z_stderr"])
        ax.bar(range(len(labels)), errs, yerr=ses, color="C0", alpha=0.7)
        ax.set_xticks(range(len(labels)), labels, fontsize=6)
        ax.set(ylabel="|log Z - exact| (bar: stderr)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=["ising_c", "potts_c"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--L", type=int, default=4, help="Ising side length")
    ap.add_argument("--potts-L", type=int, default=None, help="Potts side length (default: --L)")
    ap.add_argument("--steps", type=int, default=600, help="MDNS training steps (sets the budgets)")
    ap.add_argument("--mdns-batch", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=128, help="DASBS batch size")
    ap.add_argument("--time-steps", type=int, default=50, help="DASBS tau-leaping steps")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=20, help="DASBS steps between budget checks")
    ap.add_argument("--max-time-factor", type=float, default=3.0,
                    help="stop DASBS at this multiple of MDNS's wall time if the eval budget is not reached")
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--opt-samples", type=int, default=4096, help="paths of the exact controller")
    ap.add_argument("--sw-samples", type=int, default=40_000)
    ap.add_argument("--sw-chains", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    args.potts_L = args.potts_L or args.L
    torch.set_num_threads(args.threads)
    results = {name: run_target(name, args) for name in args.targets}
    tag = args.tag or f"L{args.L}_steps{args.steps}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"argv": vars(args), "versions": bk.Result.__dataclass_fields__["versions"].default_factory(),
            "device": str(torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                                       else "cpu" if args.device == "auto" else args.device)),
            "torch_threads": torch.get_num_threads()}
    out = RESULTS / f"discrete_asbs_lattice_{tag}.json"
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=float))
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
