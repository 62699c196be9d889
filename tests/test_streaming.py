"""Large sample sets stream to disk in chunks: pooled log Z equals the in-memory estimate,
memory stays that of one chunk, and the same seed gives the same shards."""

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import boltzkit as bk
from boltzkit.errors import ConfigError, TargetError
from boltzkit.estimators import LogWeightAccumulator, log_z_from_log_weights
from boltzkit.result import iter_shards
from boltzkit.samplers.mdns import MDNS

from _stats import assert_consistent, assert_rejects


def _untrained_mdns(seed=0):
    target = bk.energies.Ising(L=3, beta=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MDNS(seed=seed, progress=False, n_unmask_steps=3).fit(target, n_steps=0), target


@pytest.mark.parametrize("chunks", [[1000], [1, 999], [10, 300, 290, 400]])
def test_accumulator_equals_in_memory_estimate(chunks):
    rng = np.random.default_rng(1)
    lw = rng.gumbel(size=sum(chunks)) * 2.0 - 30.0
    lw[5] = -np.inf  # zero-weight samples are allowed
    acc, i = LogWeightAccumulator(), 0
    for c in chunks:
        acc.update(lw[i:i + c])
        i += c
    a, b = acc.estimate(warn=False), log_z_from_log_weights(lw, warn=False)
    assert a.n == b.n
    for name in ("log_z", "stderr", "ess", "pareto_k", "max_weight"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-12, abs=1e-12), name


def test_accumulator_rejects_nan_and_empty():
    acc = LogWeightAccumulator()
    with pytest.raises(TargetError, match="no log-weights"):
        acc.estimate()
    with pytest.raises(TargetError, match="NaN"):
        acc.update(np.array([0.0, np.nan]))


def test_sample_to_pools_the_shards_and_is_reproducible(tmp_path):
    sampler, target = _untrained_mdns()
    idx = sampler.sample_to(tmp_path / "a", 30_000, batch_size=7_000)
    assert [s["n"] for s in idx["shards"]] == [7000, 7000, 7000, 7000, 2000]
    chunks = list(iter_shards(tmp_path / "a"))
    lw = np.concatenate([w for _, w in chunks])
    x = np.concatenate([s for s, _ in chunks])
    assert x.shape == (30_000, 3, 3) and set(np.unique(x)) <= {-1.0, 1.0}
    pooled = log_z_from_log_weights(lw, warn=False)
    assert idx["log_z"] == pytest.approx(pooled.log_z, abs=1e-12)
    assert idx["ess"] == pytest.approx(pooled.ess, rel=1e-12)
    # the pooled estimate is a correct one: exact log Z by enumeration, and a wrong truth fails
    exact = target.exact_log_z()
    assert_consistent(idx["log_z"], idx["log_z_stderr"], exact)
    assert_rejects(idx["log_z"], idx["log_z_stderr"], exact + 0.1)
    again, _ = _untrained_mdns()
    again.sample_to(tmp_path / "b", 30_000, batch_size=7_000)
    for (xa, wa), (xb, wb) in zip(chunks, iter_shards(tmp_path / "b")):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(wa, wb)


def test_sample_to_checks_its_input(tmp_path):
    sampler, _ = _untrained_mdns()
    with pytest.raises(ConfigError, match="batch_size"):
        sampler.sample_to(tmp_path, 10, batch_size=0)
    with pytest.raises(FileNotFoundError, match="index.json"):
        next(iter_shards(tmp_path / "missing"))


def test_streaming_a_million_samples_keeps_memory_constant(tmp_path):
    """10^6 4x4 lattice samples (64 MB as float32, 72 MB with the weights) stream with a peak
    memory growth under 40 MB (chunks of 10^5), measured as the child's peak RSS."""
    code = textwrap.dedent(f"""
        import json, resource, warnings, torch
        torch.set_num_threads(1)
        warnings.simplefilter("ignore")
        import boltzkit as bk
        from boltzkit.samplers.mdns import MDNS
        s = MDNS(seed=0, progress=False, n_unmask_steps=1).fit(bk.energies.Ising(L=4, beta=0.3), n_steps=0)
        s.sample_to({str(tmp_path / 'warm')!r}, 100_000, batch_size=100_000)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        idx = s.sample_to({str(tmp_path / 'big')!r}, 1_000_000, batch_size=100_000)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"growth_mb": (after - before) / 1024, "n": idx["n_samples"]}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["n"] == 1_000_000
    print(report)
    assert report["growth_mb"] < 40.0, report
    assert sum(s.shape[0] for s, _ in iter_shards(tmp_path / "big")) == 1_000_000
