"""Where does discrete ASBS pay? Cost to a fixed accuracy vs state-space size (run on demand).

The discrete ASBS paper (arXiv 2602.08243) argues that its sampler pays in large state spaces:
it updates every site in parallel at each of K tau-leaping steps, while MDNS reveals one site
per network pass (D passes per sample). This script measures, on a grid of Ising / Potts
lattices at their critical coupling (q = 2, 3, 4, 8 at L = 4; q = 2, 3 at L = 6; q = 2 at
L = 8; state spaces of 2^16 to 2^64), the cost each method needs to reach one fixed target:

    ESS / N >= ``--ess`` (0.1)  and  |log Z_hat - log Z| <= min(``--tol`` (0.1), 3 stderr)

and an error bar ``stderr <= --tol``, with N = ``--n-eval`` (512) weighted samples, against the exact log Z (Kaufman for Ising,
momentum transfer matrix for Potts). Cost = training up to a checkpoint + drawing the N
samples; reported as

* energy evaluations, counted by wrapping the target (every configuration passed to
  ``energy``; discrete ASBS's discrete scores come from the lattice's closed-form local
  fields and are counted separately; SMC's heat-bath sweeps likewise), in two accountings:
  ``evals`` (a score or a sweep counts as one lattice pass, what Ising / Potts cost) and
  ``evals_black_box`` (what a generic categorical energy without local fields would cost:
  a score is ``1 + D (q - 1)`` energies, an SMC sweep ``D`` Metropolis energies);
* CPU time (one thread, ``time.process_time``: robust to the other jobs sharing the machine;
  wall time is stored too) of training + drawing the N samples.

One training run per method, size and seed (3 seeds where D = 16 and q <= 3, one elsewhere;
training capped at ``--cap-per-site`` CPU-seconds per site), evaluated at checkpoints (a cheap 128-sample
pre-check decides whether the full N-sample evaluation runs; the pre-checks and evaluations
are measurements, not charged). MDNS and discrete ASBS use their defaults (what
``bk.sample`` gives: lattice CNN, hidden 32, lr 3e-3; MDNS batch 256 with adaptive warm-up,
discrete ASBS batch 128, K = 50, delta source, closed-form corrector, 200-step warm-up).
Lattice SMC (``method="smc"``, the default of ``bk.sample`` on lattices) is run with
increasing particle numbers until it meets the same log Z target, and once more at the
energy-evaluation budget the cheaper neural method needed.

Also recorded per size: the sampling cost per effective sample of each trained sampler
(seconds per ESS at the evaluation), which is where one-site-per-pass sampling would show.

Writes ``benchmarks/results/discrete_asbs_regime.json`` and ``.png``.

Result (2026-12-07, stored run; the table is in :mod:`boltzkit.samplers.discrete_asbs`): no
crossover in CPU time at these sizes; in counted energy evaluations discrete ASBS needed
0.67-0.91x MDNS's on 4x4 Potts q = 3, 4 and 6x6 Ising but 1.7x on 4x4 Ising (8-10x everywhere
in the black-box accounting); neither reached the target on Potts q = 8 4x4, Potts q = 3 6x6
or Ising 8x8 within the caps; lattice SMC reached it everywhere with 4-10x more lattice passes
and 30-210x less CPU time. Sampling alone: discrete ASBS per sample / MDNS per sample = 8.8,
3.7, 1.9, 0.9 at L = 4, 8, 12, 16 (q = 2).

Cut to fit the CPU budget: one seed above D = 16 or q = 3, critical couplings only, N = 512,
training caps of 2.5 CPU-s per site, no Potts q = 4 at L = 6 (exact log Z available) or
larger lattices (no exact log Z for Potts q >= 4 beyond that; Ising 12 x 12 would need
hours of training).

Example (about 1 h of wall time on 2 cores shared with other jobs, about 20 CPU-minutes)::

    nice -n 5 python benchmarks/discrete_asbs_regime.py
    python benchmarks/discrete_asbs_regime.py --sizes 2x4 3x4 --seeds 1 --cap-per-site 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import boltzkit as bk
from boltzkit._utils import versions
from boltzkit.energies import BETA_C_ISING, Ising, Potts, potts_beta_c
from boltzkit.samplers.discrete_asbs import DiscreteASBS
from boltzkit.samplers.mdns import MDNS

RESULTS = Path(__file__).resolve().parent / "results"
CHECKPOINTS = (20, 40, 60, 80, 100, 130, 160, 200, 240, 280, 330, 400, 480, 560, 660, 800, 1000,
               1200, 1500, 2000)


# ---------------------------------------------------------------------------- counting
class Counter:
    """Counts the configurations a sampler passes to the target (instance-level wrappers)."""

    def __init__(self, target):
        self.energy_rows = 0
        self.score_rows = 0
        energy, scores = target.energy, target.local_log_ratios

        def counted_energy(x):
            self.energy_rows += x.shape[0]
            return energy(x)

        def counted_scores(x):
            self.score_rows += x.shape[0]
            return scores(x)

        target.energy, target.local_log_ratios = counted_energy, counted_scores
        self._restore = lambda: (delattr(target, "energy"), delattr(target, "local_log_ratios"))

    def snapshot(self) -> dict:
        return {"energy_rows": self.energy_rows, "score_rows": self.score_rows}

    def close(self):
        self._restore()


def accounting(energy_rows: int, score_rows: int, sweeps: int, d: int, q: int) -> dict:
    return {"energy_rows": energy_rows, "score_rows": score_rows, "sweeps": sweeps,
            "evals": energy_rows + score_rows + sweeps,
            "evals_black_box": energy_rows + score_rows * (1 + d * (q - 1)) + sweeps * d}


def make_target(q: int, L: int, beta_frac: float):
    if q == 2:
        return Ising(L=L, beta=beta_frac * BETA_C_ISING)
    return Potts(L=L, q=q, beta=beta_frac * potts_beta_c(q))


def meets(err: float, se: float, ess_frac: float, args) -> bool:
    """The target: ESS / N >= ess, an error bar se <= tol, and |err| <= min(tol, 3 se)."""
    return (math.isfinite(err) and math.isfinite(se) and ess_frac >= args.ess and se <= args.tol
            and abs(err) <= min(args.tol, 3.0 * se))


# ---------------------------------------------------------------------------- neural runs
def evaluate(sampler, n: int, exact: float) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    res = sampler.sample(n)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    err = res.log_z - exact
    return {"n": n, "log_z_err": err, "log_z_stderr": res.log_z_stderr, "ess_frac": res.ess / n,
            "pareto_k": res.diagnostics.get("pareto_k"), "sample_wall_s": wall, "sample_cpu_s": cpu,
            "sample_cpu_s_per_ess": cpu / max(res.ess, 1e-12), "diagnostics_energy_evaluations":
            res.diagnostics.get("energy_evaluations")}


def run_neural(method: str, q: int, L: int, seed: int, args) -> dict:
    target = make_target(q, L, args.beta_frac)
    exact, d = target.exact_log_z(), target.domain.n_sites
    cls = {"mdns": MDNS, "discrete_asbs": DiscreteASBS}[method]
    counter = Counter(target)
    sampler = cls(device="cpu", seed=seed, progress=False)
    cap = args.cap_per_site * d
    curve, hit, status, train_cpu = [], None, "cap", 0.0
    import warnings
    try:
        for step in CHECKPOINTS:
            if step > args.max_steps:
                break
            c0 = time.process_time()
            sampler.fit(target, n_steps=step)
            train_cpu += time.process_time() - c0
            train = counter.snapshot()
            point = {"step": step, "train_wall_s": sampler.train_time, "train_cpu_s": train_cpu,
                     **{f"train_{k}": v for k, v in accounting(train["energy_rows"], train["score_rows"],
                                                               0, d, q).items()}}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pre = evaluate(sampler, args.n_pre, exact)
                point["pre"] = {k: pre[k] for k in ("log_z_err", "log_z_stderr", "ess_frac")}
                if pre["ess_frac"] >= 0.5 * args.ess and abs(pre["log_z_err"]) <= 3 * args.tol:
                    before = counter.snapshot()
                    ev = evaluate(sampler, args.n_eval, exact)
                    after = counter.snapshot()
                    ev["sample_energy_rows"] = after["energy_rows"] - before["energy_rows"]
                    point["eval"] = ev
                    if meets(ev["log_z_err"], ev["log_z_stderr"], ev["ess_frac"], args):
                        hit = point
            curve.append(point)
            print(f"   {method} q={q} L={L} seed={seed} step {step}: {train_cpu:.0f} cpu-s, "
                  f"pre ESS {pre['ess_frac']:.3f} err {pre['log_z_err']:+.3f}"
                  + (f" | eval ESS {point['eval']['ess_frac']:.3f} err {point['eval']['log_z_err']:+.3f}"
                     f" +- {point['eval']['log_z_stderr']:.3f}" if "eval" in point else ""), flush=True)
            if hit is not None:
                status = "reached"
                break
            if train_cpu >= cap:
                break
    finally:
        counter.close()
    out = {"method": method, "q": q, "L": L, "seed": seed, "status": status, "cap_s": cap,
           "curve": curve, "nfe_per_sample": d if method == "mdns" else sampler.config.n_time_steps}
    if hit is not None:
        ev = hit["eval"]
        cost = accounting(hit["train_energy_rows"] + ev["sample_energy_rows"], hit["train_score_rows"], 0, d, q)
        out["to_target"] = {"step": hit["step"], "wall_s": hit["train_wall_s"] + ev["sample_wall_s"],
                            "cpu_s": hit["train_cpu_s"] + ev["sample_cpu_s"],
                            "train_cpu_s": hit["train_cpu_s"], "sample_cpu_s": ev["sample_cpu_s"],
                            "train_wall_s": hit["train_wall_s"], "sample_wall_s": ev["sample_wall_s"],
                            **cost, "eval": ev}
    last = next((p["eval"] for p in reversed(curve) if "eval" in p), None)
    out["last_eval"] = last
    return out


# ---------------------------------------------------------------------------- SMC
def run_smc(q: int, L: int, n: int, seed: int, args) -> dict:
    target = make_target(q, L, args.beta_frac)
    exact, d = target.exact_log_z(), target.domain.n_sites
    counter = Counter(target)
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0, c0 = time.perf_counter(), time.process_time()
            res = bk.sample(target, method="smc", n_samples=n, seed=seed, device="cpu")
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        counter.close()
    diag = res.diagnostics
    cost = accounting(counter.energy_rows, counter.score_rows, int(diag["sweeps_total"]), d, q)
    err = res.log_z - exact
    return {"n": n, "wall_s": wall, "cpu_s": cpu, **cost, "log_z_err": err, "log_z_stderr": res.log_z_stderr,
            "ess_frac": res.ess / n, "reliable": bool(diag.get("reliable")), "n_levels": diag["n_levels"],
            "diagnostics_energy_evaluations": diag["energy_evaluations"],
            "meets": meets(err, res.log_z_stderr, res.ess / n, args)}


def smc_series(q: int, L: int, seed: int, args) -> dict:
    runs, hit = [], None
    for n in args.smc_n:
        r = run_smc(q, L, n, seed, args)
        runs.append(r)
        print(f"   smc q={q} L={L} n={n}: {r['cpu_s']:.1f} cpu-s, {r['evals']} evals, err "
              f"{r['log_z_err']:+.3f} +- {r['log_z_stderr']:.3f}", flush=True)
        if r["meets"]:
            hit = r
            break
    return {"runs": runs, "to_target": hit}


# ---------------------------------------------------------------------------- sampling cost
def sampling_scan(args) -> dict:
    """CPU seconds per sample of untrained samplers vs lattice size: the cost of sampling alone
    (MDNS: D one-site passes on each site's receptive field; discrete ASBS: K full passes)."""
    import warnings

    rows = []
    for q in args.scan_q:
        for L in args.scan_L:
            target = make_target(q, L, args.beta_frac)
            row = {"q": q, "L": L, "n_sites": L * L, "log2_states": L * L * math.log2(q)}
            for name, cls in (("mdns", MDNS), ("discrete_asbs", DiscreteASBS)):
                sampler = cls(device="cpu", seed=0, progress=False).fit(target, n_steps=0)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sampler.sample(8)  # warm-up (allocations)
                    c0 = time.process_time()
                    res = sampler.sample(args.scan_n)
                    cpu = time.process_time() - c0
                row[name] = {"cpu_s_per_sample": cpu / args.scan_n,
                             "network_passes_per_sample": res.diagnostics["nfe_per_sample"]}
            row["ratio_dasbs_over_mdns"] = (row["discrete_asbs"]["cpu_s_per_sample"]
                                            / row["mdns"]["cpu_s_per_sample"])
            print(f"   sampling q={q} L={L}: MDNS {row['mdns']['cpu_s_per_sample'] * 1e3:.2f} ms, "
                  f"discrete ASBS {row['discrete_asbs']['cpu_s_per_sample'] * 1e3:.2f} ms per sample "
                  f"(ratio {row['ratio_dasbs_over_mdns']:.1f})", flush=True)
            rows.append(row)
    return {"n_samples": args.scan_n, "rows": rows}


# ---------------------------------------------------------------------------- driver
def summarize(size: dict) -> dict:
    """Median cost to target over seeds (None where any seed missed the target)."""
    out = {}
    for method in ("mdns", "discrete_asbs"):
        runs = size[method]
        hits = [r["to_target"] for r in runs if "to_target" in r]
        row = {"reached": f"{len(hits)}/{len(runs)}"}
        if len(hits) == len(runs):
            for key in ("evals", "evals_black_box", "cpu_s", "wall_s", "train_cpu_s", "step"):
                row[key] = float(np.median([h[key] for h in hits]))
        else:  # lower bounds: the cost spent when training stopped at the cap
            last = [r["curve"][-1] for r in runs if r["curve"]]
            row["spent_at_cap"] = {"evals": float(np.median([p["train_evals"] for p in last])),
                                   "evals_black_box": float(np.median([p["train_evals_black_box"]
                                                                       for p in last])),
                                   "cpu_s": float(np.median([p["train_cpu_s"] for p in last]))}
        evs = [r["last_eval"] for r in runs if r["last_eval"] is not None]
        if evs:
            row["sample_cpu_s_per_ess"] = float(np.median([e["sample_cpu_s_per_ess"] for e in evs]))
        out[method] = row
    smc = size["smc"]["to_target"]
    out["smc"] = ({"reached": "1/1", **{k: smc[k] for k in ("evals", "evals_black_box", "cpu_s", "wall_s", "n")}}
                  if smc else {"reached": "0/1"})
    return out


def plot(results: dict, path: Path, scan: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 3, figsize=(17, 9.5))
    axes = grid.ravel()
    axes[5].axis("off")
    styles = {"mdns": ("C0", "o", "MDNS"), "discrete_asbs": ("C3", "s", "discrete ASBS"),
              "smc": ("C2", "^", "SMC (lattice)")}
    panels = (("evals", "energy evaluations to target\n(score / sweep = 1 lattice pass)"),
              ("evals_black_box", "energy evaluations to target\n(black-box energy accounting)"),
              ("cpu_s", "CPU time to target (s, 1 thread)"),
              ("sample_cpu_s_per_ess", "sampling CPU-s per effective sample\n(trained sampler, last evaluation)"))
    for ax, (key, label) in zip(axes[:4], panels):
        for method, (c, m, name) in styles.items():
            xs, ys, xm, ym = [], [], [], []
            for r in results.values():
                bits = r["log2_states"]
                s = r["summary"][method]
                if key in s:
                    xs.append(bits)
                    ys.append(s[key])
                elif key in s.get("spent_at_cap", {}):
                    xm.append(bits)
                    ym.append(s["spent_at_cap"][key])
            ax.plot(xs, ys, marker=m, color=c, ls="", label=name)
            ax.plot(xm, ym, marker=m, color=c, ls="", mfc="none", ms=9)
        for r in results.values():
            s = r["summary"]
            if key in s["mdns"] or key in s["discrete_asbs"]:
                y = max(s[m_].get(key, 0) for m_ in styles if m_ in s)
                ax.annotate(f"q{r['q']}L{r['L']}", (r["log2_states"], y), fontsize=6,
                            textcoords="offset points", xytext=(2, 4))
        ax.set(xlabel="log2(q^(L^2))", ylabel=label, yscale="log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="open marker: not reached, cost spent at the cap",
                   title_fontsize=7)
    ax = axes[4]
    if scan:
        for q in sorted({r["q"] for r in scan["rows"]}):
            rows = [r for r in scan["rows"] if r["q"] == q]
            for method, (c, m, name) in list(styles.items())[:2]:
                ax.plot([r["log2_states"] for r in rows], [r[method]["cpu_s_per_sample"] for r in rows],
                        marker=m, color=c, ls="-" if q == 2 else "--", label=f"{name}, q={q}")
            for r in rows:
                ax.annotate(f"L{r['L']}", (r["log2_states"], r["discrete_asbs"]["cpu_s_per_sample"]),
                            fontsize=6, textcoords="offset points", xytext=(2, 4))
        ax.set(xlabel="log2(q^(L^2))", ylabel="sampling CPU-s per sample (untrained nets)",
               xscale="log", yscale="log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("cost to ESS/N >= 0.1, stderr <= 0.1 and |log Z err| <= min(0.1, 3 se) at N = 512; "
                 "critical couplings; median over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["2x4", "3x4", "4x4", "8x4", "2x6", "3x6", "2x8"],
                    help="q x L pairs")
    ap.add_argument("--seeds", type=int, default=3, help="seeds at the smallest sizes (D = 16, q <= 3)")
    ap.add_argument("--beta-frac", type=float, default=1.0, help="beta / beta_c")
    ap.add_argument("--ess", type=float, default=0.1)
    ap.add_argument("--tol", type=float, default=0.1)
    ap.add_argument("--n-eval", type=int, default=512)
    ap.add_argument("--n-pre", type=int, default=128)
    ap.add_argument("--cap-per-site", type=float, default=2.5,
                    help="training CPU-time cap per run, CPU-seconds per lattice site")
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--smc-n", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="discrete_asbs_regime")
    ap.add_argument("--scan-L", type=int, nargs="+", default=[4, 8, 12, 16])
    ap.add_argument("--scan-q", type=int, nargs="+", default=[2])
    ap.add_argument("--scan-n", type=int, default=64)
    ap.add_argument("--only", choices=("all", "grid", "scan", "plot"), default="all")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = RESULTS / f"{args.out}.json"
    scan_path = RESULTS / f"{args.out}_sampling.json"
    if args.only in ("scan", "plot"):
        if args.only == "scan":
            scan_path.write_text(json.dumps({"meta": {"argv": vars(args), "versions": versions()},
                                             **sampling_scan(args)}, indent=1, default=float))
        scan = json.loads(scan_path.read_text()) if scan_path.exists() else None
        plot(json.loads(out.read_text())["results"], out.with_suffix(".png"), scan)
        print(f"wrote {out.with_suffix('.png')}")
        return
    t_start = time.perf_counter()
    results = {}
    for size in args.sizes:
        q, L = map(int, size.split("x"))
        d = L * L
        n_seeds = args.seeds if (d <= 16 and q <= 3) else 1
        target = make_target(q, L, args.beta_frac)
        print(f"== q={q} L={L}: {target.name}, exact log Z {target.exact_log_z():.4f}", flush=True)
        r = {"q": q, "L": L, "n_sites": d, "log2_states": d * math.log2(q), "beta": target.beta,
             "exact_log_z": target.exact_log_z(), "seeds": n_seeds}
        for method in ("mdns", "discrete_asbs"):
            r[method] = [run_neural(method, q, L, seed, args) for seed in range(n_seeds)]
        r["smc"] = smc_series(q, L, 0, args)
        hits = [x["to_target"]["evals"] for m in ("mdns", "discrete_asbs") for x in r[m] if "to_target" in x]
        if hits:  # SMC at the energy-evaluation budget of the cheapest neural run
            per_particle = r["smc"]["runs"][0]["evals"] / r["smc"]["runs"][0]["n"]
            n_eq = max(64, 2 ** round(math.log2(min(hits) / per_particle)))
            r["smc"]["at_neural_budget"] = {"budget_evals": min(hits), **run_smc(q, L, n_eq, 0, args)}
        r["summary"] = summarize(r)
        results[size] = r
        print(f"   summary {json.dumps(r['summary'])}", flush=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        meta = {"argv": vars(args), "versions": versions(), "device": "cpu",
                "torch_threads": torch.get_num_threads(), "wall_s_total": time.perf_counter() - t_start,
                "note": "timings on 2 CPU cores shared with other jobs; compare within a size"}
        out.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=float))
    scan = None
    if args.only == "all":
        scan = {"meta": {"argv": vars(args), "versions": versions()}, **sampling_scan(args)}
        scan_path.write_text(json.dumps(scan, indent=1, default=float))
    plot(results, out.with_suffix(".png"), scan)
    print(f"wrote {out} and {out.with_suffix('.png')} in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
