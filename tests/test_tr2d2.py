"""Tests of TR2-D2 (tree-search guided WDCE fine-tuning of a masked diffusion model).

The exact toy: sequences of length 6 over ACGT from a known Markov chain. The pretrained model is
the chain's exact denoiser (``MaskedDiffusion.from_markov_chain``), so with one position per
step its law *is* the chain, and the tilted target p*(x) ~ p_chain(x) exp(r(x)/alpha) and its
normalizer are enumerated over the 4^6 states, independently of the sampler. The fine-tuned
policy's own law is computed exactly with ``exact_log_prob`` (tested in test_masked_diffusion).
"""

import itertools
import math

import numpy as np
import pytest
import torch

import boltzkit as bk
from boltzkit.errors import ConfigError, IncompatibleMethodError, TargetError
from boltzkit.bio.sequences.masked_diffusion import MaskedDiffusion
from boltzkit.bio.sequences.metrics import best_of_n
from boltzkit.rewards import RewardTarget
from boltzkit.samplers.tr2d2 import TR2D2, ParetoArchive, TopKBuffer, TR2D2Config, dominated

from _stats import assert_consistent, assert_rejects, z_limit

L, ALPHA = 6, 0.5
P0 = np.array([0.4, 0.3, 0.2, 0.1])
T = np.array([[0.6, 0.2, 0.1, 0.1], [0.1, 0.5, 0.3, 0.1], [0.2, 0.2, 0.4, 0.2], [0.3, 0.1, 0.1, 0.5]])
STATES = torch.tensor(list(itertools.product(range(4), repeat=L)))
FAST = dict(n_expansions=8, n_children=16, parallel=4, resample_every=5, n_replicates=2, lr=1e-2,
            elbo_orders=1)


def gt_count(x):
    """Reward: half the number of G or T letters."""
    return ((x == 2) | (x == 3)).double().sum(-1) / 2.0


def chain_log_prob(x):
    x = np.asarray(x)
    return np.log(P0[x[:, 0]]) + np.log(T[x[:, :-1], x[:, 1:]]).sum(1)


def tilted(alpha=ALPHA, reward=gt_count):
    """Exact p* over all states, E_p*[r] and log Z = log E_chain[exp(r/alpha)]."""
    r = reward(STATES).numpy()
    ls = chain_log_prob(STATES) + r / alpha
    log_z = float(np.logaddexp.reduce(ls))
    p = np.exp(ls - log_z)
    return p, float(p @ r), log_z


def tv(p, q):
    return 0.5 * float(np.abs(p - q).sum())


@pytest.fixture(scope="module")
def target():
    pre = MaskedDiffusion.from_markov_chain(P0, T, "ACGT", L)
    return RewardTarget(pre, gt_count, alpha=ALPHA, name="gt_count")


def _sampler(target, n_steps, seed=0, **opts):
    s = TR2D2(device="cpu", seed=seed, progress=False, **{**FAST, **opts})
    return s.fit(target, n_steps=n_steps)


def _perturb(module, seed=1, std=0.3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen))


# ---------------------------------------------------------------------------- log-weights
def test_log_weight_is_reward_over_alpha_when_policy_is_pretrained(target):
    with pytest.warns(UserWarning, match="naive"):
        naive = _sampler(target, 0, tree_weights="naive")
    s = _sampler(target, 0)
    for sampler, search in ((naive, "mcts"), (s, "none")):
        batch = sampler.search(mode=search)
        assert batch["samples"].shape == (128, L)
        assert torch.abs(batch["log_weights"] - gt_count(batch["samples"]) / ALPHA).max() < 1e-12
    # the tree's rollouts add the selection correction, one value per selected leaf
    batch = s.search(mode="mcts")
    corr = (batch["log_weights"] - gt_count(batch["samples"]) / ALPHA).view(-1, FAST["n_children"])
    assert torch.allclose(corr, corr[:, :1].expand_as(corr), atol=1e-12, rtol=0) and corr.abs().max() > 0.1
    # the identity is exact because the pretrained law is the chain: importance sampling with
    # weights exp(r/alpha) recovers E_p*[r] and log Z
    _, mean_r, log_z = tilted()
    res = s.sample(4000)
    assert torch.abs(res.log_weights - gt_count(res.samples) / ALPHA).max() < 1e-12
    est, se = res.expectation(gt_count)
    assert_consistent(est, se, mean_r, what="E_p*[r]")
    assert_rejects(est, se, mean_r + 5 * z_limit() * se, what="E_p*[r]")
    bias = res.log_z_stderr ** 2 + 2e-3
    assert_consistent(res.log_z, res.log_z_stderr, log_z, bias=bias)
    assert_rejects(res.log_z, res.log_z_stderr, tilted(alpha=0.6)[2], bias=bias)


def test_copy_finetuning_of_a_neural_model_starts_at_the_identity():
    data = MaskedDiffusion.from_markov_chain(P0, T, "ACGT", L).sample(500, seed=2)
    ds = bk.datasets.SequenceDataset(data, "ACGT")
    pre = MaskedDiffusion.pretrain(ds, n_steps=20, seed=0, hidden=16, n_layers=1, device="cpu",
                                   progress=False)
    tgt = RewardTarget(pre, gt_count, alpha=ALPHA)
    s = _sampler(tgt, 0, finetune="copy", n_expansions=2)
    batch = s.search()
    assert torch.abs(batch["log_weights"] - gt_count(batch["samples"]) / ALPHA).max() < 1e-9
    s.fit(tgt, n_steps=3)  # one WDCE step moves the copy away from the reference: weights change
    batch = s.search()
    assert torch.abs(batch["log_weights"] - gt_count(batch["samples"]) / ALPHA).max() > 1e-4


def test_stepwise_log_weight_equals_independent_path_likelihood(target):
    with pytest.warns(UserWarning):  # naive: the tree's path weights without the selection term
        s = _sampler(target, 0, tree_weights="naive")
    _perturb(s.net, std=0.1)  # a policy different from the pretrained model
    batch = s.search()
    x, order = batch["samples"], batch["order"]
    # independent computation: log p_pre(path) = log p_chain(x) for every order (exact denoiser,
    # one position per step); log pi(path) by revealing one site at a time, one sequence at a time
    log_pi = []
    for xb, ob in zip(x[::7].tolist(), order[::7].tolist()):
        tok, total = [4] * L, 0.0
        for d in ob:
            with torch.no_grad():
                logits = s.policy_logits(torch.tensor([tok]))[0, d].double()
            total += float(torch.log_softmax(logits, -1)[xb[d]])
            tok[d] = xb[d]
        log_pi.append(total)
    indep = chain_log_prob(x[::7]) - np.array(log_pi) + gt_count(x[::7]).numpy() / ALPHA
    assert np.allclose(batch["log_weights"][::7].numpy(), indep, rtol=0, atol=1e-5)
    assert np.abs(indep - gt_count(x[::7]).numpy() / ALPHA).max() > 0.1  # the policy differs
    # unbiasedness for an arbitrary policy: E_pi[exp(ell)] = E_chain[exp(r/alpha)]
    res = s.sample(4000)
    bias = res.log_z_stderr ** 2 + 2e-3
    assert_consistent(res.log_z, res.log_z_stderr, tilted()[2], bias=bias)
    assert_rejects(res.log_z, res.log_z_stderr, tilted()[2] + 5 * z_limit() * res.log_z_stderr + bias,
                   bias=bias)


def test_tree_search_selects_high_reward_prefixes(target):
    """On-policy rollouts are draws of the pretrained chain; the tree's rollouts are tilted toward
    high reward by its selection (and more so at a lower selection temperature)."""
    r = gt_count(STATES).numpy()
    mean_pre = float(np.exp(chain_log_prob(STATES)) @ r)
    s = _sampler(target, 0, temperature=0.1)
    plain = torch.cat([s.search(mode="none")["reward"] for _ in range(8)])
    tree = torch.cat([s.search(mode="mcts")["reward"] for _ in range(8)])
    se = float(plain.std()) / math.sqrt(plain.numel())
    assert_consistent(float(plain.mean()), se, mean_pre, what="on-policy mean reward")
    se_tree = float(tree.std()) / math.sqrt(tree.numel())  # children share prefixes: approximate
    assert float(tree.mean()) > mean_pre
    assert_rejects(float(tree.mean()), se_tree, mean_pre, what="tree-search mean reward")


# ---------------------------------------------------------------------------- fine-tuning
def test_finetuning_moves_the_policy_toward_p_star(target):
    p_star, mean_star, log_z = tilted()
    r = gt_count(STATES).numpy()
    p_pre = np.exp(chain_log_prob(STATES))
    s = _sampler(target, 100, search="mcts", buffer="all")
    p_ft = np.exp(s.finetuned_model().exact_log_prob(STATES).numpy())
    tv0, tv1 = tv(p_pre, p_star), tv(p_ft, p_star)
    assert tv1 < 0.4 * tv0, (tv0, tv1)
    assert abs(p_ft @ r - mean_star) < 0.25 * abs(p_pre @ r - mean_star), (p_pre @ r, p_ft @ r, mean_star)
    # negative control: toward the wrong tilt (the reward negated) the distance grows
    p_wrong = tilted(reward=lambda x: -gt_count(x))[0]
    assert tv(p_ft, p_wrong) > tv(p_pre, p_wrong)
    # the returned samples carry exact weights: their ESS improved and E_p*[r] is recovered
    res = s.sample(3000)
    assert res.diagnostics["ess_frac"] > 0.7  # pretrained policy: about 0.2
    est, se = res.expectation(gt_count)
    assert_consistent(est, se, mean_star, what="E_p*[r] after fine-tuning")
    assert_rejects(est, se, mean_star + 5 * z_limit() * se, what="E_p*[r] after fine-tuning")
    assert res.diagnostics["reward_calls"] == 20 * 128
    assert len(res.diagnostics["strings"]) == 3000 and set(res.diagnostics["strings"][0]) <= set("ACGT")
    assert np.allclose(res.diagnostics["elbo_pretrained"][:50], chain_log_prob(res.samples[:50]))
    assert len(res.history["buffer_ess_frac"]) == 100


def test_topk_tree_search_overshoots_p_star(target):
    """The reward-filtered buffer tilts beyond p* (the documented bias of filtering), and says so."""
    p_star, mean_star, _ = tilted()
    with pytest.warns(UserWarning, match="tilts past the target p"):
        s = _sampler(target, 40, search="mcts", buffer="topk")
    p_ft = np.exp(s.finetuned_model().exact_log_prob(STATES).numpy())
    assert p_ft @ gt_count(STATES).numpy() > mean_star + 0.1
    res = s.sample(20)
    assert res.diagnostics["trains_toward_p_star"] is False and "topk" in res.diagnostics["training_bias"]


def _reward_hist(p):
    """Law of the reward (0, 0.5, ..., 3) under an exact law p over STATES."""
    return np.bincount((2 * gt_count(STATES).numpy()).astype(int), weights=p, minlength=L + 1)


def test_tree_rollouts_with_selection_correction_are_properly_weighted(target):
    """Unbiasedness of the tree's weights: with the selection correction, mean(exp(ell)) over a
    refresh is an unbiased estimate of Z = E_chain[exp(r/alpha)] and mean(exp(ell) r) of Z E_p*[r],
    even with a strongly reward-greedy selection (temperature 0.1, one leaf per batch: deep
    trees); the uncorrected ("naive", the paper's) weights are rejected by the same check."""
    _, mean_star, log_z = tilted()
    z_true = math.exp(log_z)
    opts = dict(temperature=0.1, parallel=1, n_expansions=8, n_children=8)
    for weights in ("proper", "naive"):
        with pytest.warns() if weights == "naive" else _no_warning():
            s = _sampler(target, 0, tree_weights=weights, **opts)
        gen = torch.Generator().manual_seed(0)
        z, zr, raw = [], [], []
        for _ in range(30):
            b = s.search(generator=gen)
            e = b["log_weights"].exp().numpy()
            z.append(e.mean())
            zr.append((e * b["reward"].numpy()).mean())
            raw.append(float(b["reward"].mean()))
        z, zr = np.array(z), np.array(zr)
        assert np.mean(raw) > mean_star - 0.6  # the tree's raw rollouts are far from on-policy
        check = assert_consistent if weights == "proper" else assert_rejects
        check(z.mean(), z.std(ddof=1) / math.sqrt(len(z)), z_true, what=f"Z from {weights} tree weights")
        check(zr.mean(), zr.std(ddof=1) / math.sqrt(len(zr)), z_true * mean_star,
              what=f"Z E_p*[r] from {weights} tree weights")


class _no_warning:
    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error", UserWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def test_default_finetuning_samples_p_star_and_reward_greedy_buffer_does_not(target):
    """The default (tree + every rollout with its corrected weight) fine-tunes toward p* itself:
    the exact law of the fine-tuned model has the reward law of p* (TV of the reward histograms
    below 0.12; seeds 0-3 gave 0.081, 0.027, 0.029, 0.060: training noise of 60 steps with an
    EMA of 0.9) and moves the mean reward as far as p* does (ratio 1 +- 0.2; seeds: 1.11, 0.97,
    0.97, 1.08). Negative control: the reward-greedy top-k buffer fails both (seeds 1-3: TV
    0.31-0.39, ratio 1.34-1.38)."""
    p_star, mean_star, _ = tilted()
    r = gt_count(STATES).numpy()
    mean_pre = float(np.exp(chain_log_prob(STATES)) @ r)
    for opts, ok in ((dict(), True), (dict(buffer="topk"), False)):
        with (_no_warning() if ok else pytest.warns(UserWarning)):
            s = _sampler(target, 60, ema_decay=0.9, **opts)
        p_ft = np.exp(s.finetuned_model().exact_log_prob(STATES).numpy())
        hist_tv = tv(_reward_hist(p_ft), _reward_hist(p_star))
        ratio = (p_ft @ r - mean_pre) / (mean_star - mean_pre)
        good = hist_tv < 0.12 and abs(ratio - 1) < 0.2
        assert good == ok, (opts, hist_tv, ratio)


def test_same_seed_same_result(target):
    a = _sampler(target, 6, seed=5).sample(50)
    b = _sampler(target, 6, seed=5).sample(50)
    c = _sampler(target, 6, seed=6).sample(50)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.log_weights, b.log_weights)
    assert not torch.equal(a.samples, c.samples)


# ---------------------------------------------------------------------------- buffers
def _brute_front(obj):
    keep = []
    for i, a in enumerate(obj):
        if not any(np.all(b >= a) and np.any(b > a) for b in obj):
            keep.append(i)
    return keep


def test_pareto_archive_holds_no_dominated_member():
    gen = torch.Generator().manual_seed(0)
    obj = torch.randn(300, 3, generator=gen, dtype=torch.float64)
    obj[:, 2] = -obj[:, 0] + 0.3 * obj[:, 2]  # conflicting objectives: a large front
    x = torch.randint(0, 4, (300, 20), generator=gen)  # distinct sequences
    lw = torch.zeros(300, dtype=torch.float64)
    small, large = ParetoArchive(12), ParetoArchive(1000)
    for s in range(0, 300, 30):
        for arch in (small, large):
            arch.add(x[s:s + 30], lw[s:s + 30], objectives=obj[s:s + 30], reward=obj[s:s + 30].sum(1))
            assert not dominated(arch.get()["objectives"]).any()
    assert len(small) == 12
    front = _brute_front(obj.numpy())
    assert len(large) == len(front) > 12
    assert sorted(map(tuple, large.get()["objectives"].tolist())) == sorted(map(tuple, obj[front].tolist()))
    # negative control: a top-k buffer by objective sum keeps dominated members, and the check sees it
    topk = TopKBuffer(40)
    topk.add(x, lw, objectives=obj, reward=obj.sum(1))
    assert dominated(topk.get()["objectives"]).any()


def test_topk_buffer_keeps_the_best_unique_rows():
    x = torch.tensor([[0, 0], [1, 1], [0, 0], [2, 2], [3, 3], [1, 2]])
    reward = torch.tensor([1.0, 5.0, 9.0, 3.0, float("nan"), 5.0], dtype=torch.float64)
    lw = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 2.0], dtype=torch.float64)
    buf = TopKBuffer(3)
    buf.add(x, lw, reward=reward)
    got = buf.get()
    # [0, 0] is kept once (its first copy, reward 1); NaN rejected; ties broken by log-weight
    assert got["samples"].tolist() == [[1, 2], [1, 1], [2, 2]]
    buf.add(torch.tensor([[1, 1], [3, 0]]), torch.zeros(2, dtype=torch.float64),
            reward=torch.tensor([100.0, 4.0], dtype=torch.float64))
    assert buf.get()["samples"].tolist() == [[1, 2], [1, 1], [3, 0]]  # duplicate [1, 1] rejected


def test_multi_objective_run_uses_the_pareto_archive(target):
    def two(x):
        return torch.stack([gt_count(x), ((x == 0).double().sum(-1)) / 2.0], 1)

    tgt = RewardTarget(target.model, two, alpha=ALPHA, name="two_objectives")
    s = _sampler(tgt, 2, buffer="auto", n_expansions=4)
    assert s.buffer_kind == "all"  # the default keeps the target for several objectives too
    with pytest.warns(UserWarning, match="pareto"):
        s = _sampler(tgt, 10, buffer="pareto", n_expansions=4)
    assert s.buffer_kind == "pareto"
    assert not dominated(s.buffer.get()["objectives"]).any()
    res = s.sample(20)
    assert np.asarray(res.diagnostics["objectives"]).shape == (20, 2)


def test_best_of_n_baseline(target):
    pool = target.model.sample(200, seed=4)
    top = best_of_n(target.model, gt_count, 200, 10, seed=4)  # the same pool
    assert top.shape == (10, L)
    assert torch.equal(torch.sort(gt_count(top), descending=True).values,
                       torch.sort(gt_count(pool), descending=True).values[:10])
    with pytest.raises(ConfigError):
        best_of_n(target.model, gt_count, 5, 10)


# ---------------------------------------------------------------------------- API and bad input
def test_bk_sample_chooses_tr2d2(target, tmp_path):
    assert bk.select(target).name == "tr2d2"
    res = bk.sample(target, n_samples=40, n_steps=3, seed=0, device="cpu", progress=False, **FAST)
    assert res.method == "tr2d2" and res.samples.shape == (40, L) and res.log_z is not None
    assert res.target["alpha"] == ALPHA
    back = bk.load(res.save(tmp_path / "r.npz"))
    assert back.diagnostics["strings"] == res.diagnostics["strings"]
    with pytest.raises(IncompatibleMethodError):
        bk.sample(bk.energies.Ising(L=3, beta=0.3), method="tr2d2", n_samples=4)


def test_bad_rewards_fail_before_training(target):
    pre = target.model
    with pytest.raises(TargetError, match=r"shape \(\)"):
        RewardTarget(pre, lambda x: x.double().sum())
    with pytest.raises(TargetError, match=r"\(8, 6, 2\)"):
        RewardTarget(pre, lambda x: torch.zeros(x.shape[0], L, 2))
    with pytest.raises(TargetError, match="NaN"):
        RewardTarget(pre, lambda x: torch.full((x.shape[0],), float("nan")))
    with pytest.raises(TargetError, match="floating"):
        RewardTarget(pre, lambda x: (x == 2).sum(-1))
    with pytest.raises(TargetError, match="alpha"):
        RewardTarget(pre, gt_count, alpha=0.0)
    with pytest.raises(TargetError, match="alpha"):
        RewardTarget(pre, gt_count, alpha=float("nan"))
    with pytest.raises(TargetError, match="MaskedDiffusion"):
        RewardTarget(torch.nn.Linear(2, 2), gt_count)
    with pytest.raises(TargetError, match="weights"):
        RewardTarget(pre, gt_count, weights=[1.0, 2.0])
    # a reward that turns NaN during training raises instead of training on NaN weights
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        return gt_count(x) * (float("nan") if calls["n"] > 2 else 1.0)

    tgt = RewardTarget(pre, flaky)
    with pytest.raises(TargetError, match="NaN"):
        _sampler(tgt, 5)


def test_bad_options(target):
    with pytest.raises(ConfigError, match="unknown option"):
        TR2D2(n_tree=3)
    for bad in (dict(search="beam"), dict(buffer="fifo"), dict(n_children=0), dict(lr=-1.0),
                dict(temperature=-1.0), dict(finetune="lora"), dict(n_unmask_steps=0),
                dict(tree_weights="exact"), dict(selection_floor=1.5)):
        with pytest.raises(ConfigError):
            TR2D2(**bad)
    with pytest.raises(ConfigError, match="residual"):
        _sampler(target, 0, finetune="copy")


@pytest.mark.parametrize("name", ["reward_clip", "grad_clip"])
@pytest.mark.parametrize("bad", ["x", [1.0], float("inf")])
def test_non_numeric_options_raise_config_error(name, bad):
    with pytest.raises(ConfigError, match=name):
        TR2D2Config(**{name: bad})
