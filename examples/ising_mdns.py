"""MDNS on the 6 x 6 Ising model at the critical temperature (CPU, a few minutes).

Trains the masked diffusion neural sampler with its defaults, draws weighted samples and
compares log Z with the exact (Kaufman) value::

    python examples/ising_mdns.py            # 6 x 6, beta_c, default training length
    python examples/ising_mdns.py --L 4 --steps 300
"""

import argparse
import time

import torch

import boltzkit as bk


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--L", type=int, default=6)
    ap.add_argument("--beta", type=float, default=bk.energies.BETA_C_ISING)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: MDNS default)")
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    target = bk.energies.Ising(L=args.L, beta=args.beta)
    print(bk.select(target).reason)
    t0 = time.perf_counter()
    res = bk.sample(target, n_samples=args.samples, n_steps=args.steps, seed=args.seed)
    wall = time.perf_counter() - t0
    exact = target.exact_log_z()
    print(res.summary())
    print(f"exact log Z = {exact:.5f}; error = {res.log_z - exact:+.5f} "
          f"({(res.log_z - exact) / res.log_z_stderr:+.1f} stderr)")
    m, m_se = res.expectation(lambda x: x.flatten(1).mean(1).abs())
    print(f"<|m|> = {m:.4f} +- {m_se:.4f};  total wall time {wall:.0f} s "
          f"(training {res.diagnostics['train_wall_time_s']:.0f} s)")


if __name__ == "__main__":
    main()
