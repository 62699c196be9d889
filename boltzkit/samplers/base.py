"""Sampler base classes.

``Sampler``: configuration (a frozen dataclass per method, validated, unknown names listed),
device and seed handling, ``fit`` then ``sample``.

``TrainableSampler``: the shared training loop of neural samplers -- progress bar, history,
divergence check, atomic checkpoints and resume-to-total-steps, and data-parallel training
under ``torchrun`` with no change to the sampler (:mod:`boltzkit.distributed`); what a subclass
implements is listed on the class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .. import distributed as dist
from .._utils import (atomic_path, check_choice, check_count, check_flag, check_fraction,  # noqa: F401
                      check_number, progress_bar, rank_generators, resolve_device, resolve_seed)
from ..domains import Categorical, Reals
from ..energies.base import framed, validate_target
from .._finite import at_step
from ..errors import ConfigError, IncompatibleMethodError, NonFiniteEnergyError, TrainingDivergedError, UnreliableEstimateWarning


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """Options shared by every sampler (subclasses add their own)."""

    def __post_init__(self):
        pass


class Sampler:
    name: ClassVar[str] = "sampler"
    Config: ClassVar[type] = SamplerConfig
    needs_grad: ClassVar[bool] = False
    streams: ClassVar[tuple] = ("init", "train", "sample")

    def __init__(self, config: "Any | None" = None, /, *, device="auto", seed: "int | None" = None,
                 progress: "bool | None" = None, **options):
        self.config = self.make_config(config, **options)
        dist.init()  # under torchrun: join the process group (no-op on one process)
        self.device = dist.device_for_rank(resolve_device(device))
        self.seed = resolve_seed(seed)
        if seed is None and dist.is_distributed():  # every rank must use rank 0's fresh seed
            self.seed = dist.broadcast_int(self.seed)
        self.progress = progress if dist.is_main() else False
        self.target = None
        self.gens = rank_generators(self.seed, self.streams, self.device, rank=dist.rank())

    option_aliases: ClassVar[dict] = {}  # old option name -> its name now (both accepted)

    @classmethod
    def make_config(cls, config=None, **options):
        for old, new in cls.option_aliases.items():
            if old in options:
                if new in options:
                    raise ConfigError(f"give {new!r} or its old name {old!r}, not both")
                options[new] = options.pop(old)
        valid = [f.name for f in dataclasses.fields(cls.Config)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} for {cls.name!r}; valid options: "
                              f"{', '.join(valid) or 'none'}")
        base = config if config is not None else cls.Config()
        if not isinstance(base, cls.Config):
            raise ConfigError(f"config must be a {cls.Config.__name__}, got {type(base).__name__}")
        try:
            return dataclasses.replace(base, **options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid option for {cls.name!r}: {exc}") from exc

    def config_dict(self) -> dict:
        return dataclasses.asdict(self.config)

    def _attach(self, target, *, needs_grad: "bool | None" = None):
        """Validate ``target`` (with gradients when ``needs_grad``, default the class's) and keep it
        on the sampler's device."""
        validate_target(target, needs_grad=self.needs_grad if needs_grad is None else needs_grad, device="cpu")
        self.target = target.to(self.device) if isinstance(target, torch.nn.Module) else target
        return self.target

    def fit(self, target, *, n_steps: "int | None" = None, checkpoint=None) -> "Sampler":
        """Prepare the sampler for ``target`` (train it, for neural samplers)."""
        self._attach(target)
        return self

    def sample(self, n_samples: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def sample_to(self, path, n_samples: int, *, batch_size: int = 100_000) -> dict:
        """Draw ``n_samples`` in chunks of ``batch_size`` and stream them to the folder ``path``.

        Memory stays that of one chunk: each chunk is written as ``shard_00000.npz``
        (``samples``, and ``log_weights`` where the method gives them) and its log-weights feed a
        :class:`~boltzkit.estimators.importance.LogWeightAccumulator`, so log Z, its standard
        error and the ESS are those of the whole sample. ``index.json`` (written last, atomically)
        lists the shards and the pooled estimate; read them back with
        :func:`boltzkit.result.iter_shards`. Chunks come from consecutive draws of the sampler's
        own random stream, so the same seed gives the same shards.

        Under ``torchrun`` every rank draws its share of ``n_samples`` and writes its own
        shards (``shard_r001_00000.npz``, ...) into the same folder (a shared file system
        across nodes); the accumulators are merged and rank 0 writes the one index, whose
        estimate is that of all the ranks' weights together.

        Returns
        -------
        dict : the index (also in ``index.json``).
        """
        import json

        from ..estimators.importance import LogWeightAccumulator

        self._require_fit()
        check_count("n_samples", n_samples)
        check_count("batch_size", batch_size)
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        acc, shards, has_weights = LogWeightAccumulator(), [], None
        n_here, prefix = dist.local_count(n_samples), "shard_"
        if dist.is_distributed():
            prefix = f"shard_r{dist.rank():03d}_"
        bar = progress_bar(total=n_here, desc=f"{self.name} sampling to {folder.name}",
                           enabled=self.progress)
        try:
            done = 0
            while done < n_here:
                k = min(batch_size, n_here - done)
                with warnings.catch_warnings():  # a chunk's own reliability says little;
                    warnings.simplefilter("ignore", UnreliableEstimateWarning)  # the pooled one warns
                    res = self.sample(k)
                arrays = {"samples": res.samples.detach().cpu().numpy()}
                if res.log_weights is not None:
                    lw = np.asarray(res.log_weights.detach().cpu() if torch.is_tensor(res.log_weights)
                                    else res.log_weights, dtype=np.float64)
                    arrays["log_weights"] = lw
                    acc.update(lw)
                has_weights = "log_weights" in arrays
                name = f"{prefix}{len(shards):05d}.npz"
                with atomic_path(folder / name, suffix=".npz") as tmp:
                    np.savez(tmp, **arrays)
                shards.append({"file": name, "n": int(k)})
                done += k
                bar.update(k)
        finally:
            bar.close()
        if dist.is_distributed():  # pool the ranks' shard lists and accumulators in rank order
            parts = [None] * dist.world_size()
            torch.distributed.all_gather_object(parts, (shards, acc, has_weights))
            shards, acc, has_weights = [], LogWeightAccumulator(), parts[0][2]
            for rank_shards, rank_acc, _ in parts:
                shards += rank_shards
                acc.merge(rank_acc)
        index = {"method": self.name, "n_samples": int(n_samples), "shards": shards,
                 "seed": self.seed, "config": self.config_dict(), "world_size": dist.world_size(),
                 "target": Sampler._result_kwargs(self)["target"]}
        if has_weights:
            est = acc.estimate()
            index.update(log_z=est.log_z, log_z_stderr=est.stderr, ess=est.ess,
                         pareto_k=est.pareto_k, reliable=est.reliable)
        if dist.is_main():
            with atomic_path(folder / "index.json") as tmp:
                tmp.write_text(json.dumps(index, indent=1, default=str))
        dist.barrier()
        return index

    def _start_frame(self, init_std, use_prior_hint: bool):
        """The coordinates and start scale of a continuous sampler that is not trained:
        ``(work, frame, init_std, probe)``, the target in the frame of its prior hint (when
        ``use_prior_hint``) and ``init_std``. With ``init_std`` None the scale is 1 in the hint's
        frame or, without a hint, in the frame of the scale probe
        (:func:`boltzkit.probe.probe_frame`, on the ``"init"`` stream), whose result is ``probe``
        (else None)."""
        work, frame = framed(self.target, use_prior_hint)
        probe = None
        if init_std is None:
            init_std = 1.0
            if frame is None:
                from ..probe import probe_frame

                work, frame, probe = probe_frame(self.target, generator=self.gens["init"])
        return work, frame, init_std, probe

    def _result_kwargs(self) -> dict:
        tgt = self.target
        return {"method": self.name, "target": tgt.to_config() if hasattr(tgt, "to_config") else {},
                "config": self.config_dict(), "seed": self.seed, "device": str(self.device)}

    def _chunked(self, draw, n: int) -> list:
        """``draw(m)`` over consecutive chunks of ``n`` draws (``config.sample_batch_size`` at
        most each), in order; its outputs gathered position by position, one tuple each."""
        size = self.config.sample_batch_size
        return list(zip(*(draw(min(size, n - s)) for s in range(0, n, size))))

    def _no_checkpoint(self, checkpoint) -> None:
        """``fit``'s refusal of a checkpoint, for the samplers that do not train."""
        if checkpoint is not None:
            raise ConfigError(f"{self.name!r} keeps no checkpoints (it does not train; rerun it with "
                              "the same seed); leave checkpoint=None")

    def _require_fit(self):
        if self.target is None:
            raise ConfigError(f"{type(self).__name__}.sample() called before fit(target)")


class TrainableSampler(Sampler):
    """Neural samplers: a shared training loop with checkpoints and history.

    A subclass names its trained parts in ``components``: the attributes (networks, optimizers,
    EMA copies, replay buffers, schedules: anything with ``state_dict``/``load_state_dict``)
    that a checkpoint holds under those names (an attribute that is None is saved as None and
    skipped on load). ``_extra_state``/``_load_extra_state`` add what is not a component.
    ``train_time`` (seconds inside ``train_step``, over resumes too) is kept here and reported as
    ``train_wall_time_s`` by :meth:`_train_diagnostics`.
    """

    components: ClassVar[tuple] = ()
    tensors: ClassVar[tuple] = ()  # tensor attributes a checkpoint holds (on the CPU)

    def __init__(self, config=None, /, **kw):
        super().__init__(config, **kw)
        self.step = 0
        self.train_time = 0.0
        self.history: dict[str, list] = {}

    # -- to implement
    def _setup(self, target) -> None:  # build networks and optimizers
        raise NotImplementedError

    def train_step(self) -> dict:  # one optimizer step; returns metrics (floats)
        raise NotImplementedError

    def _extra_state(self) -> dict:
        """What a checkpoint holds besides the components (plain values, tensors)."""
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    # -- derived from the components
    def _state_dict(self) -> dict:
        state = {name: None if getattr(self, name, None) is None else getattr(self, name).state_dict()
                 for name in self.components}
        extra = self._extra_state()  # first: it may raise a clear error (nothing to save)
        tensors = {name: getattr(self, name).cpu() for name in self.tensors}
        return {**state, **tensors, "train_time": self.train_time, **extra}

    def _load_state_dict(self, state: dict) -> None:
        for name in self.components:
            part = getattr(self, name, None)
            if part is not None and state.get(name) is not None:
                part.load_state_dict(state[name])
        for name in self.tensors:
            setattr(self, name, state[name].to(self.device))
        self.train_time = float(state.get("train_time", 0.0))
        self._load_extra_state(state)

    @contextlib.contextmanager
    def _seeded_init(self):
        """Build networks inside this block: their initialisation draws from a seed taken from the
        sampler's ``"init"`` stream, and torch's global generator is left untouched."""
        init = self.gens["init"]
        seed = int(torch.randint(0, 2**62, (1,), generator=init, device=init.device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    def _smc_options(self, n_samples, resample_ess, n_islands, mcmc_steps) -> tuple:
        """``sample_smc``'s options, each None taking the config's (``resample_ess``: 0.5 where the
        config leaves it None), checked before any work: (fraction, islands, MALA steps)."""
        from ._shared.smc import check_smc_options

        c = self.config
        frac = resample_ess if resample_ess is not None else (c.resample_ess or 0.5)
        islands = n_islands if n_islands is not None else c.n_islands
        n_mcmc = mcmc_steps if mcmc_steps is not None else c.smc_mcmc_steps
        check_smc_options(int(n_samples), frac, islands, n_mcmc)
        if n_mcmc and not isinstance(self.target.domain, Reals):
            raise ConfigError("smc_mcmc_steps > 0 (MALA rejuvenation) needs a Reals target; "
                              "leave it at 0 for particle systems")
        return frac, islands, n_mcmc

    @staticmethod
    def _optimizer_step(net, optimizer, loss=None, *, grad_clip=None, ema=None) -> None:
        """Step ``optimizer`` on the gradients of ``loss`` (cleared, then back-propagated; None:
        the gradients already in ``net``): their norm cut to ``grad_clip`` first (the
        rank-averaged gradient under torchrun; None: no cut), then the EMA copy ``ema`` (when
        given) updated."""
        if loss is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if grad_clip is not None:
            dist.sync_gradients(optimizer)  # clip the rank-averaged gradient (no-op on one process)
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(net)

    def _categorical_domain(self, target, method: str):
        """The target's categorical domain, kept as ``domain`` with its ``n_sites`` and ``q``;
        IncompatibleMethodError for any other domain."""
        dom = target.domain
        if not isinstance(dom, Categorical):
            raise IncompatibleMethodError(f"{method} needs a categorical domain (Lattice, Sequence), got "
                                          f"{type(dom).__name__}; use a continuous sampler instead")
        self.domain, self.n_sites, self.q = dom, dom.n_sites, dom.q
        return dom

    def _require_model(self):
        """Raise unless the model is built (by ``fit`` or the class's ``load``)."""
        if getattr(self, "model", None) is None:
            name = type(self).__name__
            raise ConfigError(f"{name} has no trained model: call fit(dataset) or {name}.load(path) first")

    def _train_diagnostics(self) -> dict:
        """The training keys every neural sampler's Result carries."""
        return {"train_steps": int(self.step), "train_wall_time_s": float(self.train_time)}

    def default_n_steps(self) -> int:
        return int(getattr(self.config, "n_steps", 1000))

    # -- shared
    def state_dict(self) -> dict:
        """Everything needed to resume; under a process group this is a collective call
        (the per-rank generator states are gathered into ``rank_generators``)."""
        gens = {k: g.get_state() for k, g in self.gens.items()}
        state = {"method": self.name, "step": self.step, "config": self.config_dict(),
                 "seed": self.seed, "history": {k: list(map(float, v)) for k, v in self.history.items()},
                 "generators": gens, "world_size": dist.world_size(),
                 "sampler": self._state_dict()}
        if dist.is_distributed():
            peers = [None] * dist.world_size()
            torch.distributed.all_gather_object(peers, {k: v.cpu() for k, v in gens.items()})
            state["rank_generators"] = peers
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.name:
            raise ConfigError(f"checkpoint is for method {state.get('method')!r}, not {self.name!r}")
        self.step = int(state["step"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        for k, s in self._generator_states(state).items():
            if k in self.gens:
                self.gens[k].set_state(s)
        self._load_state_dict(state["sampler"])

    def _generator_states(self, state: dict) -> dict:
        """This rank's generator states in a checkpoint written with any number of ranks.

        Rank 0 (and every shared stream) takes the saved rank-0 states. Rank r >= 1 takes its
        own saved states when the checkpoint has them, else fresh streams derived from the seed
        keyed by (rank, step), so that no two ranks ever replay the same numbers.
        """
        r, saved = dist.rank(), state["generators"]
        if r == 0:
            return saved
        peers = state.get("rank_generators") or []
        if r < len(peers):
            own = peers[r]
        else:
            fresh = rank_generators(self.seed, self.streams, "cpu", rank=r, salt=max(self.step, 1))
            own = {k: g.get_state() for k, g in fresh.items()}
        return {**saved, **own, **({"init": saved["init"]} if "init" in saved else {})}

    @classmethod
    def _read_saved_model(cls, path) -> dict:
        """The state a model's ``save`` wrote (:meth:`save_checkpoint`), read with
        ``weights_only=True`` (never unpickles code), checked to be this method's, its
        generators on the CPU: the common start of the ``load`` classmethods."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("method") != cls.name:
            raise ConfigError(f"{path} holds a {state.get('method')!r} checkpoint, not a {cls.name!r} model")
        state["generators"] = {k: v.cpu() for k, v in state["generators"].items()}
        return state

    @classmethod
    def _saved_config(cls, state: dict, **overrides):
        """The saved ``Config`` (fields this version knows), with ``overrides`` replacing saved values."""
        known = {f.name for f in dataclasses.fields(cls.Config)} - set(overrides)
        return cls.Config(**{k: v for k, v in state["config"].items() if k in known}, **overrides)

    def save_checkpoint(self, path) -> None:
        """Write the checkpoint atomically. Under a process group every rank must call it:
        the generator states are gathered and rank 0 alone writes the file."""
        state = self.state_dict()
        if dist.is_main():
            with atomic_path(path) as tmp:
                torch.save(state, tmp)
        dist.barrier()  # the file exists for every rank once this returns

    def load_checkpoint(self, path) -> None:
        """Resume from a checkpoint written with any number of ranks (see ``_generator_states``)."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state.get("generators"):  # generator states must live on CPU
            state["generators"] = {k: v.cpu() for k, v in state["generators"].items()}
        if state.get("rank_generators"):
            state["rank_generators"] = [{k: v.cpu() for k, v in g.items()} for g in state["rank_generators"]]
        self.load_state_dict(state)

    def _distribute(self) -> None:
        """Under a process group: start every rank from rank 0's networks and make every
        optimizer of the sampler average its gradients over the ranks before each step."""
        if not dist.is_distributed():
            return
        modules, optimizers = [], []
        for name, value in vars(self).items():
            if name == "target":
                continue
            if isinstance(value, torch.nn.Module):
                modules.append(value)
            elif isinstance(value, torch.optim.Optimizer):
                optimizers.append(value)
            elif isinstance(getattr(value, "shadow", None), torch.nn.Module):  # an EMA copy
                modules.append(value.shadow)
        dist.broadcast_modules(modules)
        for opt in optimizers:
            dist.attach_gradient_sync(opt)

    def fit(self, target, *, n_steps: "int | None" = None, checkpoint=None,
            checkpoint_every: int = 100) -> "TrainableSampler":
        """Train until ``n_steps`` total steps (resuming from ``checkpoint`` if it exists).

        ``n_steps=0`` attaches the target without training (the untrained sampler's weights
        are still exact, only noisier).

        Under ``torchrun`` (a process group with several ranks) the same call trains
        data-parallel: every rank runs ``train_step`` on its own batch (``batch_size`` is per
        rank) with its own random streams, the gradients are averaged over the ranks before
        each optimizer step, the history holds rank-averaged metrics, and rank 0 alone writes
        the checkpoint (see :mod:`boltzkit.distributed`).
        """
        n_steps = self.default_n_steps() if n_steps is None else n_steps
        check_count("n_steps", n_steps, minimum=0)
        if self.target is None or self.target is not target:
            self._attach(target)
            self._setup(self.target)
            self._distribute()
        if checkpoint is not None and Path(checkpoint).exists():
            self.load_checkpoint(checkpoint)
        bar = progress_bar(total=n_steps, initial=self.step, desc=f"{self.name} training",
                           enabled=self.progress)
        try:
            while self.step < n_steps:
                t0 = time.perf_counter()
                try:
                    metrics = self.train_step()
                except NonFiniteEnergyError as exc:  # the energy's fault, with the step added
                    raise at_step(exc, f"{self.name} training step {self.step + 1} of {n_steps}") from None
                self.train_time += time.perf_counter() - t0
                self.step += 1
                if dist.is_distributed():  # history (and the divergence check) see the rank mean
                    metrics = dist.all_reduce_mean({k: float(v) for k, v in metrics.items()})
                for k, v in metrics.items():
                    v = float(v)
                    if k == "loss" and not math.isfinite(v):
                        raise TrainingDivergedError(
                            f"{self.name} training diverged at step {self.step}: loss = {v}. "
                            "Lower the learning rate (lr=...) or use a smaller step size.")
                    self.history.setdefault(k, []).append(v)
                bar.update(1)
                if self.step % 10 == 0 or self.step == n_steps:
                    bar.set_postfix({k: f"{float(v):.4g}" for k, v in metrics.items()})
                if checkpoint is not None and (self.step % checkpoint_every == 0 or self.step == n_steps):
                    self.save_checkpoint(checkpoint)
        finally:
            bar.close()
        return self

    def _result_kwargs(self) -> dict:
        kw = super()._result_kwargs()
        kw["history"] = {k: np.asarray(v, dtype=np.float64) for k, v in self.history.items()}
        return kw
