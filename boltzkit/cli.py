"""Command line: ``boltzkit sample|info|explain|methods|demo``.

``torchrun --nproc_per_node=N -m boltzkit sample ...`` takes the same arguments: the sampler
trains data-parallel on N processes and rank 0 prints the pooled result and writes ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import warnings
from pathlib import Path

from . import distributed as dist
from . import energies, explain, methods, sample, select
from .cv import from_spec
from .energies import exact as ex
from .errors import BoltzkitError, ConfigError, UnreliableEstimateWarning
from .free_energy import write_csv
from .result import Result


def _targets():
    return {  # energies' molecular targets load on first use
        "alanine": lambda a: energies.AlanineDipeptide(a.solvent, coordinates=a.coordinates),
        "ising": lambda a: energies.Ising(L=a.L, beta=a.beta if a.beta is not None else energies.BETA_C_ISING,
                                          J=a.J, h=a.h),
        "potts": lambda a: energies.Potts(L=a.L, q=a.q, beta=a.beta, J=a.J),
        "gmm40": lambda a: energies.GaussianMixture.gmm40(),
        "manywell": lambda a: energies.ManyWell(a.dim),
        "smiles": _smiles_target,
    }


def _smiles_target(a):
    if not a.smiles:
        raise ConfigError("the smiles target needs a molecule: --smiles CCCC (butane), for example")
    return energies.from_smiles(a.smiles, temperature=a.temperature)


def _parse_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(v.lower(), v)


def _options(pairs) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ConfigError(f"--option takes KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def _add_target_args(p):
    p.add_argument("target", choices=sorted(_targets()), help="built-in target")
    p.add_argument("--L", type=int, default=16, help="lattice side (ising, potts)")
    p.add_argument("--beta", type=float, default=None, help="inverse temperature (default: critical)")
    p.add_argument("--J", type=float, default=1.0, help="coupling")
    p.add_argument("--h", type=float, default=0.0, help="field (ising)")
    p.add_argument("--q", type=int, default=3, help="number of Potts states")
    p.add_argument("--dim", type=int, default=32, help="dimension (manywell)")
    p.add_argument("--solvent", choices=("vacuum", "implicit"), default="vacuum", help="alanine")
    p.add_argument("--coordinates", choices=("internal", "cartesian"), default="internal",
                   help="where alanine is sampled (states are returned in Cartesian nm)")
    p.add_argument("--smiles", default=None,
                   help="molecule of the smiles target (its rotatable torsions, MMFF94; log Z of the torus)")
    p.add_argument("--temperature", type=float, default=300.0, help="kelvin (smiles)")


def _with_exact(res, target):
    """``res`` with the target's exact log Z in its diagnostics (so the summary and the plot
    show it and judge the result by it), where the target has one that is cheap."""
    try:
        exact = target.exact_log_z()
    except Exception:  # an exact value is a bonus, never a failure
        return res
    if exact is None or res.log_z is None or "exact_log_z" in res.diagnostics:
        return res
    return dataclasses.replace(res, diagnostics={**res.diagnostics, "exact_log_z": float(exact)})


def cmd_sample(a) -> int:
    """``bk.sample`` on a built-in target: the one sampling path (sampling views included, e.g.
    alanine in internal coordinates). Under torchrun the sampler trains data-parallel and the
    sample is pooled across the ranks inside ``bk.sample``; rank 0 prints and writes."""
    target = _targets()[a.target](a)
    t0 = time.perf_counter()
    dist.init()  # no-op without torchrun
    res = sample(target, a.method, n_samples=a.n_samples, n_steps=a.n_steps, seed=a.seed,
                 device=a.device, progress=not a.quiet, checkpoint=a.checkpoint, **_options(a.option))
    if not dist.is_main():  # rank 0 alone prints and writes
        return 0
    res = _with_exact(res, target)
    print(res.summary())  # with the exact log Z and the error in standard errors, where known
    print(f"  wall time {time.perf_counter() - t0:.1f} s")
    if a.out:
        print(f"saved {res.save(a.out)}")
    if a.plot:
        res.plot(a.plot)
        print(f"wrote {a.plot}")
    return 0


def cmd_info(a) -> int:
    res = Result.load(a.path)
    print(res.summary())
    print(f"  samples: shape {tuple(res.samples.shape)}, dtype {res.samples.dtype}")
    if res.config:
        print(f"  config: {json.dumps(res.config)}")
    if res.history:
        print(f"  history: {', '.join(f'{k} ({len(v)})' for k, v in res.history.items())}")
    return 0


def cmd_explain(a) -> int:
    print(explain(_targets()[a.target](a)))
    return 0


def cmd_methods(a) -> int:
    print(methods())
    return 0


def cmd_demo(a) -> int:
    """Default target end to end: sample, estimate log Z, compare with the exact value, plot."""
    L = 4 if a.quick else 6
    target = energies.Ising(L=L, beta=energies.BETA_C_ISING)
    choice = select(target)
    print(f"boltzkit demo: {target.name} (periodic {L}x{L} Ising at the critical coupling)")
    print(f"method: {choice.name} -- {choice.reason}")
    t0 = time.perf_counter()
    steps = {"n_steps": 300} if a.quick and choice.name not in ("swendsen_wang", "wolff") else {}
    res = sample(target, choice.name, n_samples=a.n_samples, seed=a.seed, progress=not a.quiet, **steps)
    res_z = res
    if res.log_z is None:  # an MCMC default gives samples only: add an AIS estimate of log Z
        print(f"{choice.name} gives samples without log Z; estimating log Z with AIS")
        res_z = sample(target, "ais", n_samples=512, n_steps=100 if a.quick else 400, seed=a.seed,
                       progress=not a.quiet)
    exact = target.exact_log_z()
    err = res_z.log_z - exact
    res = _with_exact(res, target)
    print(res.summary())
    print(f"\nlog Z estimate = {res_z.log_z:.5f} +- {res_z.log_z_stderr:.2g} ({res_z.method})")
    print(f"log Z exact    = {exact:.5f}  (Kaufman's closed form)")
    print(f"error          = {err:+.2e}  ({abs(err) / max(res_z.log_z_stderr, 1e-300):.1f} standard errors)")
    print(f"wall time      = {time.perf_counter() - t0:.1f} s")
    if a.out:
        res.save(f"{a.out}.npz")
        res.plot(f"{a.out}.png")
        print(f"wrote {a.out}.npz and {a.out}.png")
    ok = math.isfinite(err) and abs(err) <= 5 * res_z.log_z_stderr + 0.05
    if not ok:
        print("demo: the estimate disagrees with the exact value", file=sys.stderr)
    return 0 if ok else 1


# ============================================================================ free energies
CURVE_MARGIN = 1.1  # `boltzkit curve` anneals to 1.1 HI and reports LO..HI


def _beta_range(text: str) -> "tuple[float, float]":
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise ConfigError(f"--beta takes LO:HI (e.g. 0.2:0.6), got {text!r}") from None
    if not (0.0 <= lo < hi):
        raise ConfigError(f"--beta LO:HI needs 0 <= LO < HI, got {text!r}")
    return lo, hi


def cmd_profile(a) -> int:
    """Free-energy profile of a saved Result along a collective variable: figure + table."""
    res = Result.load(a.path)
    prof = res.free_energy_profile(from_spec(a.cv), a.bins, n_bootstrap=a.n_bootstrap, seed=a.seed)
    out = a.out or str(Path(a.path).with_suffix("")) + "_profile_" + a.cv.replace(",", "_")
    prof.plot(f"{out}.png", max_kT=a.max_kt)
    getattr(prof, f"to_{a.format}")(f"{out}.{a.format}")
    print(prof)
    print(f"  reference: {prof.reference}")
    print(f"wrote {out}.png and {out}.{a.format}")
    return 0


def cmd_curve(a) -> int:
    """U(beta) and C(beta) of a lattice from one annealing run, with the exact finite-lattice
    curves where they are tractable: figure + table."""
    lo, hi = _beta_range(a.beta)
    top = CURVE_MARGIN * hi  # the local fits are one-sided (and dropped) near the last level
    target = (energies.Ising(L=a.L, beta=top, J=a.J) if a.target == "ising"
              else energies.Potts(L=a.L, q=a.q, beta=top, J=a.J))
    # SMC: a fine adaptive ladder (conditional ESS a.cess between levels); AIS: a.n_steps
    # evenly spaced levels. Either records log Z at every level (Result.log_z_path).
    opts = {"cess": a.cess} if a.method == "smc" else {"schedule": "linear", "n_steps": a.n_steps}
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # the final-level weights are not what the curves use
        warnings.simplefilter("ignore", UnreliableEstimateWarning)
        res = sample(target, a.method, n_samples=a.n_samples, seed=a.seed, progress=not a.quiet, **opts)
    cur = res.thermo_curves(window=a.window)
    keep = (cur.beta >= lo) & (cur.beta <= hi)
    if not keep.any():
        raise ConfigError(f"no annealing level falls in beta {lo}:{hi}; widen the range or add levels")
    cur = dataclasses.replace(cur, **{f: getattr(cur, f)[keep] for f in
                                      ("beta", "energy", "energy_stderr", "heat_capacity",
                                       "heat_capacity_stderr")})
    try:
        exact = (ex.ising_curve(a.L, cur.beta, a.J) if a.target == "ising"
                 else ex.potts_curve(a.L, a.q, cur.beta, a.J))
    except BoltzkitError:
        exact = None
    out = a.out or f"curve_{a.target}_L{a.L}"
    cur.plot(f"{out}.png", exact=exact, label=f"{res.method} path ({len(res.log_z_path) - 1} levels)")
    rows = cur.table()
    if exact is not None:
        for r, e, c in zip(rows, exact.energy, exact.heat_capacity):
            r.update(exact_energy_per_site=float(e), exact_heat_capacity_per_site=float(c))
    doc = {"target": target.to_config(), "method": res.method, "n_samples": a.n_samples,
           "estimator": cur.method, "units": "per site; energy in J, heat capacity in k_B",
           "deviation": cur.deviation(exact) if exact is not None else None, "table": rows}
    if a.format == "json":
        with open(f"{out}.json", "w") as fh:
            json.dump(doc, fh, indent=1)
    else:
        write_csv(f"{out}.csv", f"{target.name}, {res.method}; {cur.method}; {doc['units']}", rows)
    print(cur)
    if exact is not None:
        d = doc["deviation"]
        print(f"  vs exact: U max {d['energy_max_z']:.2f} stderr (rms {d['energy_rms_z']:.2f}), "
              f"C max {d['heat_capacity_max_z']:.2f} stderr (rms {d['heat_capacity_rms_z']:.2f})")
    print(f"  wall time {time.perf_counter() - t0:.1f} s; wrote {out}.png and {out}.{a.format}")
    return 0


def _add_free_energy_commands(sub) -> None:
    pr = sub.add_parser("profile", help="free-energy profile F(s) of a saved result along a CV")
    pr.add_argument("path", help="a Result saved with --out / Result.save (.npz)")
    pr.add_argument("--cv", default="phi,psi", help="phi,psi | phi | psi | m | |m| | potts_m:Q | x0, x1, ...")
    pr.add_argument("--bins", type=int, default=60, help="bins per CV dimension")
    pr.add_argument("--n-bootstrap", type=int, default=200)
    pr.add_argument("--max-kt", type=float, default=None, help="colour / axis ceiling in kT")
    pr.set_defaults(func=cmd_profile)

    cu = sub.add_parser("curve", help="U(beta), C(beta) of a lattice from one annealing run vs exact")
    cu.add_argument("target", choices=("ising", "potts"))
    cu.add_argument("--L", type=int, default=8)
    cu.add_argument("--q", type=int, default=3, help="Potts states")
    cu.add_argument("--J", type=float, default=1.0)
    cu.add_argument("--beta", default="0.2:0.6", help="LO:HI; the run anneals from 0 to 1.1 HI")
    cu.add_argument("--method", choices=("smc", "ais"), default="smc",
                    help="annealing run that records the log Z path")
    cu.add_argument("--n-samples", type=int, default=1024)
    cu.add_argument("--cess", type=float, default=0.999, help="smc: conditional ESS kept between levels")
    cu.add_argument("--n-steps", type=int, default=1000, help="ais: number of (evenly spaced) levels")
    cu.add_argument("--window", type=int, default=None, help="half-width (levels) of the local fits")
    cu.add_argument("--quiet", action="store_true")
    cu.set_defaults(func=cmd_curve)
    for p in (pr, cu):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--format", choices=("csv", "json"), default="csv")
        p.add_argument("--out", default=None, help="prefix of the .png and table written")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="boltzkit", description="Neural samplers and free-energy estimation")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("sample", help="sample a built-in target and estimate log Z")
    _add_target_args(s)
    s.add_argument("--method", default=None,
                   help="sampler name (default: chosen for the target; 'boltzkit methods' lists them, "
                        "'boltzkit explain TARGET' says which is chosen and why)")
    s.add_argument("--n-samples", type=int, default=10_000, help="number of samples returned (default 10000)")
    s.add_argument("--n-steps", type=int, default=None,
                   help="training steps (neural samplers), annealing levels (ais) or burn-in sweeps "
                        "(MCMC); default: the method's own")
    s.add_argument("--seed", type=int, default=None,
                   help="integer seed: the same seed gives the same result (default: fresh, recorded)")
    s.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu' or 'cuda'")
    s.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="training checkpoint of a neural sampler, resumed if it exists")
    s.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a method option, e.g. --option batch_size=512 (repeatable; unknown names "
                        "are an error that lists the valid ones)")
    s.add_argument("--out", default=None, metavar="PATH", help="save the Result (.npz; read it with 'boltzkit info')")
    s.add_argument("--plot", default=None, metavar="PATH", help="write the standard figure (.png)")
    s.add_argument("--quiet", action="store_true",
                   help="no progress reports (by default a bar on a terminal, log lines otherwise)")
    s.set_defaults(func=cmd_sample)

    i = sub.add_parser("info", help="summarise a saved result")
    i.add_argument("path", help="a .npz file written by 'boltzkit sample --out' or Result.save")
    i.set_defaults(func=cmd_info)

    e = sub.add_parser("explain", help="which method would be chosen for a target, and why")
    _add_target_args(e)
    e.set_defaults(func=cmd_explain)

    m = sub.add_parser("methods", help="list the registered methods")
    m.set_defaults(func=cmd_methods)

    d = sub.add_parser("demo", help="run the default target end to end and compare with the exact log Z")
    d.add_argument("--quick", action="store_true", help="smaller lattice and budget (seconds)")
    d.add_argument("--n-samples", type=int, default=4096, help="number of samples (default 4096)")
    d.add_argument("--seed", type=int, default=0, help="integer seed (default 0)")
    d.add_argument("--out", default="boltzkit_demo", help="prefix of the .npz and .png written")
    d.add_argument("--quiet", action="store_true", help="no progress reports")
    d.set_defaults(func=cmd_demo)
    _add_free_energy_commands(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BoltzkitError, OSError) as exc:  # one line, never a traceback
        text = " ".join(str(exc).split())
        print(f"boltzkit: error: {text}", file=sys.stderr)
        return 2
    finally:
        dist.shutdown()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
