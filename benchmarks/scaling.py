"""Data-parallel scaling of neural-sampler training (not run by pytest).

MDNS (WDCE loss) on a periodic Ising lattice at beta = 0.3, trained for a fixed number of
steps at 1 and 2 processes on CPU (gloo backend, one thread per process), and on one GPU
when there is one. Measures training throughput -- samples per second (configurations
entering the loss, summed over the ranks) and energy evaluations per second (configurations
whose energy was computed, summed over the ranks) -- in two settings:

* strong scaling: the global batch is fixed; each of N ranks takes 1/N of it;
* weak scaling: the per-rank batch is fixed; N ranks process N times as much.

Writes ``benchmarks/results/scaling.json`` and ``benchmarks/results/scaling.png``.

    python benchmarks/scaling.py [--L 6] [--steps 40] [--batch 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.multiprocessing as mp

RESULTS = Path(__file__).resolve().parent / "results"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    """One rank: build MDNS, count energy evaluations, time ``fit`` after a warm-up."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    import boltzkit as bk
    from boltzkit.samplers.mdns import MDNS

    target = bk.energies.Ising(L=cfg["L"], beta=0.3)
    counted = {"n": 0}
    energy = target.energy

    def counting_energy(x):
        counted["n"] += x.shape[0]
        return energy(x)

    target.energy = counting_energy
    s = MDNS(seed=0, progress=False, device=cfg["device"], batch_size=cfg["batch"],
             n_unmask_steps=cfg["unmask"], resample_every=2, warmup=None, hidden=32)
    s.fit(target, n_steps=cfg["warmup_steps"])
    if world > 1:
        torch.distributed.barrier()
    n0, t0 = counted["n"], time.perf_counter()
    s.fit(target, n_steps=cfg["warmup_steps"] + cfg["steps"])
    if cfg["device"] == "cuda":
        torch.cuda.synchronize()
    if world > 1:
        torch.distributed.barrier()
    wall = time.perf_counter() - t0
    rec = {"wall_s": wall, "energy_evals": counted["n"] - n0}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(rec, fh)
    if world > 1:
        import gc

        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def measure(world: int, batch: int, args, device: str = "cpu") -> dict:
    """Best of ``args.repeats`` runs: throughput summed over the ranks."""
    best = None
    for _ in range(args.repeats):
        cfg = dict(L=args.L, batch=batch, steps=args.steps, warmup_steps=5, unmask=args.unmask,
                   device=device)
        with tempfile.TemporaryDirectory() as out:
            if world == 1:
                _run(0, 1, 0, cfg, out)
            else:
                mp.spawn(_run, args=(world, _free_port(), cfg, out), nprocs=world, join=True)
            recs = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
        wall = max(r["wall_s"] for r in recs)
        row = {"world_size": world, "device": device, "batch_per_rank": batch,
               "global_batch": batch * world, "steps": args.steps, "wall_s": wall,
               "samples_per_s": batch * world * args.steps / wall,
               "energy_evals_per_s": sum(r["energy_evals"] for r in recs) / wall,
               "step_ms": 1000.0 * wall / args.steps}
        if best is None or row["wall_s"] < best["wall_s"]:
            best = row
    print(json.dumps(best), flush=True)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--L", type=int, default=6)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=256, help="global batch (strong), per-rank batch (weak)")
    p.add_argument("--unmask", type=int, default=6, help="network passes per rollout")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    strong = [measure(1, args.batch, args), measure(2, args.batch // 2, args)]
    weak = [measure(1, args.batch, args), measure(2, args.batch, args)]
    for table in (strong, weak):
        base = table[0]["samples_per_s"]
        for row in table:
            row["speedup"] = row["samples_per_s"] / base
            row["efficiency"] = row["speedup"] / row["world_size"]
    gpu = [measure(1, args.batch, args, device="cuda")] if torch.cuda.is_available() else []

    report = {
        "benchmark": "MDNS (WDCE) training throughput under torch.distributed data parallelism",
        "target": f"Ising L={args.L} periodic, beta=0.3",
        "settings": {"steps_timed": args.steps, "warmup_steps": 5, "n_unmask_steps": args.unmask,
                     "resample_every": 2, "hidden": 32, "repeats (best of)": args.repeats,
                     "threads_per_process": 1, "backend": "gloo (CPU)"},
        "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "note": "shared 2-core machine; other jobs may be running"},
        "strong_scaling": strong, "weak_scaling": weak, "gpu": gpu,
        "total_wall_s": time.perf_counter() - t_start,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps(report, indent=1))
    _plot(report, RESULTS / "scaling.png")
    print(f"wrote {RESULTS / 'scaling.json'} and {RESULTS / 'scaling.png'}")
    return 0


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((axes[0], "strong_scaling", "strong scaling (fixed global batch)"),
                           (axes[1], "weak_scaling", "weak scaling (fixed per-rank batch)")):
        rows = report[key]
        w = [r["world_size"] for r in rows]
        ax.plot(w, [r["samples_per_s"] for r in rows], "o-", label="samples / s")
        ax.plot(w, [r["energy_evals_per_s"] for r in rows], "s--", label="energy evals / s")
        ax.plot(w, [rows[0]["samples_per_s"] * x for x in w], ":", color="grey", label="ideal (samples)")
        for r in rows:
            ax.annotate(f"eff {r['efficiency']:.2f}", (r["world_size"], r["samples_per_s"]),
                        textcoords="offset points", xytext=(4, -12), fontsize=8)
        ax.set_xticks(w)
        ax.set_xlabel("processes (CPU, gloo)")
        ax.set_ylabel("throughput")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"{report['target']}: MDNS training throughput", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
