"""Data-parallel training and pooled results with torch.distributed (gloo, 2 CPU processes).

One spawn of two ranks runs every distributed scenario (starting processes is the slow part);
the tests then check what the ranks wrote against single-process runs in this process.
"""

import gc
import json
import math
import os
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import boltzkit as bk
from boltzkit import distributed as dist
from boltzkit.estimators import log_z_from_log_weights
from boltzkit.samplers.base import TrainableSampler
from boltzkit.samplers.mdns import MDNS

from _stats import assert_consistent, assert_rejects

WORLD = 2
ISING = dict(L=3, beta=0.3)
MDNS_OPTS = dict(batch_size=64, n_unmask_steps=3, hidden=16, warmup=None, sample_batch_size=4096)


class ExactKL(TrainableSampler):
    """A tiny deterministic trainable sampler: a float64 mean-field model q fitted by forward
    KL to the exact Boltzmann distribution of an enumerable lattice. Rank r of W takes the
    configurations r, r + W, ... of the enumeration as its batch, so W ranks see exactly the
    data one process sees; the only difference is the order of floating-point sums."""

    name = "exact_kl_test"

    def _setup(self, target):
        x = _enumerate_pm1(target.domain.event_shape)  # every +-1 configuration
        p = torch.softmax(-target.energy(x).double(), 0)
        r, w = dist.rank(), dist.world_size()
        self.x = (x[r::w].reshape(x[r::w].shape[0], -1) > 0).long()
        self.p = p[r::w]
        with torch.random.fork_rng(devices=[]):  # initial weights from the shared init stream
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.gens["init"])))
            self.model = torch.nn.Linear(1, self.x.shape[1] * 2, dtype=torch.float64)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.05)

    def train_step(self):
        self.optimizer.zero_grad()
        logits = self.model(torch.ones(1, 1, dtype=torch.float64)).view(-1, 2)
        logq = torch.log_softmax(logits, -1).gather(1, self.x.T).T.sum(1)  # (B,)
        loss = -(self.p * logq).mean() * self.x.shape[0] * dist.world_size()  # = -sum_all p log q
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def _state_dict(self):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def _load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def _enumerate_pm1(shape):
    d = int(np.prod(shape))
    bits = (torch.arange(2 ** d).unsqueeze(1) >> torch.arange(d)) & 1
    return (2.0 * bits - 1.0).reshape(-1, *shape)


def _quiet_mdns(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MDNS(seed=0, progress=False, **MDNS_OPTS, **kw)


def _flat_params(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).numpy()


def _all_params(sampler):
    """Every network of a sampler (EMA copies included), flattened in attribute order."""
    out = []
    for name, v in sorted(vars(sampler).items()):
        mod = v if isinstance(v, torch.nn.Module) else getattr(v, "shadow", None)
        if name != "target" and isinstance(mod, torch.nn.Module):
            out += [p.detach().double().reshape(-1) for p in mod.parameters()]
    return torch.cat(out).numpy()


def _tiny(name):
    """(sampler, target, n_steps) of every other neural sampler, at toy size."""
    if name == "discrete_asbs":
        from boltzkit.samplers.discrete_asbs import DiscreteASBS

        return DiscreteASBS(seed=0, progress=False, n_stages=1, controller_steps=2, corrector_steps=2,
                            corrector_loss="tm", warmup_steps=2, batch_size=8, buffer_size=16,
                            n_replicates=2, resample_every=2, n_time_steps=4, hidden=8, n_layers=1,
                            n_heads=1), bk.energies.Ising(**ISING), None
    if name == "naas":
        from boltzkit.samplers.naas import NAAS

        return NAAS(seed=0, progress=False, n_time_steps=8, prior_time_steps=6, batch_size=32,
                    updates_per_step=2, prior_updates_per_step=2, train_batch_size=32), \
            bk.energies.Gaussian([1.0, -0.5]), 3
    if name == "pdns":
        from boltzkit.samplers.pdns import PDNS

        return PDNS(seed=0, progress=False, batch_size=32, hidden=8, inner_steps=2, n_replicates=2), \
            bk.energies.Ising(**ISING), 4
    if name == "tr2d2":
        from boltzkit.bio.sequences.masked_diffusion import MaskedDiffusion
        from boltzkit.rewards import RewardTarget
        from boltzkit.samplers.tr2d2 import TR2D2

        chain = np.array([[0.6, 0.2, 0.1, 0.1], [0.1, 0.5, 0.3, 0.1], [0.2, 0.2, 0.4, 0.2],
                          [0.3, 0.1, 0.1, 0.5]])
        pre = MaskedDiffusion.from_markov_chain(np.array([0.4, 0.3, 0.2, 0.1]), chain, "ACGT", 4)
        tgt = RewardTarget(pre, lambda x: ((x == 2) | (x == 3)).double().sum(-1) / 2.0, alpha=1.0,
                           name="gt")
        return TR2D2(seed=0, progress=False, n_expansions=4, n_children=8, parallel=2, resample_every=2,
                     n_replicates=2, lr=1e-2, elbo_orders=1), tgt, 3
    if name == "sc_diffusion":
        from boltzkit.bio.single_cell import SyntheticCellLaw
        from boltzkit.bio.single_cell.diffusion import SCDiffusion

        law = SyntheticCellLaw.make(n_types=3, n_genes=8, n_states=3, rank=2, seed=0)
        return SCDiffusion(seed=0, hidden=16, depth=1, sampling_steps=4, batch_size=32), \
            law.dataset(200, seed=1), 3
    if name == "stem":
        from boltzkit.bio.spatial.synthetic import make_tissue
        from boltzkit.bio.spatial.stem import Stem

        tissue = make_tissue("procedural", seed=3, size=96, spacing=12.0, patch_size=16, n_genes=4)
        return Stem(seed=1, hidden=16, depth=1, heads=2, sampling_steps=3, encoder="cnn", cnn_dim=8,
                    batch_size=8), tissue.dataset, 3
    raise KeyError(name)


def _denoiser_steps(poison_rank):
    """Three denoiser steps with gradient clipping; in the second, the loss of rank
    ``poison_rank`` is NaN. Returns the flattened parameters after each step."""
    from boltzkit.nn.ema import EMA
    from boltzkit.nn.gaussian_diffusion import GaussianDiffusion, optimize_denoiser

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dist.attach_gradient_sync(opt)
    ema, diff = EMA(model, 0.9), GaussianDiffusion(np.linspace(1e-3, 0.2, 10))
    gen = torch.Generator().manual_seed(dist.rank())
    out = []
    for step in range(3):
        poison = step == 1 and dist.rank() == poison_rank
        x0 = torch.randn(16, 3, generator=gen) * (float("nan") if poison else 1.0)
        optimize_denoiser(diff, lambda x, t: model(x), x0, generator=gen, optimizer=opt,
                          model=model, ema=ema, grad_clip=0.5)
        out.append(_flat_params(model))
    return out


OTHERS = ("discrete_asbs", "naas", "pdns", "tr2d2", "sc_diffusion", "stem")


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        rec = {}
        target = bk.energies.Ising(**ISING)
        # 1. the deterministic case: loss trajectory of the global batch
        kl = ExactKL(seed=0, progress=False).fit(target, n_steps=30)
        rec["kl_loss"] = kl.history["loss"]
        # 2. MDNS: a checkpoint at step 10, then on to step 20 on both ranks
        s = _quiet_mdns()
        s.fit(target, n_steps=10, checkpoint=os.path.join(out, "ck.pt"), checkpoint_every=10)
        rec["params_10"] = _flat_params(s.model)
        s.fit(target, n_steps=20)
        rec["params_20"] = _flat_params(s.model)
        rec["history"] = {k: list(v) for k, v in s.history.items()}
        # 3. sampling split over the ranks, pooled
        part = s.sample(dist.local_count(4001))
        rec["local_lw"] = part.log_weights.numpy()
        pooled = dist.gather_result(part)
        rec.update(log_z=pooled.log_z, stderr=pooled.log_z_stderr, ess=pooled.ess, n=pooled.n_samples,
                   world=pooled.diagnostics["world_size"], n_weights=pooled.diagnostics["n_weights"])
        # 4. streaming to one folder: per-rank shards, one index
        rec["index"] = s.sample_to(os.path.join(out, "stream"), 3001, batch_size=700)
        # 5. a one-process checkpoint (written by the fixture) resumes on two ranks
        up = _quiet_mdns()
        up.fit(target, n_steps=8, checkpoint=os.path.join(out, "ck1.pt"))
        rec["upscaled"] = {"step": up.step, "params": _flat_params(up.model),
                           "train_state": up.gens["train"].get_state().numpy(),
                           "n_loss": len(up.history["loss"])}
        # 6. unweighted MCMC chains pool as independent runs
        from boltzkit.samplers.mcmc import HeatBath

        mc = HeatBath(seed=0, progress=False, n_chains=8).fit(target, n_steps=20)
        mc_part = mc.sample(dist.local_count(801))
        mc_pooled = dist.gather_result(mc_part)
        rec["mcmc"] = {"ess": mc_part.ess, "pooled_ess": mc_pooled.ess, "n": mc_pooled.n_samples,
                       "samples": mc_part.samples.numpy(), "pooled": mc_pooled.samples.numpy()}
        # 7. every other neural sampler: a few data-parallel steps
        for name in OTHERS:
            other, tgt, n = _tiny(name)
            other.fit(tgt, n_steps=0)
            before = _all_params(other)
            other.fit(tgt) if n is None else other.fit(tgt, n_steps=n)
            rec[name] = {"before": before, "after": _all_params(other), "step": other.step,
                         "loss": list(other.history.get("loss", []))}
        # 8. a local non-finite loss: every rank skips the step together (no hang, replicas equal)
        rec["all_true"] = [dist.all_true(rank == 1), dist.all_true(True)]
        rec["denoiser"] = _denoiser_steps(poison_rank=1)
        torch.save(rec, os.path.join(out, f"rank{rank}.pt"))
    finally:
        # Free every tensor still tied to gloo work before tearing it down: without this, about
        # one exit in ten aborted ("terminate called without an active exception").
        rec = s = kl = part = pooled = other = mc = mc_part = mc_pooled = up = None
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    _quiet_mdns().fit(bk.energies.Ising(**ISING), n_steps=5, checkpoint=out / "ck1.pt")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    recs = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return recs, out


def test_two_ranks_follow_the_single_process_loss_trajectory(ranks):
    """2 ranks x half the batch == 1 process x the whole batch, step by step. The model is
    float64 and the data are identical, so only the order of the sums differs: rtol 1e-10."""
    recs, _ = ranks
    target = bk.energies.Ising(**ISING)
    one = ExactKL(seed=0, progress=False).fit(target, n_steps=30).history["loss"]
    np.testing.assert_allclose(recs[0]["kl_loss"], one, rtol=1e-10)
    np.testing.assert_array_equal(recs[0]["kl_loss"], recs[1]["kl_loss"])  # ranks log the mean
    assert one[-1] < one[0] - 0.5  # it is a real optimization, not a constant
    # negative control: a run that sees only rank 0's half (no all-reduce) leaves the trajectory
    half = _HalfKL(seed=0, progress=False).fit(target, n_steps=30).history["loss"]
    assert np.max(np.abs(np.asarray(half) - np.asarray(one)) / np.abs(one)) > 1e-3


class _HalfKL(ExactKL):
    """ExactKL on rank 0's half of the data only, as if the gradients were never averaged."""

    def _setup(self, target):
        super()._setup(target)
        self.x, self.p = self.x[0::2], self.p[0::2]

    def train_step(self):
        self.optimizer.zero_grad()
        logits = self.model(torch.ones(1, 1, dtype=torch.float64)).view(-1, 2)
        logq = torch.log_softmax(logits, -1).gather(1, self.x.T).T.sum(1)
        loss = -(self.p * logq).sum() * 2.0
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}


def test_ranks_stay_identical_and_draw_independent_streams(ranks):
    recs, _ = ranks
    for key in ("params_10", "params_20"):  # averaged gradients keep the replicas equal
        np.testing.assert_array_equal(recs[0][key], recs[1][key])
    assert not np.array_equal(recs[0]["params_10"], recs[0]["params_20"])  # training moved them
    assert recs[0]["history"] == recs[1]["history"]
    # per-rank streams: the two ranks' samples are different draws
    a, b = recs[0]["local_lw"], recs[1]["local_lw"]
    assert a.size == 2001 and b.size == 2000
    assert not np.array_equal(a[:100], b[:100])


@pytest.mark.parametrize("name", OTHERS)
def test_every_neural_sampler_trains_data_parallel(ranks, name):
    """Each rank trains on its own batches; averaged gradients keep the replicas identical
    (they would drift apart within one step otherwise, since the ranks' data differ)."""
    a, b = ranks[0][0][name], ranks[0][1][name]
    assert a["step"] == b["step"] > 0 and a["loss"] == b["loss"] and np.isfinite(a["loss"]).all()
    np.testing.assert_array_equal(a["after"], b["after"])
    assert not np.array_equal(a["before"], a["after"])  # the networks did train


def test_gathered_log_z_is_that_of_the_concatenated_weights(ranks):
    recs, _ = ranks
    lw = np.concatenate([r["local_lw"] for r in recs])
    est = log_z_from_log_weights(lw, warn=False)
    for r in recs:  # every rank holds the pooled estimate
        assert r["n"] == r["n_weights"] == 4001 and r["world"] == WORLD
        assert r["log_z"] == pytest.approx(est.log_z, abs=1e-12)
        assert r["stderr"] == pytest.approx(est.stderr, rel=1e-12)
        assert r["ess"] == pytest.approx(est.ess, rel=1e-12)
    exact = bk.energies.Ising(**ISING).exact_log_z()
    assert_consistent(recs[0]["log_z"], recs[0]["stderr"], exact)
    assert_rejects(recs[0]["log_z"], recs[0]["stderr"], exact + 0.3)  # ~8 error bars off
    # the pooled error bar is that of 4001 samples, not of one rank's 2000
    half = log_z_from_log_weights(recs[0]["local_lw"], warn=False)
    assert est.stderr < 0.8 * half.stderr


def test_one_process_checkpoint_resumes_on_two_ranks(ranks):
    """Rank 1 did not exist when the checkpoint was written: it gets fresh streams (derived
    from the seed and the step), never a copy of rank 0's, and the replicas stay identical."""
    a, b = ranks[0][0]["upscaled"], ranks[0][1]["upscaled"]
    assert a["step"] == b["step"] == 8 and a["n_loss"] == 8
    np.testing.assert_array_equal(a["params"], b["params"])
    assert not np.array_equal(a["train_state"], b["train_state"])


def test_unweighted_mcmc_results_pool_as_independent_runs(ranks):
    recs, _ = ranks
    a, b = recs[0]["mcmc"], recs[1]["mcmc"]
    assert a["n"] == 801 and a["pooled_ess"] == pytest.approx(a["ess"] + b["ess"], rel=1e-12)
    np.testing.assert_array_equal(a["pooled"], np.concatenate([a["samples"], b["samples"]]))
    assert not np.array_equal(a["samples"][:400], b["samples"][:400])  # independent chains


def test_two_rank_checkpoint_resumes_on_one_process(ranks):
    recs, out = ranks
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".", "ck"))) == ["ck.pt", "ck1.pt"]
    state = torch.load(out / "ck.pt", weights_only=True)
    assert state["world_size"] == WORLD and len(state["rank_generators"]) == WORLD and state["step"] == 10
    target = bk.energies.Ising(**ISING)
    s = _quiet_mdns()
    s.fit(target, n_steps=10, checkpoint=out / "ck.pt")  # loads, nothing left to train
    assert s.step == 10
    np.testing.assert_array_equal(_flat_params(s.model), recs[0]["params_10"])
    assert s.history["loss"] == recs[0]["history"]["loss"][:10]
    for k, g in s.gens.items():  # rank 0's streams carry on
        assert torch.equal(g.get_state(), state["generators"][k])
    s.fit(target, n_steps=20)
    assert s.step == 20 and len(s.history["loss"]) == 20 and all(map(math.isfinite, s.history["loss"]))


def test_sample_to_on_two_ranks_writes_one_pooled_index(ranks):
    recs, out = ranks
    from boltzkit.result import iter_shards

    idx = json.loads((out / "stream" / "index.json").read_text())
    assert idx == json.loads(json.dumps(recs[0]["index"], default=str)) and idx["world_size"] == WORLD
    names = [sh["file"] for sh in idx["shards"]]
    assert names[0].startswith("shard_r000_") and names[-1].startswith("shard_r001_")
    assert [sh["n"] for sh in idx["shards"]] == [700, 700, 101, 700, 700, 100]
    lw = np.concatenate([w for _, w in iter_shards(out / "stream")])
    est = log_z_from_log_weights(lw, warn=False)
    assert lw.size == 3001
    assert idx["log_z"] == pytest.approx(est.log_z, abs=1e-12)
    assert idx["log_z_stderr"] == pytest.approx(est.stderr, rel=1e-10)
    assert idx["ess"] == pytest.approx(est.ess, rel=1e-10)


def test_a_non_finite_loss_on_one_rank_skips_the_step_on_every_rank(ranks):
    recs, _ = ranks
    assert recs[0]["all_true"] == recs[1]["all_true"] == [False, True]
    a, b = recs[0]["denoiser"], recs[1]["denoiser"]
    for pa, pb in zip(a, b):  # the replicas stay identical through the skipped step
        np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(a[1], a[0])  # step 2 was skipped on both ranks
    assert not np.array_equal(a[2], a[1])  # and training went on afterwards
    assert dist.all_true(True) and not dist.all_true(False)  # one process: the flag itself


def test_accumulators_merge_like_concatenation():
    from boltzkit.estimators import LogWeightAccumulator

    rng = np.random.default_rng(3)
    parts = [rng.gumbel(size=n) * 2.0 + shift for n, shift in ((500, -40.0), (300, -35.0), (1, -50.0))]
    merged = LogWeightAccumulator()
    for p in parts:
        a = LogWeightAccumulator()
        a.update(p)
        merged.merge(a)
    merged.merge(LogWeightAccumulator())  # an empty rank changes nothing
    m, ref = merged.estimate(warn=False), log_z_from_log_weights(np.concatenate(parts), warn=False)
    for name in ("log_z", "stderr", "ess", "pareto_k", "max_weight"):
        assert getattr(m, name) == pytest.approx(getattr(ref, name), rel=1e-12, abs=1e-12), name
    assert m.n == 801


def test_rank_streams_derive_from_the_one_seed():
    from boltzkit._utils import rank_generators, spawn_generators

    names = ("init", "train", "sample")
    base = spawn_generators(7, names)
    r0, r1 = rank_generators(7, names, rank=0), rank_generators(7, names, rank=1)
    draw = {k: [torch.rand(3, generator=g) for g in (base[k], r0[k], r1[k])] for k in names}
    for k in names:
        assert torch.equal(draw[k][0], draw[k][1])  # rank 0 = the single-process streams
    assert torch.equal(draw["init"][0], draw["init"][2])  # shared: identical networks
    assert not torch.equal(draw["train"][0], draw["train"][2])
    again = rank_generators(7, names, rank=1)
    assert torch.equal(torch.rand(3, generator=again["train"]), draw["train"][2])


def test_single_process_helpers_are_no_ops():
    assert (dist.rank(), dist.world_size(), dist.is_main(), dist.init()) == (0, 1, True, False)
    lw = torch.randn(10, dtype=torch.float64)
    assert torch.equal(dist.softmax_across_ranks(lw), torch.softmax(lw, 0))
    np.testing.assert_array_equal(dist.all_gather_log_weights(lw), lw.numpy())
    assert dist.local_count(7) == 7


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun launch tested on Linux")
def test_torchrun_cli_writes_one_result(tmp_path):
    """``torchrun --nproc_per_node=2 -m boltzkit sample`` trains on both ranks, and rank 0
    alone prints and writes the pooled Result."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "res.npz"
    cmd = [torchrun, "--nproc_per_node=2", f"--master_port={_free_port()}", "-m", "boltzkit", "sample",
           "ising", "--L", "3", "--beta", "0.3", "--method", "mdns", "--n-steps", "5", "--n-samples",
           "1001", "--seed", "0", "--quiet", "--out", str(out), "--option", "n_unmask_steps=3",
           "--option", "hidden=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("boltzkit Result") == 1 and proc.stdout.count("saved") == 1
    res = bk.Result.load(out)
    assert res.n_samples == 1001 and res.diagnostics["world_size"] == 2
    est = log_z_from_log_weights(res.log_weights, warn=False)
    assert res.log_z == pytest.approx(est.log_z, abs=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.npz"]
    json.dumps(res.diagnostics, default=str)
