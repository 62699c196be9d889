r"""Masked (absorbing-state) discrete diffusion models of fixed-length sequences.

A :class:`MaskedDiffusion` is a denoiser network ``s(x_partial)_{d, v}``: for each masked
position d a distribution over the alphabet given the revealed positions (an MDLM "SUBS"
denoiser; no time input, the optimal denoiser does not need one). Generation is the masked CTMC
of :mod:`boltzkit.nn.ctmc`: start fully masked and reveal positions in a uniformly
random order, ``n_unmask_steps`` network passes in all (``None``: one position per pass, exact
any-order autoregressive sampling).

* :meth:`MaskedDiffusion.pretrain` fits the denoiser to a :class:`~boltzkit.datasets.SequenceDataset`
  with the MDLM loss (the masked-token cross-entropy with ELBO weight 1/lambda; the uniform-weight
  case of :func:`~boltzkit.nn.ctmc.wdce_loss`).
* :meth:`MaskedDiffusion.elbo` is the per-sequence evidence lower bound ``<= log p(x)``
  (unbiased Monte Carlo over orders or maskings);
* :meth:`MaskedDiffusion.exact_log_prob` computes ``log p(x)`` exactly (short sequences only).
* :meth:`MaskedDiffusion.from_markov_chain` wraps a first-order Markov chain as an exact denoiser
  (its conditionals given any revealed set are closed-form), so ``p(x)`` is the chain's law exactly.

The network is a residual CNN by default (a transformer was about 10x slower per sequence on
CPU at length 48 in the TR2-D2 brief's measurements).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence as Seq

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..._utils import (atomic_path, check_choice, check_count, check_positive, module_device, progress_bar,
                       resolve_device, torch_generator)
from ...domains.base import Sequence
from ...errors import ConfigError, DatasetError, DomainError, TrainingDivergedError
from ...nn.ctmc import MaskedPath, masked_rollout, path_log_prob, remask, unmask_schedule, wdce_loss
from ...nn.discrete_nets import make_discrete_net
from ...nn.ema import EMA
from .dataset import SequenceDataset

__all__ = ["MaskedDiffusion", "MarkovChainNet", "ResidualNet", "build_net"]

FORMAT = "boltzkit.MaskedDiffusion/1"
MAX_EXACT_LENGTH = 14


class MarkovChainNet(nn.Module):
    r"""Exact denoiser of a first-order Markov chain ``p(x) = p0(x_1) prod_i T(x_i, x_{i+1})``.

    For a masked position d with nearest revealed positions a < d (value u) and b > d (value v),
    ``p(x_d = c | revealed) \propto T^{d-a}[u, c] T^{b-d}[c, v]`` (``(p0 T^d)[c]`` without a left
    neighbour, no right factor without a right neighbour). Logits are float64.
    """

    def __init__(self, initial, transition):
        super().__init__()
        p0 = torch.as_tensor(np.asarray(initial, dtype=np.float64))
        T = torch.as_tensor(np.asarray(transition, dtype=np.float64))
        q = p0.shape[0]
        if p0.ndim != 1 or T.shape != (q, q):
            raise ConfigError(f"initial must be (q,) and transition (q, q); got {tuple(p0.shape)} and "
                              f"{tuple(T.shape)}")
        if bool((p0 < 0).any() | (T < 0).any()) or abs(float(p0.sum()) - 1) > 1e-9 or \
                bool(((T.sum(1) - 1).abs() > 1e-9).any()):
            raise ConfigError("initial and the rows of transition must be probability vectors")
        self.q = q
        self.register_buffer("initial", p0)
        self.register_buffer("transition", T)
        self._length = None

    def _tables(self, length: int, device):
        if self._length != (length, device):
            T = self.transition
            powers = [torch.eye(self.q, dtype=T.dtype, device=device)]
            for _ in range(length):
                powers.append(powers[-1] @ T)
            self._powers = torch.stack(powers)  # (L+1, q, q)
            self._marg = torch.stack([self.initial @ powers[d] for d in range(length)])  # (L, q)
            self._length = (length, device)
        return self._powers, self._marg

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, L = tokens.shape
        powers, marg = self._tables(L, tokens.device)
        pos = torch.arange(L, device=tokens.device).expand(b, L)
        revealed = tokens < self.q
        # nearest revealed position strictly left / right of each d
        left = torch.where(revealed, pos, -1).cummax(1).values
        left = torch.cat([torch.full((b, 1), -1, device=tokens.device), left[:, :-1]], 1)
        right = torch.where(revealed, pos, L).flip(1).cummin(1).values.flip(1)
        right = torch.cat([right[:, 1:], torch.full((b, 1), L, device=tokens.device)], 1)
        safe = tokens.clamp(max=self.q - 1)
        u = safe.gather(1, left.clamp(min=0))
        v = safe.gather(1, right.clamp(max=L - 1))
        lf = torch.where((left >= 0).unsqueeze(-1), powers[(pos - left).clamp(max=L), u],
                         marg[pos])  # (B, L, q)
        rf = torch.where((right < L).unsqueeze(-1), powers[(right - pos).clamp(max=L), :, v],
                         torch.ones((), dtype=lf.dtype, device=lf.device))
        return (lf * rf).clamp_min(1e-300).log()

    def extra_repr(self):
        return f"q={self.q}"


class ResidualNet(nn.Module):
    """``base(x) + delta(x)`` with ``base`` frozen: fine-tuning a model without own parameters."""

    def __init__(self, base: nn.Module, delta: nn.Module):
        super().__init__()
        self.base, self.delta = base, delta
        for p in self.base.parameters():
            p.requires_grad_(False)

    def forward(self, tokens):
        with torch.no_grad():
            b = self.base(tokens)
        return b + self.delta(tokens)


def build_net(domain: Sequence, spec: dict) -> nn.Module:
    """Network from a JSON-able spec: ``{"kind": "cnn" | "transformer", size...}``,
    ``{"kind": "markov", "initial": [...], "transition": [[...]]}`` or
    ``{"kind": "residual", "base": spec, "delta": spec}``."""
    kind = spec.get("kind")
    if kind == "markov":
        return MarkovChainNet(spec["initial"], spec["transition"])
    if kind == "residual":
        return ResidualNet(build_net(domain, spec["base"]), build_net(domain, spec["delta"]))
    if kind in ("cnn", "transformer"):
        return make_discrete_net(domain, kind, **{k: v for k, v in spec.items() if k != "kind"})
    raise ConfigError(f"unknown network kind {kind!r}; choose 'cnn', 'transformer', 'markov' or 'residual'")


class MaskedDiffusion(nn.Module):
    """A masked discrete diffusion model over a :class:`~boltzkit.domains.Sequence` domain.

    Parameters
    ----------
    domain : the sequence domain (length and alphabet).
    net : ``"cnn"`` (default), ``"transformer"``, or a network spec dict (see :func:`build_net`).
    hidden, n_layers, n_heads : network size (``n_layers`` = residual blocks for the CNN).
    pad : padding symbol of the data (removed from the ends by :meth:`to_strings`).
    n_unmask_steps : network passes per generated sequence (None = one position per pass).

    Examples
    --------
    >>> ds = bk.datasets.peptides()                                     # doctest: +SKIP
    >>> model = MaskedDiffusion.pretrain(ds, n_steps=2000, seed=0)      # doctest: +SKIP
    >>> model.to_strings(model.sample(4, seed=1))                       # doctest: +SKIP
    """

    def __init__(self, domain: Sequence, *, net: "str | dict" = "cnn", hidden: int = 64,
                 n_layers: "int | None" = 6, n_heads: int = 2, pad: "str | None" = None,
                 n_unmask_steps: "int | None" = None):
        super().__init__()
        if not isinstance(domain, Sequence):
            raise ConfigError(f"MaskedDiffusion needs a boltzkit Sequence domain, got {type(domain).__name__}")
        if pad is not None and pad not in domain.alphabet:
            raise ConfigError(f"pad {pad!r} is not in the alphabet {domain.alphabet!r}")
        self.domain, self.pad = domain, pad
        unmask_schedule(domain.length, n_unmask_steps)  # validates
        self.n_unmask_steps = n_unmask_steps
        spec = dict(net) if isinstance(net, dict) else {"kind": net, "hidden": hidden,
                                                        "n_layers": n_layers, "n_heads": n_heads}
        if spec.get("kind") == "cnn":
            spec.pop("n_heads", None)
        self.spec = spec
        self.net = build_net(domain, spec)
        self.history: "dict[str, list]" = {}

    # ------------------------------------------------------------------ basics
    @property
    def length(self) -> int:
        return self.domain.length

    @property
    def q(self) -> int:
        return self.domain.q

    @property
    def device(self) -> torch.device:
        return module_device(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Denoiser logits ``(B, L, q)`` for tokens ``(B, L)`` in ``[0, q]`` (``q`` = mask)."""
        return self.net(tokens)

    def to_strings(self, tokens: torch.Tensor) -> "list[str]":
        """Sequences as strings, trailing padding removed."""
        out = self.domain.to_strings(torch.as_tensor(tokens).cpu())
        return [s.rstrip(self.pad) for s in out] if self.pad is not None else out

    def tokens(self, x) -> torch.Tensor:
        """Validated int64 tokens ``(B, L)`` from tokens or a list of strings (padded with ``pad``)."""
        if isinstance(x, (list, tuple)) and x and isinstance(x[0], str):
            alphabet = [a for a in self.domain.alphabet if a != self.pad]
            ds = SequenceDataset.from_strings(x, alphabet=alphabet, length=self.length, pad=self.pad)
            if ds.alphabet != self.domain.alphabet:
                raise DomainError(f"alphabet mismatch: data {ds.alphabet} vs model {self.domain.alphabet}")
            return ds.tokens
        x = torch.as_tensor(x)
        if x.ndim == 2 and x.shape[1] > self.length:
            raise DomainError(f"sequences have length {x.shape[1]} but the model's length is "
                              f"{self.length}; truncate them or train a model of that length")
        return self.domain.validate(x.long(), "tokens")

    def _gen(self, seed, generator):
        return torch_generator(seed or 0, self.device) if generator is None else generator

    # ------------------------------------------------------------------ training
    @classmethod
    def pretrain(cls, dataset, *, n_steps: int = 2000, batch_size: int = 128, lr: float = 1e-3,
                 weight_decay: float = 0.0, grad_clip: "float | None" = 1.0, ema_decay: float = 0.999,
                 mask_mode: str = "lambda", seed: int = 0, device="auto", progress: "bool | None" = None,
                 net: "str | dict" = "cnn", hidden: int = 64, n_layers: "int | None" = 6,
                 n_heads: int = 2, n_unmask_steps: "int | None" = None) -> "MaskedDiffusion":
        """Build a model for ``dataset`` and fit it with the MDLM denoising loss.

        Parameters
        ----------
        dataset : a :class:`~boltzkit.datasets.SequenceDataset` (its domain and pad are used).
        n_steps, batch_size, lr, weight_decay, grad_clip : AdamW training settings.
        ema_decay : the returned weights are an exponential moving average (0 = last iterate).
        mask_mode : ``"lambda"`` (MDLM: mask rate lambda ~ U(0,1), weight 1/lambda) or ``"count"``.
        seed : seeds the initialization, the minibatches and the masks.

        Returns
        -------
        The trained model (on ``device``); per-step losses in ``model.history["loss"]``.
        """
        if not isinstance(dataset, SequenceDataset):
            raise DatasetError(f"pretrain needs a SequenceDataset, got {type(dataset).__name__}; build "
                               "one with bk.datasets.SequenceDataset.from_strings(...)")
        dev = resolve_device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = cls(dataset.domain, net=net, hidden=hidden, n_layers=n_layers, n_heads=n_heads,
                        pad=dataset.pad, n_unmask_steps=n_unmask_steps)
        return model.to(dev).fit(dataset, n_steps=n_steps, batch_size=batch_size, lr=lr,
                                 weight_decay=weight_decay, grad_clip=grad_clip, ema_decay=ema_decay,
                                 mask_mode=mask_mode, seed=seed, progress=progress)

    def fit(self, dataset, *, n_steps: int = 2000, batch_size: int = 128, lr: float = 1e-3,
            weight_decay: float = 0.0, grad_clip: "float | None" = 1.0, ema_decay: float = 0.999,
            mask_mode: str = "lambda", seed: int = 0, progress: "bool | None" = None) -> "MaskedDiffusion":
        """Continue training on ``dataset`` (same arguments as :meth:`pretrain`)."""
        check_count("n_steps", n_steps, minimum=0)
        check_count("batch_size", batch_size)
        check_positive("lr", lr)
        if dataset.length != self.length or list(dataset.alphabet) != list(self.domain.alphabet):
            raise DatasetError(f"the data set ({dataset.length} positions over {''.join(dataset.alphabet)!r}) "
                               f"does not match the model ({self.length} over "
                               f"{''.join(self.domain.alphabet)!r}); pretrain a new model on it")
        params = [p for p in self.net.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("this model's network has no trainable parameters (an exact Markov chain?)")
        dev = self.device
        gen = torch_generator(seed, dev)
        data = dataset.tokens.to(dev)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        ema = EMA(self.net, ema_decay) if ema_decay > 0 else None
        b = min(batch_size, len(dataset))
        uniform = torch.full((b,), 1.0 / b, device=dev)
        losses = self.history.setdefault("loss", [])
        bar = progress_bar(total=n_steps, desc="MaskedDiffusion pretraining", enabled=progress)
        t0 = time.perf_counter()
        self.net.train()
        try:
            for step in range(n_steps):
                idx = torch.randint(0, len(dataset), (b,), generator=gen, device=dev)
                loss = wdce_loss(self.net, data[idx], uniform, self.q, 1, generator=gen, mode=mask_mode)
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(f"pretraining diverged at step {step}: loss {float(loss)}; "
                                                "lower lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                if ema is not None:
                    ema.update(self.net)
                losses.append(float(loss.detach()))
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix({"loss": f"{losses[-1]:.4f}"})
        finally:
            bar.close()
        if ema is not None:
            self.net.load_state_dict(ema.shadow.state_dict())
        self.net.eval()
        self.history.setdefault("train_wall_time_s", []).append(time.perf_counter() - t0)
        return self

    # ------------------------------------------------------------------ generation and likelihood
    @torch.no_grad()
    def sample(self, n: int, *, seed: "int | None" = None, generator: "torch.Generator | None" = None,
               n_unmask_steps: "int | None" = None, batch_size: int = 1024) -> torch.Tensor:
        """Generate ``n`` sequences: int64 tokens ``(n, L)`` on CPU (strings: :meth:`to_strings`)."""
        check_count("n", n)
        gen = self._gen(seed, generator)
        k = len(unmask_schedule(self.length, n_unmask_steps if n_unmask_steps is not None
                                else self.n_unmask_steps))
        self.net.eval()
        out = [masked_rollout(self.net, min(batch_size, n - s), self.length, self.q, generator=gen,
                              n_steps=k, device=self.device).x.cpu()
               for s in range(0, n, batch_size)]
        return torch.cat(out)

    @torch.no_grad()
    def elbo(self, tokens, *, n_mc: int = 2, estimator: str = "orders", seed: "int | None" = None,
             generator: "torch.Generator | None" = None, max_rows: int = 8192,
             return_stderr: bool = False):
        """Per-sequence evidence lower bound ``E_sigma log q(x | sigma) <= log p(x)`` (float64, (B,)).

        ``q(x | sigma)`` is the one-position-per-step path probability along the order sigma; the
        bound is tight when the denoiser's conditionals are consistent (for an exact model every
        order gives ``log p(x)``). Unbiased Monte-Carlo estimate from ``n_mc`` draws per sequence:

        * ``"orders"`` (default): ``n_mc`` uniformly random orders, each scored exactly with the
          teacher-forced path log-probability (L network rows per draw, low variance);
        * ``"masks"``: ``n_mc`` random maskings (m ~ U{1..L} positions, weight L/m; one row per
          draw, cheaper and noisier).

        ``return_stderr=True`` also returns the Monte-Carlo standard error per sequence.
        """
        check_count("n_mc", n_mc)
        check_choice("estimator", estimator, ("orders", "masks"))
        x = self.tokens(tokens).to(self.device)
        gen = self._gen(seed, generator)
        self.net.eval()
        n, L = x.shape
        if estimator == "orders":
            xr = x.repeat_interleave(n_mc, 0)
            order = torch.argsort(torch.rand(xr.shape, generator=gen, device=x.device), dim=1)
            path = MaskedPath(xr, order, torch.zeros(xr.shape[0], dtype=torch.float64, device=x.device),
                              [1] * L)
            est = path_log_prob(self.net, path, self.q, max_rows=max_rows).view(n, n_mc).cpu()
        else:
            rows_per = max(1, max_rows // n_mc)
            vals = []
            for xb in x.split(rows_per):
                masked_tokens, masked, w = remask(xb, self.q, n_mc, generator=gen, mode="count")
                logp = F.log_softmax(self.net(masked_tokens).double(), dim=-1)
                ll = logp.gather(-1, xb.repeat_interleave(n_mc, 0).unsqueeze(-1)).squeeze(-1)
                vals.append(((ll * masked).sum(-1) * w.double()).view(-1, n_mc))
            est = torch.cat(vals).cpu()
        mean = est.mean(1)
        if not return_stderr:
            return mean
        se = est.std(1) / math.sqrt(n_mc) if n_mc > 1 else torch.full_like(mean, float("inf"))
        return mean, se

    @torch.no_grad()
    def exact_log_prob(self, tokens, *, batch_rows: int = 16384) -> torch.Tensor:
        """Exact ``log p(x) = log E_sigma q(x | sigma)`` of the one-position-per-step model.

        Dynamic programming over the revealed sets S: ``h(empty) = 1`` and
        ``h(S) = (1/|S|) sum_{d in S} h(S - d) s(x_{S - d})_{d, x_d}``; ``p(x) = h(all)``. Costs
        ``2^L`` network rows per sequence, so it is limited to ``L <= 14``.
        """
        if self.length > MAX_EXACT_LENGTH:
            raise ConfigError(f"exact_log_prob enumerates 2^L revealed sets; L = {self.length} > "
                              f"{MAX_EXACT_LENGTH} is too long. Use elbo() instead")
        x = self.tokens(tokens).to(self.device)
        L, q, n = self.length, self.q, x.shape[0]
        n_sets = 1 << L
        sets = torch.arange(n_sets, device=x.device)
        bits = (sets.unsqueeze(1) >> torch.arange(L, device=x.device)) & 1  # (S, L)
        self.net.eval()
        # every (sequence, revealed set) input; many coincide, so the network sees each once
        inp = torch.where(bits.bool().unsqueeze(0), x.unsqueeze(1), q).reshape(-1, L)
        uniq, inverse = torch.unique(inp, dim=0, return_inverse=True)
        picked = torch.cat([F.log_softmax(self.net(u).double(), dim=-1) for u in uniq.split(batch_rows)])
        lp = picked[inverse].view(n, n_sets, L, q)
        lp = lp.gather(-1, x.view(-1, 1, L, 1).expand(-1, n_sets, L, 1)).squeeze(-1)  # (n, S, L)
        logh = torch.full((n, n_sets), -math.inf, dtype=torch.float64, device=x.device)
        logh[:, 0] = 0.0
        size = bits.sum(1)
        for k in range(1, L + 1):
            level = sets[size == k]  # (m,)
            members = bits[level].bool()  # (m, L)
            d = members.nonzero()[:, 1].view(-1, k)  # the k members of each set
            prev = level.unsqueeze(1) - (1 << d)  # (m, k): the set without d
            terms = logh[:, prev] + lp[:, prev, d]  # (n, m, k)
            logh[:, level] = torch.logsumexp(terms, dim=-1) - math.log(k)
        return logh[:, -1].cpu()

    # ------------------------------------------------------------------ constructors and persistence
    @classmethod
    def from_markov_chain(cls, initial, transition, alphabet: "str | Seq[str]", length: int) -> "MaskedDiffusion":
        """The exact masked-diffusion model of a first-order Markov chain (no trainable weights)."""
        check_count("length", length)
        spec = {"kind": "markov", "initial": np.asarray(initial, dtype=np.float64).tolist(),
                "transition": np.asarray(transition, dtype=np.float64).tolist()}
        if len(spec["initial"]) != len(list(alphabet)):
            raise ConfigError(f"the chain has {len(spec['initial'])} states but the alphabet "
                              f"{list(alphabet)!r} has {len(list(alphabet))} symbols")
        return cls(Sequence(length, alphabet), net=spec)

    def config(self) -> dict:
        """JSON-able description (domain, network spec, pad, n_unmask_steps)."""
        return {"format": FORMAT, "domain": self.domain.to_config(), "net": self.spec, "pad": self.pad,
                "n_unmask_steps": self.n_unmask_steps}

    def save(self, path) -> Path:
        """Write the weights and the config to one file (atomic; read back with :meth:`load`)."""
        path = Path(path)
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        with atomic_path(path) as tmp:
            torch.save({"config": self.config(), "state_dict": state,
                        "history": {k: [float(v) for v in vals] for k, vals in self.history.items()}}, tmp)
        return path

    @classmethod
    def load(cls, path, *, device="cpu") -> "MaskedDiffusion":
        """Read a model written by :meth:`save` (``torch.load(weights_only=True)``: no pickle)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no model file at {path}")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        cfg = blob.get("config", {}) if isinstance(blob, dict) else {}
        if cfg.get("format") != FORMAT:
            raise ConfigError(f"{path} is not a boltzkit MaskedDiffusion file")
        dom = Sequence(cfg["domain"]["length"], cfg["domain"]["alphabet"])
        model = cls(dom, net=cfg["net"], pad=cfg["pad"], n_unmask_steps=cfg["n_unmask_steps"])
        model.net.load_state_dict(blob["state_dict"])
        model.history = {k: list(v) for k, v in blob.get("history", {}).items()}
        model.eval()
        return model.to(resolve_device(device))

    def __repr__(self):
        return f"MaskedDiffusion({self.domain!r}, net={self.spec.get('kind')!r}, pad={self.pad!r})"
