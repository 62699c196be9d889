"""Does TR2-D2's tree search help where on-policy sampling rarely reaches the reward? (on demand)

Setting (everything exact): sequences of length 7 over ACGT from a known first-order Markov chain;
the pretrained model is the chain's exact masked-diffusion denoiser (one position per step, so
its law *is* the chain); the reward is a sparse motif, ``r(x) = 1`` if ``x`` contains the 5-mer
``ACGTA`` and 0 otherwise (pretrained probability about 0.3 %: an on-policy batch of 128
rollouts holds a hit about a third of the time); ``alpha`` is chosen so that ``p*`` puts about
70 % of its mass on motif sequences. ``p*(x) ~ p_chain(x) exp(r(x)/alpha)`` is enumerated over
the 4^7 states, and the fine-tuned policy's law is computed exactly
(``MaskedDiffusion.exact_log_prob``).

Methods (equal reward calls: ``n_steps / resample_every * 128``): on-policy WDCE
(``search="none"``, every rollout), on-policy + top-k buffer, on-policy and TR2-D2 with a
first-in-first-out buffer of the last 4 refreshes (``buffer_size=512``: unbiased, keeps rare hits), TR2-D2 default (tree with the
selection correction, every rollout), TR2-D2 with a greedier selection (temperature = alpha),
the paper's TR2-D2 (tree, top-k buffer, uncorrected weights) and best-of-N (N = the same number
of pretrained samples, keep the top 128).

Metrics: TV(p_theta, p*) (exact; best-of-N: the empirical law of its kept samples), the mean
reward and the motif mass under p_theta (exact), and the fraction of p*'s mass found: the
p*-mass of the distinct sequences the method's reward calls evaluated during training.

Usage::

    python benchmarks/tr2d2_mechanism.py                    # 3 seeds, ~15 min on a shared 2-core CPU
    python benchmarks/tr2d2_mechanism.py --replot

Writes ``benchmarks/results/tr2d2_mechanism.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from boltzkit.bio.sequences.masked_diffusion import MaskedDiffusion
from boltzkit.rewards import RewardTarget
from boltzkit.samplers.tr2d2 import TR2D2

RESULTS = Path(__file__).parent / "results"
L = 7
P0 = np.array([0.4, 0.3, 0.2, 0.1])
T = np.array([[0.6, 0.2, 0.1, 0.1], [0.1, 0.5, 0.3, 0.1], [0.2, 0.2, 0.4, 0.2], [0.3, 0.1, 0.1, 0.5]])
MOTIF = (0, 1, 2, 3, 0)  # ACGTA
STATES = torch.tensor(list(itertools.product(range(4), repeat=L)))
BASE = dict(n_expansions=8, n_children=16, parallel=2, resample_every=5, n_replicates=4, lr=3e-3,
            ema_decay=0.9, elbo_orders=0)


def motif_reward(x):
    """1.0 where the sequence contains MOTIF anywhere, else 0.0 (float64 (B,))."""
    m = torch.tensor(MOTIF, device=x.device)
    k = len(MOTIF)
    win = x.unfold(1, k, 1)  # (B, L - k + 1, k)
    return (win == m).all(-1).any(-1).double()


def chain_log_prob(x):
    x = np.asarray(x)
    return np.log(P0[x[:, 0]]) + np.log(T[x[:, :-1], x[:, 1:]]).sum(1)


def truth(alpha):
    r = motif_reward(STATES).numpy()
    lp = chain_log_prob(STATES)
    ls = lp + r / alpha
    p = np.exp(ls - np.logaddexp.reduce(ls))
    return p, np.exp(lp), r


def methods(alpha):
    return {"onpolicy_wdce": dict(search="none", buffer="all"),
            "onpolicy_topk": dict(search="none", buffer="topk"),
            "tr2d2": dict(search="mcts", buffer="all"),
            "tr2d2_greedy": dict(search="mcts", buffer="all", temperature=alpha),
            "tr2d2_paper": dict(search="mcts", buffer="topk", tree_weights="naive"),
            "onpolicy_fifo": dict(search="none", buffer="all", buffer_size=4 * 128),
            "tr2d2_fifo": dict(search="mcts", buffer="all", buffer_size=4 * 128),
            "tr2d2_fifo_greedy": dict(search="mcts", buffer="all", buffer_size=4 * 128, temperature=alpha),
            "best_of_n": None}


def exact_law(model, chunk=2048):
    return np.exp(np.concatenate([model.exact_log_prob(STATES[i:i + chunk]).numpy()
                                  for i in range(0, len(STATES), chunk)]))


def index_of(x):
    """Row index of each sequence in STATES (base-4 number)."""
    w = 4 ** torch.arange(L - 1, -1, -1)
    return (x.cpu().long() * w).sum(1).numpy()


def run_one(name, opts, seed, alpha, n_steps, p_star, r):
    pre = MaskedDiffusion.from_markov_chain(P0, T, "ACGT", L)
    seen = []

    def reward(x):
        seen.append(x.detach().cpu())
        return motif_reward(x)

    target = RewardTarget(pre, reward, alpha=alpha, name="motif")
    calls = n_steps // BASE["resample_every"] * BASE["n_expansions"] * BASE["n_children"]
    t0 = time.perf_counter()
    if opts is None:
        x = pre.sample(calls, seed=seed)
        rr = motif_reward(x)
        keep = x[torch.argsort(rr, descending=True, stable=True)[:128]]
        found = np.unique(index_of(x))
        q = np.bincount(index_of(keep), minlength=len(STATES)) / keep.shape[0]
        wall = time.perf_counter() - t0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = TR2D2(device="cpu", seed=seed, progress=False, **BASE, **opts).fit(target, n_steps=n_steps)
        wall = time.perf_counter() - t0
        found = np.unique(index_of(torch.cat(seen[1:])))  # the first call is the setup check
        q = exact_law(s.finetuned_model())
        assert s.reward_calls == calls, (s.reward_calls, calls)
    return {"method": name, "seed": seed, "alpha": alpha, "reward_calls": calls,
            "tv": 0.5 * float(np.abs(q - p_star).sum()), "mean_reward": float(q @ r),
            "p_star_mass_found": float(p_star[found].sum()),
            "n_distinct_evaluated": int(found.size), "wall_s": wall}


def summarize(runs):
    out = {}
    for name in dict.fromkeys(r["method"] for r in runs):
        rows = [r for r in runs if r["method"] == name]
        out[name] = {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows])))
                     for k in ("tv", "mean_reward", "p_star_mass_found", "wall_s")}
    return out


def plot(out, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = out["summary"]
    names = list(summ)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key, title in zip(axes, ("tv", "mean_reward", "p_star_mass_found"),
                              ("TV(p_theta, p*) (lower is better)", "motif mass / mean reward",
                               "p* mass evaluated in training")):
        m = [summ[n][key][0] for n in names]
        e = [summ[n][key][1] for n in names]
        ax.bar(range(len(names)), m, yerr=e, color="C0", alpha=0.8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_title(title)
        if key == "mean_reward":
            ax.axhline(out["p_star_mean_reward"], color="k", ls="--", label="p*")
            ax.axhline(out["pretrained_mean_reward"], color="gray", ls=":", label="pretrained")
            ax.legend()
    fig.suptitle(f"TR2-D2 mechanism: sparse motif, L={L}, alpha={out['alpha']}, "
                 f"{out['reward_calls']} reward calls, {len(out['seeds'])} seeds (mean +- sd)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--alpha", type=float, default=0.15)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--out", default=str(RESULTS / "tr2d2_mechanism.json"))
    p.add_argument("--replot", action="store_true")
    p.add_argument("--append", action="store_true", help="add these runs to the JSON's runs")
    a = p.parse_args()
    path = Path(a.out)
    if a.replot:
        plot(json.loads(path.read_text()), path.with_suffix(".png"))
        return
    torch.set_num_threads(1)
    p_star, p_pre, r = truth(a.alpha)
    print(f"pretrained motif mass {p_pre @ r:.4f}, p* motif mass {p_star @ r:.4f}, "
          f"TV(pre, p*) {0.5 * np.abs(p_pre - p_star).sum():.3f}", flush=True)
    runs = json.loads(path.read_text())["runs"] if a.append and path.exists() else []
    todo = methods(a.alpha)
    for name in (a.methods or list(todo)):
        for seed in a.seeds:
            row = run_one(name, todo[name], seed, a.alpha, a.steps, p_star, r)
            runs.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    out = {"L": L, "motif": "ACGTA", "alpha": a.alpha, "steps": a.steps, "seeds": a.seeds,
           "reward_calls": runs[-1]["reward_calls"], "pretrained_mean_reward": float(p_pre @ r),
           "p_star_mean_reward": float(p_star @ r),
           "tv_pretrained_p_star": 0.5 * float(np.abs(p_pre - p_star).sum()),
           "config": BASE, "runs": runs, "summary": summarize(runs),
           "note": "2-core CPU shared with other jobs; wall times are indicative only"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    plot(out, path.with_suffix(".png"))
    for k, v in out["summary"].items():
        print(k, {kk: f"{m:.3f} +- {s:.3f}" for kk, (m, s) in v.items()})


if __name__ == "__main__":
    main()
