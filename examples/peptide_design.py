"""Antimicrobial peptide design with TR2-D2: pretrain, fine-tune toward a reward, evaluate.

1. Load the modlamp AMP-vs-UniProt peptides (``pip install 'boltzkit[sequences]'``).
2. Pretrain a masked diffusion model on them.
3. Train two AMP classifiers on disjoint halves: one is the fine-tuning reward, the other the
   evaluation oracle (reward hacking shows as a gap between them).
4. Fine-tune with TR2-D2 toward p*(x) ~ p_pre(x) exp(P_AMP(x) / alpha) and compare with the
   pretrained model: reward (both oracles), likelihood under the pretrained model, diversity.
5. Multi-objective: fine-tune toward four objectives (AMP score, low hydropathy, amphipathicity,
   a net-charge window) with the Pareto archive, and plot the Pareto front of the samples.

Usage::

    python examples/peptide_design.py --quick     # a few minutes on one CPU core
    python examples/peptide_design.py             # larger budget
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import boltzkit as bk
from boltzkit.bio.sequences.metrics import diversity, novelty
from boltzkit.bio.sequences.oracles import PeptideObjectives, amp_oracles
from boltzkit.samplers.tr2d2 import pareto_mask


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="small budget (minutes on a laptop CPU)")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--out", default="peptide_design.png")
    args = p.parse_args()
    torch.set_num_threads(1)
    pre_steps, ft_steps, n = (300, 30, 256) if args.quick else (2000, 200, 1000)

    data = bk.datasets.peptides()
    print(data)
    t0 = time.perf_counter()
    model = bk.MaskedDiffusion.pretrain(data, n_steps=pre_steps, batch_size=64, lr=2e-3, seed=0,
                                        net="transformer", hidden=64, n_layers=2, n_heads=4,
                                        n_unmask_steps=16, device="auto")
    print(f"pretrained in {time.perf_counter() - t0:.0f} s, final loss {np.mean(model.history['loss'][-50:]):.3f}")
    ft, ev = amp_oracles(data, seed=0)
    print(f"AMP oracles: held-out AUC {ft.info['heldout_auc']:.3f} (fine-tune), {ev.info['heldout_auc']:.3f} (eval)")

    # ---- single objective: P(AMP)
    target = bk.RewardTarget(model, ft, alpha=args.alpha, name="amp")
    res = bk.sample(target, n_samples=n, n_steps=ft_steps, seed=0, lr=3e-4, n_expansions=8,
                    n_children=16, parallel=4, n_replicates=2)
    x_pre = model.sample(n, seed=1)
    rows = []
    for name, x in (("pretrained", x_pre), ("tr2d2", res.samples)):
        with torch.no_grad():
            rows.append((name, float(ft(x).mean()), float(ev(x).mean()),
                         float(model.elbo(x, seed=0).mean()), diversity(x), novelty(x, data.tokens)))
    print(f"\n{'':12s} {'ft P(AMP)':>10s} {'eval P(AMP)':>12s} {'ELBO_pre':>9s} {'unique':>7s} {'Hamming':>8s} {'novel':>6s}")
    for name, f, e, el, div, nov in rows:
        print(f"{name:12s} {f:10.3f} {e:12.3f} {el:9.1f} {div['unique_fraction']:7.2f} "
              f"{div['mean_hamming']:8.2f} {nov:6.2f}")
    print(f"reward calls in training: {res.diagnostics['reward_calls']}, ESS of the final weights for p*: "
          f"{res.diagnostics['ess_frac']:.3f}, log E_pre[exp(r/alpha)] = {res.log_z:.3f} +- {res.log_z_stderr:.3f}")
    print("examples:", res.diagnostics["strings"][:5])

    # ---- several objectives with the Pareto archive
    objectives = PeptideObjectives(ft)
    multi = bk.RewardTarget(model, objectives, alpha=args.alpha, name="peptide_objectives")
    res_mo = bk.sample(multi, n_samples=n, n_steps=ft_steps, seed=0, lr=3e-4, n_expansions=8,
                       n_children=16, parallel=4, n_replicates=2)
    obj = torch.tensor(res_mo.diagnostics["objectives"])
    with torch.no_grad():
        obj_pre = objectives(x_pre)
    front = pareto_mask(obj)
    print(f"\nmulti-objective: {int(front.sum())} of {n} samples on their Pareto front; mean objectives "
          f"{dict(zip(objectives.names, obj.mean(0).round(decimals=3).tolist()))} vs pretrained "
          f"{dict(zip(objectives.names, obj_pre.mean(0).round(decimals=3).tolist()))}")

    # ---- figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    h = res.history
    ax[0].plot(h["reward_calls"], h["rollout_mean_reward"], label="tree rollouts (fine-tune oracle)")
    ax[0].plot(h["reward_calls"], h["buffer_mean_reward"], label="top-k buffer")
    ax[0].axhline(rows[0][1], color="gray", ls="--", label="pretrained")
    ax[0].set_xlabel("reward calls")
    ax[0].set_ylabel("P(AMP)")
    ax[0].legend(fontsize=8)
    ax[0].set_title("reward vs reward calls")
    with torch.no_grad():
        for name, x in (("pretrained", x_pre), ("tr2d2", res.samples)):
            ax[1].hist(ev(x).numpy(), bins=30, alpha=0.6, label=name)
    ax[1].set_xlabel("evaluation-oracle P(AMP)")
    ax[1].legend()
    ax[1].set_title("held-out oracle")
    ax[2].scatter(obj_pre[:, 0], obj_pre[:, 2], s=6, alpha=0.4, label="pretrained")
    ax[2].scatter(obj[:, 0], obj[:, 2], s=6, alpha=0.4, label="multi-objective TR2-D2")
    ax[2].scatter(obj[front, 0], obj[front, 2], s=20, c="k", label="its Pareto front (4 objectives)")
    ax[2].set_xlabel("AMP score")
    ax[2].set_ylabel("hydrophobic moment")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"figure written to {Path(args.out).resolve()}")


if __name__ == "__main__":
    main()
