"""The one result type returned by every sampler and estimator."""

from __future__ import annotations

import json
import math
import os
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from . import free_energy as _fe
from ._utils import atomic_path, versions
from .errors import (BoltzkitError, FileAccessError, MissingFileError, ResultFileError, TargetError,
                     UnreliableEstimateWarning)
from .estimators.importance import (ESS_FRAC_LIMIT, PARETO_K_LIMIT, ess_kish_of_subset,
                                    log_z_from_log_weights, normalized_weights,
                                    self_normalized_expectation)
from .plot import plot_result

FORMAT_VERSION = 1


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else repr(v)  # 'nan', 'inf' survive the round trip
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return _jsonable(obj.item())
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, torch.device):
        return str(obj)
    return repr(obj)


def _unjson(obj):
    if isinstance(obj, dict):
        return {k: _unjson(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unjson(v) for v in obj]
    if obj in ("nan", "inf", "-inf"):
        return float(obj)
    return obj


_ZIP_MAGIC = b"PK\x03\x04"


@contextmanager
def _open_result_file(path: Path):
    """``np.load`` of ``path`` (no pickle), with every access failure named as a boltzkit error."""
    if path.is_dir():
        hint = ("; it is a sample_to() folder: read it with boltzkit.result.iter_shards(path)"
                if (path / "index.json").exists() else "")
        raise FileAccessError(f"{path} is a folder, not a result file{hint}")
    try:
        fh = open(path, "rb")
    except FileNotFoundError as exc:
        raise MissingFileError(f"no result file at {path}") from exc
    except OSError as exc:
        why = "permission denied" if isinstance(exc, PermissionError) else exc.strerror or exc
        raise FileAccessError(f"cannot read {path}: {why}") from exc
    with fh:
        head = fh.read(4)
        if not head:
            raise ResultFileError(f"{path} is empty (0 bytes): the save was interrupted or the copy failed")
        if head != _ZIP_MAGIC:
            raise ResultFileError(f"{path} is not an npz file (it starts with {head!r}, not a zip "
                                  "header); boltzkit results are written by Result.save")
        fh.seek(0)
        try:
            data = np.load(fh, allow_pickle=False)
        except (zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError) as exc:
            raise ResultFileError(f"{path} is truncated or corrupt (an npz whose zip directory "
                                  f"cannot be read: {exc}); save or copy it again") from exc
        with data:
            yield data


def _heavy_tail_probe(diagnostics: dict) -> "dict | None":
    """The scale probe's summary where it found a power-law tail (:mod:`boltzkit.probe`), else None."""
    probe = diagnostics.get("scale_probe")
    return probe if isinstance(probe, dict) and probe.get("heavy_tail") else None


@dataclass(frozen=True, kw_only=True)
class Result:
    """Samples, weights and a free-energy estimate from one run.

    Attributes
    ----------
    samples : Tensor (n, *event_shape), on CPU, in the target domain's physical representation.
    log_weights : float64 Tensor (n,) of unnormalized log importance weights, or None (MCMC).
    log_z, log_z_stderr : log normalizing constant and its standard error, or None; then
        ``diagnostics["log_z_unavailable"]`` says why.
    ess : effective sample size (Kish for weighted samples; n / tau_int for MCMC, with
        tau_int = 1 + 2 sum_t rho(t)).
    diagnostics : method-specific numbers (ess_frac, pareto_k, acceptance, tau_int, ...).
    history : training or chain curves, name -> 1-D array.
    """

    samples: torch.Tensor
    log_weights: "torch.Tensor | None" = None
    log_z: "float | None" = None
    log_z_stderr: "float | None" = None
    ess: float = float("nan")
    diagnostics: Mapping[str, Any] = field(default_factory=dict)
    history: Mapping[str, np.ndarray] = field(default_factory=dict)
    method: str = ""
    target: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    seed: "int | None" = None
    device: str = "cpu"
    versions: Mapping[str, str] = field(default_factory=versions)

    def __post_init__(self):
        if not isinstance(self.samples, torch.Tensor):
            object.__setattr__(self, "samples", torch.as_tensor(np.asarray(self.samples)))
        object.__setattr__(self, "samples", self.samples.detach().cpu())
        if self.log_weights is not None:
            lw = torch.as_tensor(self.log_weights).detach().to("cpu", torch.float64).reshape(-1)
            if lw.numel() != self.samples.shape[0]:
                raise TargetError(f"{lw.numel()} log-weights for {self.samples.shape[0]} samples")
            object.__setattr__(self, "log_weights", lw)
        if self.log_z is None and "log_z_unavailable" not in self.diagnostics:
            raise BoltzkitError("a Result without log_z must say why in diagnostics['log_z_unavailable']")
        object.__setattr__(self, "history", {k: np.asarray(v) for k, v in self.history.items()})

    # ------------------------------------------------------------------ derived
    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def free_energy(self) -> "float | None":
        """-log Z, in kT."""
        return None if self.log_z is None else -self.log_z

    @property
    def reliable(self) -> bool:
        return bool(self.diagnostics.get("reliable", True))

    def weights(self) -> np.ndarray:
        """Self-normalized weights (uniform for unweighted samples)."""
        if self.log_weights is None:
            return np.full(self.n_samples, 1.0 / self.n_samples)
        return normalized_weights(self.log_weights)

    def _inflation(self) -> float:
        """Variance inflation of unweighted correlated samples, n / ESS (= tau_int)."""
        if self.log_weights is None and math.isfinite(self.ess) and self.ess > 0:
            return max(self.n_samples / self.ess, 1.0)
        return 1.0

    def resample(self, n: int, *, seed: "int | None" = None) -> torch.Tensor:
        """Multinomial resampling by weight: n (approximately) unweighted samples of the target."""
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        idx = torch.multinomial(torch.as_tensor(self.weights()), int(n), replacement=True, generator=gen)
        return self.samples[idx]

    def expectation(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "tuple[float, float]":
        """E_target[fn(x)] and its Monte-Carlo standard error.

        Weighted samples use self-normalized importance sampling (delta-method error; at least
        the delete-one-island jackknife's for an island SMC result); MCMC samples use
        sd / sqrt(ESS).
        """
        vals = torch.as_tensor(fn(self.samples)).detach().to("cpu", torch.float64).reshape(-1)
        if vals.numel() != self.n_samples:
            raise TargetError(f"fn returned {vals.numel()} values for {self.n_samples} samples; "
                              "it must return one value per sample")
        v = vals.numpy()
        if self.log_weights is None:
            return float(v.mean()), float(v.std(ddof=1) / math.sqrt(max(self.ess, 1.0)))
        mean, se = self_normalized_expectation(vals, self.log_weights)
        return mean, self._island_jackknife(se, self.weights(), lambda wi: float(np.sum(wi * v)))

    MIN_STATE_ESS = 10.0

    def _masks(self, what: str, **regions) -> "tuple[np.ndarray, list[np.ndarray]]":
        """The normalized weights and float 0/1 arrays ``(n,)`` of the named regions (masks or
        callables on the samples); raises when a region holds no weight and warns when it
        rests on fewer than ``MIN_STATE_ESS`` effective samples."""
        out = []
        for nm, r in regions.items():
            m = torch.as_tensor(r(self.samples) if callable(r) else r).reshape(-1).double().numpy()
            if m.size != self.n_samples:
                raise TargetError(f"{nm} selects from {m.size} entries but there are {self.n_samples} samples")
            out.append(m)
        w = self.weights()
        for nm, m in zip(regions, out):
            if float(np.sum(w * m)) == 0:
                raise TargetError(f"no sample falls in {nm}: the {what} is not estimable; draw "
                                  "more samples or widen the state definition")
        if self.log_weights is not None:  # few effective samples in a state: the error bar lies
            few = {nm: ess_kish_of_subset(w, m) for nm, m in zip(regions, out)}
            few = {nm: e for nm, e in few.items() if e < self.MIN_STATE_ESS}
            if few:
                warnings.warn(f"the {what} rests on few effective samples ("
                              + ", ".join(f"{nm}: {e:.1f}" for nm, e in few.items())
                              + f" < {self.MIN_STATE_ESS:g}); its error bar understates the error",
                              UnreliableEstimateWarning, stacklevel=3)
        return w, out

    def free_energy_difference(self, in_a, in_b) -> "tuple[float, float]":
        """Delta F = F_b - F_a = -log(P(B) / P(A)) in kT, with its standard error.

        ``in_a`` and ``in_b`` are boolean masks (n,) or callables mapping samples to masks.
        With importance weights, a state whose effective number of samples (Kish, over the
        samples in it) is below ``MIN_STATE_ESS`` raises an ``UnreliableEstimateWarning``. For an
        island SMC result the error is at least the delete-one-island jackknife's (resampled copies
        of one particle are not independent samples).
        """
        w, (a, b) = self._masks("free-energy difference", in_a=in_a, in_b=in_b)
        pa, pb = float(np.sum(w * a)), float(np.sum(w * b))
        g = b / pb - a / pa
        se = math.sqrt(float(np.sum(w * w * g * g)) * self._inflation())
        return -math.log(pb / pa), self._island_jackknife(
            se, w, lambda wi: -math.log(float(np.sum(wi * b)) / float(np.sum(wi * a))))

    def _island_jackknife(self, se: float, w: np.ndarray, stat: Callable[[np.ndarray], float]) -> float:
        """``se``, raised to the delete-one-island jackknife error of ``stat(normalized weights)``
        for an island SMC result (``diagnostics["n_islands"]`` contiguous, independent blocks of samples).

        Resampling duplicates particles, so the weights' delta-method error counts copies of one
        lineage as independent samples; the islands are independent, and their jackknife sees
        how many lineages really carry a state (infinite when one island carries all of it)."""
        M = self.diagnostics.get("n_islands") if self.log_weights is not None else None
        if not isinstance(M, int) or M < 2 or w.size % M:
            return se
        island = np.arange(w.size) // (w.size // M)
        vals = []
        for i in range(M):
            wi = np.where(island == i, 0.0, w)
            try:
                v = stat(wi / wi.sum()) if wi.sum() > 0 else float("nan")
            except (ZeroDivisionError, ValueError):  # a state empty without island i
                v = float("nan")
            if not math.isfinite(v):
                return max(se, float("inf"))
            vals.append(v)
        vals = np.asarray(vals)
        return max(se, float(math.sqrt((M - 1) / M * np.sum((vals - vals.mean()) ** 2))))

    def log_z_of(self, region) -> "tuple[float, float]":
        """``(log Z_A, stderr)``: the log normalizer of the target restricted to a region,
        ``log Z + log P(A)``, with ``region`` a boolean mask (n,) or a callable on the samples.

        The error bar adds the one of ``log Z`` and the delta-method one of ``log P(A)`` (at least
        the island jackknife's for an island SMC result) in quadrature (with importance weights both come from the same weights, so it is
        conservative when A holds most of the mass). Warns like
        :meth:`free_energy_difference` when A rests on few effective samples.
        """
        if self.log_z is None:
            raise TargetError(f"this result has no log Z ({self.diagnostics.get('log_z_unavailable')}); "
                              "use a method that estimates one")
        w, (a,) = self._masks("restricted log Z", region=region)
        pa = float(np.sum(w * a))
        se_p = math.sqrt(float(np.sum(w * w * (a / pa - 1.0) ** 2)) * self._inflation())
        se_p = self._island_jackknife(se_p, w, lambda wi: math.log(float(np.sum(wi * a))))
        return self.log_z + math.log(pa), math.hypot(self.log_z_stderr or 0.0, se_p)

    def free_energy_profile(self, cv, bins=50, *, range=None, n_bootstrap: int = 200,
                            seed: int = 0):
        """Free-energy profile ``F(s) = -log p(s)`` (kT) along a collective variable.

        ``cv`` is a :class:`boltzkit.cv.CollectiveVariable` (``bk.cv.phi_psi()``,
        ``bk.cv.magnetization()``, ``bk.cv.coordinate(0)``, ...), a spec string (``"phi,psi"``)
        or a callable ``x -> (n,)`` / ``(n, m)``. Importance weights are respected; error bars
        come from a bootstrap over samples (in blocks of ``n / ESS`` for MCMC samples). The
        lowest bin is the reference (F = 0 there, see ``profile.reference``). Returns a
        :class:`boltzkit.free_energy.FreeEnergyProfile` (``.plot()``, ``.table()``, ``.to_csv()``).
        """
        return _fe.profile_of_result(self, cv, bins, range=range, n_bootstrap=n_bootstrap, seed=seed)

    @property
    def log_z_path(self):
        """Per-level ``(beta or lambda, log Z, stderr)`` of an annealing (AIS/SMC) run, as a
        :class:`boltzkit.free_energy.LogZPath` (``beta`` for lattice runs, where level lambda is
        the target at ``lambda beta``). Raises when the run recorded no path."""
        return _fe.log_z_path_of(self)

    def level_mbar(self, **kw):
        """MBAR over the levels of an AIS/SMC run made with ``keep_levels`` (all levels pooled;
        :func:`boltzkit.free_energy.level_mbar`, options ``stride``, ``target``)."""
        return _fe.level_mbar(self, **kw)

    def thermo_curves(self, *, window: "int | None" = None):
        """Energy and heat capacity per site over beta, ``U(beta)/N`` and ``C(beta)/N`` with
        error bars, from the log Z path of a lattice annealing run
        (:func:`boltzkit.free_energy.thermo_curves_from_path`)."""
        return _fe.thermo_curves_of(self, window=window)

    # ------------------------------------------------------------------ text
    def trust(self) -> "tuple[bool, str, str | None]":
        """``(trusted, verdict, next_step)``: whether this result can be trusted, one line saying
        why (reliable flag, ESS, Pareto k, agreement with the exact log Z, chain convergence,
        modes or basins covered where the method reports them), and when it cannot, the next
        step for the method that produced it (None when trusted)."""
        d, why, facts = self.diagnostics, [], []
        n = max(self.n_samples, 1)
        if math.isfinite(self.ess):
            pct = 100 * self.ess / n
            facts.append(f"ESS {self.ess:.0f} of {self.n_samples} ({pct:.0f} %)" if pct >= 10
                         else f"ESS {self.ess:.0f} of {self.n_samples} ({pct:.2g} %)")
        k = d.get("pareto_k")
        if isinstance(k, (int, float)) and math.isfinite(k):
            facts.append(f"Pareto k {k:.2f}")
        if self.log_weights is not None and not self.reliable:  # the method's reason, where it gives one
            why.append(d.get("unreliable_because") or f"degenerate weights (needs ESS >= "
                       f"{100 * ESS_FRAC_LIMIT:g} % of n and Pareto k <= {PARETO_K_LIMIT:g})")
        elif self.log_weights is None and d.get("reliable") is False:
            why.append("flagged unreliable by the method")
        probe = _heavy_tail_probe(d)
        if probe:
            why.append(f"heavy tails (the energy rises by {probe.get('tail_growth', float('nan')):.3g} kT from 10 to "
                       "100 frame widths: a power law; the reference misses tail mass)")
        if self.log_weights is None and d.get("tau_converged") is False:
            why.append("the chains' autocorrelation time has not converged")
        for key in ("modes_covered", "basins_covered"):
            if d.get(key) is not None:
                facts.append(f"{key.split('_')[0]} covered {d[key]}")
        exact = d.get("exact_log_z")
        if exact is not None and self.log_z is not None and self.log_z_stderr is not None:
            err = self.log_z - float(exact)
            z = abs(err) / self.log_z_stderr if self.log_z_stderr > 0 else math.inf
            zs = f"{z:.1f}" if z < 1e4 else f"{z:.2g}"
            facts.append(f"log Z {err:+.2g} from exact ({zs} se)" if math.isfinite(z)
                         else f"log Z {err:+.2g} from exact (error bar 0)")
            if z > 4.0 and abs(err) > 1e-8:
                why.append(f"log Z is {zs} standard errors from the exact value" if math.isfinite(z)
                           else f"log Z is {err:+.2g} from the exact value with an error bar of 0")
        trusted = not why
        verdict = ("trusted: " if trusted else "NOT trusted: " + "; ".join(why) + ". ") + ", ".join(facts)
        return trusted, verdict.strip().rstrip(":"), None if trusted else self.next_step()

    def next_step(self) -> str:
        """What to do when this result cannot be trusted, for the method that produced it: read
        from the method's own options (training steps, annealing levels, MCMC moves per level,
        SMC resampling, chain length), never from its name."""
        from ._registry import registry

        spec = registry().get(self.method)
        cls = spec.cls if spec is not None else None
        cfg, d = dict(self.config), self.diagnostics
        if _heavy_tail_probe(d):  # no budget fixes a missed tail
            from .probe import HEAVY_TAIL_NEXT

            return "next: " + HEAVY_TAIL_NEXT
        tips = []
        steps = d.get("train_steps", cfg.get("n_steps"))
        if cls is not None and hasattr(cls, "train_step"):  # a neural sampler: its training budget
            tips.append(f"train longer (n_steps={2 * int(steps)})" if isinstance(steps, int) and steps > 0
                        else "train longer (raise n_steps)")
        elif self.log_weights is not None:  # annealing / importance sampling without training
            if isinstance(cfg.get("n_steps"), int):
                tips.append(f"more annealing levels (n_steps={2 * cfg['n_steps']})")
            elif isinstance(cfg.get("min_levels"), int):  # adaptive ladder
                tips.append(f"a finer ladder (min_levels={2 * cfg['min_levels']}, cess=0.99)")
            if "n_mcmc" in cfg:
                tips.append(f"more moves per level (n_mcmc={2 * int(cfg['n_mcmc'] or 1)})")
            if "resample_ess" in cfg and d.get("n_islands") is None and self.samples.is_floating_point():
                tips.append("SMC resampling (resample_ess=0.5)")
        else:  # MCMC: longer chains
            tips.append("longer chains (more n_samples, or a larger burn-in n_steps)")
        tips.append("a larger budget (bk.sample(..., budget=seconds))")
        tips.append("or another method (bk.explain(target) lists them with their estimates)")
        return "next: " + ", ".join(tips)

    def summary(self) -> str:
        trusted, verdict, step = self.trust()
        lines = [verdict] + ([f"  {step}"] if step else [])
        lines.append(f"boltzkit Result: method={self.method!r}, target={self.target.get('name', '?')}, "
                     f"n_samples={self.n_samples}, device={self.device}, seed={self.seed}")
        lines.append(f"  log Z = {self.log_z:.6f} +- {self.log_z_stderr:.2g}" if self.log_z is not None
                     else f"  log Z unavailable: {self.diagnostics.get('log_z_unavailable')}")
        exact = self.diagnostics.get("exact_log_z")
        if exact is not None:
            lines.append(f"  exact log Z = {exact:.6f}  (error {self.log_z - exact:+.2e})"
                         if self.log_z is not None else f"  exact log Z = {exact:.6f}")
        lines.append(f"  ESS = {self.ess:.1f} ({self.ess / self.n_samples:.3f} of n)")
        keys = [k for k in self.diagnostics if k not in ("exact_log_z", "log_z_unavailable")]
        for k in keys:
            v = self.diagnostics[k]
            if isinstance(v, (list, tuple)) and len(v) > 6:  # per-sample lists: abbreviate
                v = f"[{len(v)} values: {', '.join(map(str, v[:3]))}, ...]"
            lines.append(f"  {k} = {v:.4g}" if isinstance(v, float) else f"  {k} = {v}")
        return "\n".join(lines)

    def __repr__(self):
        lz = "None" if self.log_z is None else f"{self.log_z:.5f}+-{self.log_z_stderr:.2g}"
        return (f"Result(method={self.method!r}, n_samples={self.n_samples}, log_z={lz}, "
                f"ess={self.ess:.1f})")

    # ------------------------------------------------------------------ persistence
    def save(self, path: "str | os.PathLike") -> Path:
        """Write one ``.npz`` file (arrays + a JSON header). Atomic; no pickle."""
        path = Path(path)
        if path.suffix != ".npz":  # "run" -> "run.npz", "run.v2" -> "run.v2.npz"
            path = path.with_suffix(path.suffix + ".npz")
        meta = {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)
                if f.name not in ("samples", "log_weights", "history")}
        meta["format_version"] = FORMAT_VERSION
        meta["history_keys"] = list(self.history)
        arrays = {"samples": self.samples.numpy(), "__meta__": np.array(json.dumps(meta))}
        if self.log_weights is not None:
            arrays["log_weights"] = self.log_weights.numpy()
        for i, (k, v) in enumerate(self.history.items()):
            arrays[f"history_{i}"] = np.asarray(v)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: "str | os.PathLike") -> "Result":
        """Read a file written by :meth:`save` (never unpickles).

        Every failure is a :class:`~boltzkit.errors.BoltzkitError` naming the file and the
        problem: :class:`~boltzkit.errors.MissingFileError` / ``FileAccessError`` (no such file,
        a folder, not readable) or :class:`~boltzkit.errors.ResultFileError` (empty, truncated,
        not an npz, object arrays or other unsupported content, a newer format version).
        """
        path = Path(path)
        with _open_result_file(path) as data:
            try:
                return cls._from_npz(data, path)
            except (ResultFileError, FileAccessError):
                raise
            except BoltzkitError as exc:
                raise ResultFileError(f"{path} holds an invalid result: {exc}") from exc
            except ValueError as exc:
                if "pickle" in str(exc):
                    raise ResultFileError(
                        f"{path} holds object arrays (pickled Python objects); boltzkit never "
                        "unpickles, since loading pickles can run arbitrary code. Only files "
                        "written by Result.save can be read") from exc
                raise ResultFileError(f"{path} is not a readable boltzkit result: {exc}") from exc
            except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
                raise ResultFileError(f"{path} is truncated or corrupt ({exc}); "
                                      "save or copy it again") from exc
            except (KeyError, TypeError, AttributeError) as exc:
                raise ResultFileError(f"{path} is not a readable boltzkit result "
                                      f"(unexpected content: {exc!r})") from exc

    @classmethod
    def _from_npz(cls, data, path: Path) -> "Result":
        if "__meta__" not in data.files or "samples" not in data.files:
            raise ResultFileError(f"{path} is an npz file but not a boltzkit result "
                                  f"(entries {sorted(data.files)[:6]}; a result has __meta__ and samples)")
        meta = _unjson(json.loads(str(data["__meta__"])))
        if not isinstance(meta, dict):
            raise ResultFileError(f"{path} has a malformed header (not a JSON object)")
        version = meta.get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ResultFileError(f"{path} uses result format version {version!r}, newer than this "
                                  f"boltzkit reads ({FORMAT_VERSION}); upgrade boltzkit to read it")
        samples = torch.from_numpy(data["samples"].copy())
        lw = torch.from_numpy(data["log_weights"].copy()) if "log_weights" in data.files else None
        history = {k: data[f"history_{i}"].copy() for i, k in enumerate(meta.get("history_keys", []))}
        kw = {f.name: meta[f.name] for f in fields(cls) if f.name in meta}
        return cls(samples=samples, log_weights=lw, history=history, **kw)

    def to_anndata(self, **kw):
        """AnnData view of a dataset-model result (spatial or single-cell); needs boltzkit[bio]."""
        from .adapters import anndata_writer  # by diagnostics["anndata_kind"], set by the method

        return anndata_writer(self.diagnostics.get("anndata_kind"))(self, **kw)

    # ------------------------------------------------------------------ plots
    def plot(self, path: "str | os.PathLike | None" = None, *, target=None):
        """Standard figure: sample histogram, log-weight histogram, training curves."""
        return plot_result(self, path=path, target=target)


def result_from_log_weights(samples, log_weights, *, log_z0: float = 0.0, exact_log_z=None,
                            warn: bool = True, **kw) -> Result:
    """Build a :class:`Result` from weighted samples with the shared IS estimator."""
    est = log_z_from_log_weights(log_weights, log_z0=log_z0, warn=False)
    diag = {**est.diagnostics(), **kw.pop("diagnostics", {})}
    if exact_log_z is not None:
        diag["exact_log_z"] = float(exact_log_z)
    res = Result(samples=samples, log_weights=log_weights, log_z=est.log_z,
                 log_z_stderr=est.stderr, ess=est.ess, diagnostics=diag, **kw)
    if warn and not est.reliable:  # the advice fits the method that produced the weights
        warnings.warn(f"{res.method or 'importance sampling'}: importance weights are degenerate (ESS "
                      f"{est.ess:.1f} of {est.n}, Pareto k {est.pareto_k:.2f}); the log Z error bar "
                      f"{est.stderr:.3g} is not reliable; {res.next_step()}", UnreliableEstimateWarning,
                      stacklevel=2)
    return res


def iter_shards(path):
    """Yield ``(samples, log_weights or None)`` numpy chunks of a folder written by
    :meth:`boltzkit.samplers.base.Sampler.sample_to`, one shard at a time (no pickle).

    A missing, unreadable or unfinished folder, or a damaged shard, raises a boltzkit error
    naming the folder or the shard file."""
    folder = Path(path)
    index_file = folder / "index.json"
    try:
        text = index_file.read_text()
    except FileNotFoundError as exc:
        what = " (the folder does not exist)" if not folder.exists() else ""
        raise MissingFileError(f"{folder} has no index.json: it is not a finished sample_to() "
                               f"folder{what}") from exc
    except OSError as exc:
        why = "permission denied" if isinstance(exc, PermissionError) else exc.strerror or exc
        raise FileAccessError(f"cannot read {index_file}: {why}") from exc
    try:
        index = json.loads(text)
        shards = [folder / s["file"] for s in index["shards"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ResultFileError(f"{index_file} is not a valid sample_to() index ({exc!r})") from exc
    for shard in shards:
        with _open_result_file(shard) as data:
            try:
                yield data["samples"], (data["log_weights"] if "log_weights" in data.files else None)
            except KeyError as exc:
                raise ResultFileError(f"shard {shard} has no samples entry") from exc
            except ValueError as exc:
                raise ResultFileError(f"shard {shard} holds object arrays, which boltzkit never "
                                      "unpickles") from exc
            except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
                raise ResultFileError(f"shard {shard} is truncated or corrupt ({exc})") from exc
