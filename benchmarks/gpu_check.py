"""GPU check: one prepared run of boltzkit's discrete and continuous neural samplers on a GPU.

Run it wherever a GPU is available (it finishes in about 7 minutes on one H100: a global time
guard of 420 s, plus 20 s of grace, writes the JSON whatever happens)::

    python benchmarks/gpu_check.py                 # -> benchmarks/results/gpu_check_<card>.json
    python benchmarks/gpu_check.py --dry-run       # no GPU needed: every section at toy size on CPU

Sections (each records its own wall time, status and, on CUDA, peak GPU memory):

1. ``throughput`` -- on CPU and on the GPU, same settings: the MDNS site network (SiteCNN,
   hidden 32) on 16 x 16 Ising: full-lattice network passes/s, receptive-field
   (``site_logits``) passes/s (the sampling path; the full pass is the one it replaced: their
   ratio is the speed-up of that change on each device), MDNS samples/s (exact one-site-per-pass
   rollouts, float32 and bf16 autocast on the GPU), Ising energy evaluations/s and GMM-40
   energy + gradient evaluations/s.
2. ``mdns_ising16`` -- MDNS on 16 x 16 Ising at beta_c trained for 180 s, then
   exact weighted samples: ESS, log Z error vs Kaufman's exact log Z, train/sample wall time.
3. ``naas_gmm40`` -- NAAS on GMM-40 (the CPU benchmark's options, ``benchmarks/naas_continuous.py``
   "small") trained for the time that fits: log Z error (exact log Z = 0), ESS.
4. ``ais_heat_bath_ising16`` -- annealed importance sampling with heat-bath sweeps on the same
   16 x 16 Ising target (SMC resampling where the installed AIS supports it on lattices): log Z
   error, ESS, wall time: the classical comparison for section 2.

Every number is measured in this one process; CPU rows use all the host's cores
(``torch.get_num_threads()`` is recorded). The JSON is rewritten after every section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import boltzkit as bk  # noqa: E402
from boltzkit._utils import versions  # noqa: E402
from boltzkit.energies import BETA_C_ISING, Ising  # noqa: E402
from boltzkit.energies.continuous import GaussianMixture  # noqa: E402
from boltzkit.errors import ConfigError  # noqa: E402
from boltzkit.nn.ctmc import autocast_net, masked_rollout  # noqa: E402
from boltzkit.nn.discrete_nets import make_discrete_net  # noqa: E402
from boltzkit.samplers.mdns import MDNS  # noqa: E402
from boltzkit.samplers.naas import NAAS  # noqa: E402

RESULTS = HERE / "results"

# full size (GPU) and toy size (--dry-run, CPU, seconds)
SIZES = {
    "full": dict(L=16, batch=1024, rollout_batch=256, window_s=3.0, mdns_train_s=180.0,
                 mdns_samples=8192, mdns_batch=256, chunk=20, naas_train_s=90.0, naas_samples=8192,
                 naas=dict(prior_std=25.0, target_scale=1.3, relaxation=4.0, beta_power=3.0,
                           n_time_steps=64, batch_size=256),
                 ais_levels=2000, ais_samples=4096),
    "dry": dict(L=4, batch=16, rollout_batch=8, window_s=0.2, mdns_train_s=2.0,
                mdns_samples=256, mdns_batch=32, chunk=2, naas_train_s=2.0, naas_samples=256,
                naas=dict(prior_std=25.0, target_scale=1.3, relaxation=4.0, beta_power=3.0,
                          n_time_steps=8, batch_size=32, updates_per_step=2, prior_updates_per_step=2,
                          train_batch_size=64, prior_time_steps=4, hidden=16),
                ais_levels=20, ais_samples=64),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, device, window_s: float, per_call: float) -> dict:
    """Calls of ``fn`` per second (and ``per_call`` units/s) over about ``window_s`` seconds,
    after one warm-up call."""
    fn()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        _sync(device)
        dt = time.perf_counter() - t0
        if dt >= window_s:
            break
    return {"calls": n, "seconds": dt, "per_s": per_call * n / dt}


# ----------------------------------------------------------------------------- sections
def throughput(device: torch.device, size: dict) -> dict:
    L, b, w = size["L"], size["batch"], size["window_s"]
    target = Ising(L=L, beta=BETA_C_ISING).to(device)
    dom = target.domain
    torch.manual_seed(0)
    net = make_discrete_net(dom, "cnn", hidden=32).to(device).eval()
    with torch.no_grad():  # non-trivial weights (the head starts at zero)
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, device=device))
    d, q = dom.n_sites, dom.q
    gen = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(0, q + 1, (b, d), generator=gen, device=device)
    sites = torch.randint(0, d, (b, 1), generator=gen, device=device)
    states = torch.randint(0, q, (b, d), generator=gen, device=device)
    out = {"device": str(device), "L": L, "batch": b, "torch_threads": torch.get_num_threads()}
    precisions = [("float32", None)] + ([("bf16", torch.bfloat16)] if device.type == "cuda" else [])
    with torch.no_grad():
        for name, dtype in precisions:
            f = autocast_net(net, device, dtype)
            full = _rate(lambda: f(tokens), device, w, 1.0)
            cone = _rate(lambda: f.site_logits(tokens, sites) if dtype else net.site_logits(tokens, sites),
                         device, w, 1.0)
            nb = size["rollout_batch"]
            t0 = time.perf_counter()
            masked_rollout(f, nb, d, q, generator=gen, device=device)
            _sync(device)
            roll = time.perf_counter() - t0
            out[name] = {"full_passes_per_s": full["per_s"], "site_passes_per_s": cone["per_s"],
                         "site_vs_full_pass_speedup": cone["per_s"] / full["per_s"],
                         "rollout_batch": nb, "rollout_s": roll, "samples_per_s": nb / roll}
        phys = dom.decode(states.view(b, L, L))
        out["ising_energy_evals_per_s"] = _rate(lambda: target.energy(phys), device, w, b)["per_s"]
    gmm = GaussianMixture.gmm40().to(device)
    x = 20 * torch.randn(b, 2, generator=gen, device=device)

    def grad_eval():
        xx = x.clone().requires_grad_(True)
        torch.autograd.grad(gmm.energy(xx).sum(), xx)

    out["gmm40_energy_grad_evals_per_s"] = _rate(grad_eval, device, w, b)["per_s"]
    return out


def _train_for(sampler, target, seconds: float, chunk: int, deadline: float) -> dict:
    """Train in chunks of ``chunk`` steps until ``seconds`` have passed (or the deadline)."""
    t0 = time.perf_counter()
    sampler.fit(target, n_steps=chunk)
    while time.perf_counter() - t0 < seconds and time.perf_counter() < deadline:
        sampler.fit(target, n_steps=sampler.step + chunk)
    return {"train_steps": sampler.step, "train_wall_s": time.perf_counter() - t0}


def mdns_ising16(device: torch.device, size: dict, deadline: float) -> dict:
    target = Ising(L=size["L"], beta=BETA_C_ISING)
    sampler = MDNS(device=device, seed=0, progress=False, batch_size=size["mdns_batch"], lr=1e-3,
                   hidden=32)
    out = {"target": target.to_config(), "precision": "auto (bf16 on CUDA)"}
    out.update(_train_for(sampler, target, size["mdns_train_s"], size["chunk"], deadline))
    t0 = time.perf_counter()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short run may end its warm-up early: recorded below
        res = sampler.sample(size["mdns_samples"])
    exact = target.exact_log_z()
    out.update(sample_wall_s=time.perf_counter() - t0, n_samples=res.n_samples, log_z=res.log_z,
               log_z_stderr=res.log_z_stderr, exact_log_z=exact, log_z_err=res.log_z - exact,
               ess=res.ess, ess_frac=res.ess / res.n_samples,
               final_energy_scale=res.diagnostics["final_energy_scale"],
               ess_per_s_sampling=res.ess / (time.perf_counter() - t0))
    return out


def naas_gmm40(device: torch.device, size: dict, deadline: float) -> dict:
    target = GaussianMixture.gmm40()
    sampler = NAAS(seed=0, device=device, progress=False, **size["naas"])
    out = {"target": "gmm40", "naas_options": size["naas"]}
    out.update(_train_for(sampler, target, size["naas_train_s"], max(1, size["chunk"] // 4), deadline))
    t0 = time.perf_counter()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sampler.sample(size["naas_samples"])
    exact = target.exact_log_z()
    out.update(sample_wall_s=time.perf_counter() - t0, n_samples=res.n_samples, log_z=res.log_z,
               log_z_stderr=res.log_z_stderr, exact_log_z=exact, log_z_err=res.log_z - exact,
               ess=res.ess, ess_frac=res.ess / res.n_samples)
    return out


def ais_heat_bath_ising16(device: torch.device, size: dict, deadline: float) -> dict:
    target = Ising(L=size["L"], beta=BETA_C_ISING)
    opts = dict(method="ais", kernel="heat_bath", n_steps=size["ais_levels"],
                n_samples=size["ais_samples"], seed=0, device=device)
    t0 = time.perf_counter()
    try:  # SMC resampling, where the installed AIS supports it on lattices
        res, variant = bk.sample(target, resample_ess=0.5, **opts), "smc (resample_ess=0.5)"
    except ConfigError:
        res, variant = bk.sample(target, **opts), "ais (no resampling on lattices)"
    wall = time.perf_counter() - t0
    exact = target.exact_log_z()
    return {"target": target.to_config(), "variant": variant, "levels": size["ais_levels"],
            "n_samples": res.n_samples, "wall_s": wall, "log_z": res.log_z,
            "log_z_stderr": res.log_z_stderr, "exact_log_z": exact, "log_z_err": res.log_z - exact,
            "ess": res.ess, "ess_frac": res.ess / res.n_samples}


# ----------------------------------------------------------------------------- driver
class Recorder:
    """The JSON document, rewritten after every section and by the time guard."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.doc, self.lock = path, {"meta": meta, "sections": {}}, threading.Lock()

    def write(self, **meta) -> None:
        with self.lock:
            self.doc["meta"].update(meta)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.doc, indent=1, default=float))
            os.replace(tmp, self.path)

    def run(self, name: str, fn, device: torch.device, *args) -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        entry = {"status": "running"}
        self.doc["sections"][name] = entry
        self.write()
        try:
            entry.update(fn(device, *args))
            entry["status"] = "ok"
        except Exception as exc:  # record and go on: the other sections still run
            entry.update(status="error", error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc(limit=4))
        entry["wall_s"] = time.perf_counter() - t0
        if device.type == "cuda":
            entry["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        self.write()
        print(f"[{name}] {entry['status']} in {entry['wall_s']:.1f} s", flush=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true",
                    help="toy sizes on CPU (no GPU needed): proves the script starts and every section runs")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="global time guard in seconds (default 420; dry run 50)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu for --dry-run)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_check_<card>.json)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    size = SIZES["dry" if args.dry_run else "full"]
    budget = args.budget_s or (50.0 if args.dry_run else 420.0)
    deadline = t_start + budget
    if args.device is not None:
        device = torch.device(args.device)
    elif args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        raise SystemExit("no CUDA device: run with --dry-run (toy sizes on CPU), or --device cpu")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    tag = "dry_run" if args.dry_run else "".join(c if c.isalnum() else "_" for c in card).strip("_")
    out = Path(args.out) if args.out else RESULTS / f"gpu_check_{tag}.json"
    meta = {"dry_run": bool(args.dry_run), "device": str(device), "card": card, "budget_s": budget,
            "argv": sys.argv[1:] if argv is None else list(argv), "versions": versions(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "finished": False}
    rec = Recorder(out, meta)
    rec.write()

    def guard():  # the global time guard: write what there is and leave
        rec.write(finished=False, timed_out=True, wall_s=time.perf_counter() - t_start)
        print(f"time guard: {budget:.0f} s + 20 s reached, wrote {out}", flush=True)
        os._exit(0)

    timer = threading.Timer(budget + 20.0, guard)
    timer.daemon = True
    timer.start()
    try:
        devices = [torch.device("cpu")] + ([device] if device.type != "cpu" else [])
        for dev in devices:
            rec.run(f"throughput_{dev.type}", throughput, dev, size)
        for name, fn in (("mdns_ising16", mdns_ising16), ("naas_gmm40", naas_gmm40),
                         ("ais_heat_bath_ising16", ais_heat_bath_ising16)):
            if time.perf_counter() > deadline:
                rec.doc["sections"][name] = {"status": "skipped (time guard)"}
                continue
            rec.run(name, fn, device, size, deadline)
        if device.type == "cuda":
            rec.doc["meta"]["peak_gpu_memory_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    finally:
        timer.cancel()
        rec.write(finished=True, wall_s=time.perf_counter() - t_start)
    print(f"wrote {out}", flush=True)
    return rec.doc


if __name__ == "__main__":
    main()
