r"""A single-cell law with known answers: per-type mixtures of product negative binomials.

:class:`SyntheticCellLaw` gives exact samples, exact log-probabilities, exact per-type means
and covariances and the Bayes posterior of the type: the truth that the tests and benchmarks
of the single-cell generators and metrics are checked against.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln, logsumexp

from ...errors import DatasetError
from .dataset import CellDataset, allocate

__all__ = ["SyntheticCellLaw"]


def _nb_logpmf(x, mu, theta):
    """log NB(x; mean mu, inverse dispersion theta), broadcasting."""
    return (gammaln(x + theta) - gammaln(theta) - gammaln(x + 1)
            + theta * np.log(theta / (theta + mu)) + x * np.log(mu / (theta + mu)))


class SyntheticCellLaw:
    r"""Per-type mixtures of product negative binomials with a low-rank mean structure.

    Cell type ``t`` (probability ``type_probs[t]``) has ``K`` sub-states with weights
    ``pi[t, k]``; given the sub-state, gene counts are independent::

        x_g | t, k ~ NB(mean mu[t, k, g], inverse dispersion theta[g])
        log mu[t, k, g] = b[g] + a[t, g] + (W u[t, k])[g],     W: (G, rank)

    so within a type the genes covary through a rank-``min(K - 1, rank)`` term. Everything is
    exact: samples, ``log p(x | t)`` (log-sum-exp over sub-states), the per-type mean and
    covariance, and the Bayes posterior ``p(t | x)``.

    Build one with :meth:`make`.
    """

    def __init__(self, mu, pi, theta, type_probs, *, gene_names=None, categories=None):
        self.mu = np.asarray(mu, dtype=np.float64)          # (T, K, G)
        self.pi = np.asarray(pi, dtype=np.float64)          # (T, K)
        self.theta = np.asarray(theta, dtype=np.float64)    # (G,)
        self.type_probs = np.asarray(type_probs, dtype=np.float64)
        t, k, g = self.mu.shape
        if self.pi.shape != (t, k) or self.theta.shape != (g,) or self.type_probs.shape != (t,):
            raise DatasetError("inconsistent shapes of mu (T, K, G), pi (T, K), theta (G,), type_probs (T,)")
        if not (np.allclose(self.pi.sum(1), 1) and np.isclose(self.type_probs.sum(), 1)):
            raise DatasetError("pi rows and type_probs must sum to 1")
        self.gene_names = [f"gene{i}" for i in range(g)] if gene_names is None else list(gene_names)
        self.categories = [f"type{i}" for i in range(t)] if categories is None else list(categories)

    @classmethod
    def make(cls, n_types: int = 3, n_genes: int = 8, n_states: int = 3, rank: int = 2, *,
             type_effect: float = 1.0, state_effect: float = 0.8, seed: int = 0) -> "SyntheticCellLaw":
        """A random law: base means 2-30 counts, type effects ``N(0, type_effect^2)`` on each
        gene, sub-state shifts ``W u`` with ``W, u ~ N(0, state_effect^2 / rank), N(0, 1)``,
        ``theta`` uniform in [2, 10], sub-state weights Dirichlet(5), type proportions
        Dirichlet(10)."""
        rng = np.random.default_rng(seed)
        b = np.log(rng.uniform(2.0, 30.0, n_genes))
        a = rng.normal(0.0, type_effect, (n_types, n_genes))
        w = rng.normal(0.0, state_effect / np.sqrt(rank), (n_genes, rank))
        u = rng.normal(0.0, 1.0, (n_types, n_states, rank))
        mu = np.exp(b + a[:, None, :] + u @ w.T)
        return cls(mu, pi=rng.dirichlet(np.full(n_states, 5.0), size=n_types),
                   theta=rng.uniform(2.0, 10.0, n_genes), type_probs=rng.dirichlet(np.full(n_types, 10.0)))

    @property
    def n_types(self) -> int:
        return self.mu.shape[0]

    @property
    def n_genes(self) -> int:
        return self.mu.shape[2]

    def mean(self, t: int) -> np.ndarray:
        """Exact ``E[x | t]`` (G,)."""
        return self.pi[t] @ self.mu[t]

    def cov(self, t: int) -> np.ndarray:
        """Exact ``Cov[x | t]`` (G, G): mixture of NB variances plus the spread of the means."""
        m = self.mu[t]
        within = self.pi[t] @ (m + m ** 2 / self.theta)
        d = m - self.mean(t)
        return np.diag(within) + (d.T * self.pi[t]) @ d

    def log_prob(self, x, t) -> np.ndarray:
        """Exact ``log p(x | t)`` for counts ``x`` (n, G) and types ``t`` (n,) or an int."""
        x = np.asarray(x, dtype=np.float64)
        t = np.broadcast_to(np.asarray(t), (x.shape[0],))
        comp = _nb_logpmf(x[:, None, :], self.mu[t], self.theta).sum(-1)  # (n, K)
        return logsumexp(comp + np.log(self.pi[t]), axis=1)

    def posterior(self, x) -> np.ndarray:
        """Exact ``p(t | x)`` (n, T)."""
        x = np.asarray(x, dtype=np.float64)
        lp = np.stack([self.log_prob(x, t) for t in range(self.n_types)], 1) + np.log(self.type_probs)
        return np.exp(lp - logsumexp(lp, axis=1, keepdims=True))

    def sample(self, counts_per_type, *, seed: int = 0) -> "tuple[np.ndarray, np.ndarray]":
        """Exact draws: ``(x (n, G) counts, t (n,) type codes)`` with ``counts_per_type[t]``
        cells of type ``t`` (grouped by type)."""
        rng = np.random.default_rng(seed)
        counts_per_type = np.asarray(counts_per_type, dtype=np.int64)
        t = np.repeat(np.arange(self.n_types), counts_per_type)
        k = np.concatenate([rng.choice(self.pi.shape[1], size=int(n), p=self.pi[ti])
                            for ti, n in enumerate(counts_per_type)]).astype(np.int64)
        mu = self.mu[t, k]
        x = rng.negative_binomial(np.broadcast_to(self.theta, mu.shape), self.theta / (self.theta + mu))
        return x.astype(np.float64), t

    def dataset(self, n_cells: int, *, seed: int = 0, label_key: str = "cell_type") -> CellDataset:
        """``n_cells`` exact draws, types in the law's proportions, as a counts CellDataset."""
        x, t = self.sample(allocate(n_cells, self.type_probs), seed=seed)
        return CellDataset(x, np.asarray(self.categories, dtype=object)[t], gene_names=self.gene_names,
                           label_key=label_key, representation="counts", categories=self.categories,
                           name="synthetic-nb", provenance="fully synthetic: per-type NB mixture law")

    def to_anndata(self, n_cells: int, *, seed: int = 0, label_key: str = "cell_type"):
        """Exact draws as an AnnData (counts in ``X``, types in ``obs[label_key]``)."""
        return self.dataset(n_cells, seed=seed, label_key=label_key).to_anndata()
