"""Single-cell generation: the cell-type-conditional diffusion, the PBMC loader, metrics, baselines.

The statistical tests train a small ``sc_diffusion`` on exact draws of a synthetic law whose
per-type means, covariances and class posteriors are known in closed form
(:class:`SyntheticCellLaw`: per-type mixtures of product negative binomials with a low-rank
mean structure). Tolerances: Monte-Carlo error of the generated cells plus the sampling error
of the finite training set (which the model inherits), both estimated by bootstrap, plus a
stated model bias. Each check has a negative control: a wrong law must fail the same check.
"""

import math

import numpy as np
import pytest
import torch

import boltzkit as bk
from boltzkit.bio.single_cell import (SyntheticCellLaw, allocate, as_target, log_normalize,
                                           pbmc68k, result_to_anndata)
from boltzkit.errors import ConfigError, DatasetError, TargetError
from boltzkit.bio.single_cell.diffusion import SCDiffusion
from _stats import assert_consistent, assert_rejects, consistent

ad = pytest.importorskip("anndata")

N_TRAIN, N_GEN = 1500, 600
SMALL = dict(hidden=64, depth=2, batch_size=128, lr=2e-3, sampling_steps=50)


@pytest.fixture(scope="module")
def law():
    return SyntheticCellLaw.make(n_types=3, n_genes=8, n_states=3, rank=2, seed=0)


@pytest.fixture(scope="module")
def train(law):
    return law.dataset(N_TRAIN, seed=1)


@pytest.fixture(scope="module")
def model(train):
    torch.set_num_threads(1)  # module fixtures run before the autouse one
    return SCDiffusion(seed=0, device="cpu", **SMALL).fit(train, n_steps=600)


@pytest.fixture(scope="module")
def generated(model, law):
    return model.generate(condition={c: N_GEN for c in law.categories})


# ---------------------------------------------------------------------------- the synthetic law
def test_synthetic_law_moments_and_pmf_are_exact(law):
    # pmf of a 2-gene law sums to 1 over a grid holding all but ~1e-6 of the mass
    small = SyntheticCellLaw.make(n_types=2, n_genes=2, n_states=2, rank=1, type_effect=0.3, seed=5)
    g = np.arange(300)
    grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    for t in range(2):
        assert abs(np.exp(small.log_prob(grid, t)).sum() - 1) < 1e-4
    # exact draws against the closed-form mean and covariance
    x, t = law.sample([20000, 0, 0], seed=3)
    mu, cov = law.mean(0), law.cov(0)
    for g_ in range(law.n_genes):
        se = math.sqrt(cov[g_, g_] / x.shape[0])
        assert_consistent(x[:, g_].mean(), se, mu[g_], what=f"mean of gene {g_}")
    i, j = np.unravel_index(np.argmax(np.abs(np.triu(cov, 1))), cov.shape)
    prod = (x[:, i] - mu[i]) * (x[:, j] - mu[j])
    assert_consistent(prod.mean(), prod.std() / math.sqrt(x.shape[0]), cov[i, j], what="covariance")
    assert_rejects(prod.mean(), prod.std() / math.sqrt(x.shape[0]), 0.0, what="covariance (independent genes)")
    post = law.posterior(x[:50])
    assert np.allclose(post.sum(1), 1)


# ---------------------------------------------------------------------------- moments
def _stats(x, n_genes):
    """Per-gene means, per-gene standard deviations and the upper-triangle correlations."""
    iu = np.triu_indices(n_genes, 1)
    return np.concatenate([x.mean(0), x.std(0), np.corrcoef(x.T)[iu]])


def _truth_stats(law, t):
    c = law.cov(t)
    sd = np.sqrt(np.diag(c))
    iu = np.triu_indices(law.n_genes, 1)
    return np.concatenate([law.mean(t), sd, (c / np.outer(sd, sd))[iu]]), sd


def _moment_failures(x, labels, law, categories, n_train_per_type, bias=(0.15, 0.15, 0.12), seed=0):
    """Per type: generated mean / sd / correlation of every gene (pair) against the law's exact
    values. Allowed: z * se + bias, se from a bootstrap of the generated cells inflated by
    sqrt(1 + n_gen / n_train) for the training set's own sampling error; bias 0.15 sd for means
    and sds, 0.12 for correlations. Returns the failing entries."""
    rng = np.random.default_rng(seed)
    g = law.n_genes
    fails = []
    for t, cat in enumerate(categories):
        xt = x[labels == cat]
        s = _stats(xt, g)
        boot = np.stack([_stats(xt[rng.integers(0, len(xt), len(xt))], g) for _ in range(60)])
        se = boot.std(0) * math.sqrt(1 + len(xt) / n_train_per_type[t])
        truth, sd = _truth_stats(law, t)
        b = np.concatenate([bias[0] * sd, bias[1] * sd, np.full(g * (g - 1) // 2, bias[2])])
        for k in range(s.size):
            if not consistent(s[k], se[k], truth[k], bias=b[k]):
                fails.append((cat, k, s[k], truth[k]))
    return fails


def _scaled_law(law, factor):
    return SyntheticCellLaw(law.mu * factor, law.pi, law.theta, law.type_probs)


def _independent_law(law):
    """Same per-gene means and variances, no gene-gene covariance (one sub-state per type with
    the NB dispersion set to match the variance)."""
    mu = np.stack([law.mean(t) for t in range(law.n_types)])[:, None, :]
    var = np.stack([np.diag(law.cov(t)) for t in range(law.n_types)])
    theta = mu[:, 0] ** 2 / (var - mu[:, 0])  # per type; use the average (the test only needs corr = 0)
    return SyntheticCellLaw(mu, np.ones((law.n_types, 1)), theta.mean(0), law.type_probs)


def test_generated_moments_match_the_exact_law_per_type(law, train, generated):
    x = generated.samples.numpy().astype(np.float64)
    labels = np.asarray(generated.config["labels"])
    assert x.shape == (3 * N_GEN, law.n_genes)
    assert np.all(x >= 0) and np.all(x == np.round(x)), "count data must come back as counts"
    n_tr = [int((train.codes == t).sum()) for t in range(law.n_types)]
    fails = _moment_failures(x, labels, law, law.categories, n_tr)
    assert not fails, f"{len(fails)} moments off, e.g. {fails[:3]}"
    # negative controls: a law with 30% higher means, and one without gene-gene covariance
    assert _moment_failures(x, labels, _scaled_law(law, 1.3), law.categories, n_tr)
    wrong = _moment_failures(x, labels, _independent_law(law), law.categories, n_tr)
    assert any(k >= 2 * law.n_genes for _, k, _, _ in wrong), "correlation check has no power"


def test_label_fidelity_under_the_exact_posterior(law, generated):
    x = generated.samples.numpy().astype(np.float64)
    labels = np.asarray(generated.config["labels"])
    codes = np.array([law.categories.index(c) for c in labels])
    # Bayes accuracy of generated cells for their requested type vs that of exact draws
    hit = (law.posterior(x).argmax(1) == codes).astype(float)
    xe, te = law.sample([N_GEN] * 3, seed=11)
    hit_exact = (law.posterior(xe).argmax(1) == te).astype(float)
    se = math.hypot(hit.std() / math.sqrt(hit.size), hit_exact.std() / math.sqrt(hit_exact.size))
    assert_consistent(hit.mean(), se, hit_exact.mean(), bias=0.03, what="Bayes label accuracy")
    # negative control: the same cells read with the type names rotated (a wrong law)
    wrong = (law.posterior(x).argmax(1) == (codes + 1) % 3).astype(float)
    assert_rejects(wrong.mean(), se, hit_exact.mean(), bias=0.03, what="Bayes label accuracy")
    # a classifier trained on real cells agrees (the metric used on PBMC)
    from boltzkit.bio.single_cell.metrics import label_fidelity

    tr = law.dataset(600, seed=21)
    lf = label_fidelity(log_normalize(tr.x), tr.labels, log_normalize(x), labels)
    assert lf["label_accuracy"] > 0.85 and lf["label_macro_f1"] > 0.85


# ---------------------------------------------------------------------------- conditions and API
def test_conditions_select_labels_and_proportions(model, train):
    cats = train.categories
    one = model.generate(30, condition=cats[1])
    assert set(one.config["labels"]) == {cats[1]} and one.n_samples == 30
    many = model.generate(condition={cats[0]: 5, cats[2]: 7})
    assert many.config["labels"] == [cats[0]] * 5 + [cats[2]] * 7
    props = model.generate(200)
    expect = allocate(200, [train.label_counts()[c] for c in cats])
    assert [props.config["labels"].count(c) for c in cats] == list(expect)
    assert props.diagnostics["cells_per_label"] == dict(zip(cats, map(int, expect)))
    assert props.log_z is None and "log_z_unavailable" in props.diagnostics
    with pytest.raises(ConfigError, match="labels are"):
        model.generate(5, condition="not-a-type")
    with pytest.raises(ConfigError, match="unknown condition"):
        model.generate(condition={"nope": 3})


def test_same_seed_same_cells_and_selection(train):
    kw = dict(hidden=16, depth=1, sampling_steps=5, n_steps=5, method="sc_diffusion")
    a = bk.sample(train, n_samples=20, seed=3, device="cpu", **kw)
    b = bk.sample(train, n_samples=20, seed=3, device="cpu", **kw)
    assert a.method == "sc_diffusion"
    assert torch.equal(a.samples, b.samples)
    assert bk.select(train).name == "sc_latent"  # the count model is the default for counts
    lognormal = train.subset(np.arange(50))
    lognormal = type(train)(log_normalize(lognormal.x), lognormal.labels, gene_names=train.gene_names,
                            representation="log1p")
    assert bk.select(lognormal).name == "sc_diffusion"  # ... and cannot take log-normalised data
    c = bk.sample(train, n_samples=20, seed=4, device="cpu", **kw)
    assert not torch.equal(a.samples, c.samples)


@pytest.mark.parametrize("opts", [dict(network="dit", heads=2), dict(space="pca", n_pcs=3),
                                  dict(variance="learned_range", guidance=1.5, sampler="ddim")])
def test_variants_generate_valid_cells(train, opts):
    m = SCDiffusion(seed=0, device="cpu", hidden=16, depth=1, sampling_steps=4, **opts).fit(train, n_steps=3)
    res = m.generate(condition={"type0": 3, "type2": 2})
    x = res.samples.numpy()
    assert x.shape == (5, train.n_genes) and np.all(x >= 0) and np.all(x == np.round(x))
    assert res.config["labels"] == ["type0"] * 3 + ["type2"] * 2


def test_save_load_round_trip(model, tmp_path):
    path = tmp_path / "sc.pt"
    model.save(path)
    again = SCDiffusion.load(path, device="cpu")
    g1 = torch.Generator().manual_seed(0)
    z = torch.randn(4, again.info["dim"], generator=g1)
    y = torch.zeros(4, dtype=torch.long)
    t = torch.full((4,), 10)
    assert torch.allclose(model.ema.shadow(z, t, y), again.ema.shadow(z, t, y))
    assert again.info["categories"] == model.info["categories"]


# ---------------------------------------------------------------------------- AnnData in / out
def test_anndata_round_trip(law, generated, tmp_path):
    sc = pytest.importorskip("scanpy")
    adata = law.to_anndata(300, seed=2)
    adata.var["highly_variable"] = np.arange(adata.n_vars) % 2 == 0  # a gene annotation to keep
    ds = as_target(adata, label_key="cell_type")
    assert ds.representation == "counts" and ds.categories == law.categories
    real = ds.to_anndata()  # the real cells back with their gene table
    assert list(real.var_names) == law.gene_names
    assert real.var["highly_variable"].tolist() == adata.var["highly_variable"].tolist()
    out = result_to_anndata(generated)
    assert list(out.var_names) == law.gene_names
    assert list(out.obs["cell_type"].cat.categories) == law.categories
    assert out.obs["cell_type"].value_counts().to_dict() == {c: N_GEN for c in law.categories}
    # counts (sparse) in layers["counts"], scanpy's log-normalised values (sparse) in X
    assert np.array_equal(out.layers["counts"].toarray(), generated.samples.numpy())
    assert np.allclose(out.X.toarray(), log_normalize(generated.samples.numpy()), atol=1e-5)
    assert (out.obs["boltzkit_origin"] == "generated").all()
    # a saved and reloaded Result converts the same way
    back = result_to_anndata(bk.load(generated.save(tmp_path / "gen.npz")))
    assert (back.X != out.X).nnz == 0 and back.obs["cell_type"].equals(out.obs["cell_type"])
    # ready for scanpy: PCA, markers
    sc.pp.pca(out, n_comps=4)
    sc.tl.rank_genes_groups(out, "cell_type", method="wilcoxon")
    assert out.obsm["X_pca"].shape == (3 * N_GEN, 4)
    # a layer round trip: train on a named layer, get cells back in that layer
    adata.layers["counts"] = adata.X.copy()
    adata.X = log_normalize(adata.X)
    res = bk.sample(as_target(adata, label_key="cell_type", layer="counts"), "sc_diffusion", n_samples=6, seed=0,
                    device="cpu", hidden=16, depth=1, n_steps=3, sampling_steps=3)
    gen = result_to_anndata(res)
    assert "counts" in gen.layers and res.config["representation"] == "counts"
    assert (res.to_anndata().X != gen.X).nnz == 0
    with pytest.raises(DatasetError, match="no generated cells"):
        result_to_anndata(bk.Result(samples=torch.zeros(3, 2), diagnostics={"log_z_unavailable": "x"}))


def test_bk_sample_accepts_anndata(law):
    adata = law.to_anndata(200, seed=4)
    res = bk.sample(adata, "sc_diffusion", label_key="cell_type", n_samples=10, seed=0, device="cpu",
                    condition="type1", hidden=16, depth=1, n_steps=3, sampling_steps=3)
    assert res.config["labels"] == ["type1"] * 10 and res.config["label_key"] == "cell_type"
    out = res.to_anndata()
    assert list(out.obs["cell_type"]) == ["type1"] * 10 and list(out.var_names) == law.gene_names
    with pytest.raises(DatasetError, match="obs columns are"):
        bk.sample(adata, label_key="celltype", n_samples=4)
    with pytest.raises(ConfigError, match="labels are"):
        bk.sample(adata, label_key="cell_type", n_samples=4, condition="T cell")


def test_bad_input_fails_before_training(law):
    adata = law.to_anndata(60, seed=5)
    with pytest.raises(DatasetError, match="obs columns are \\['cell_type'\\]"):
        as_target(adata, label_key="bulk_labels")
    with pytest.raises(DatasetError, match="obs columns"):
        as_target(adata)
    bad = adata.copy()
    bad.X[3, 2] = np.nan
    with pytest.raises(DatasetError, match="NaN.*gene2"):
        as_target(bad, label_key="cell_type")
    bad = adata.copy()
    bad.X[0, 5] = -1
    with pytest.raises(DatasetError, match="negative counts.*gene5"):
        as_target(bad, label_key="cell_type")
    with pytest.raises(DatasetError, match="empty"):
        as_target(adata[:0].copy(), label_key="cell_type")
    with pytest.raises(DatasetError, match="layers are"):
        as_target(adata, label_key="cell_type", layer="counts")
    with pytest.raises(TargetError):
        as_target(np.zeros((3, 3)), label_key="x")
    ds = as_target(adata, label_key="cell_type")
    m = SCDiffusion(seed=0, device="cpu", hidden=16, depth=1, condition="B cell")
    with pytest.raises(ConfigError, match="labels are \\['type0', 'type1', 'type2'\\]"):
        m.fit(ds, n_steps=50)
    assert m.step == 0
    with pytest.raises(ConfigError, match="condition"):
        SCDiffusion(condition=3)
    with pytest.raises(ConfigError, match="guidance"):
        SCDiffusion(guidance=-1.0)


# ---------------------------------------------------------------------------- PBMC
def test_pbmc_counts_are_integers_and_reproduce_the_stored_values():
    sc = pytest.importorskip("scanpy")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw_file = sc.datasets.pbmc68k_reduced()
    a = pbmc68k(raw_file)
    from scipy import sparse

    assert sparse.issparse(a.X) and sparse.issparse(a.layers["counts"])  # kept sparse, as in the file
    counts = a.layers["counts"].toarray()
    assert a.shape == (700, 765) and a.obs["bulk_labels"].nunique() == 10
    assert np.all(counts == np.round(counts)) and counts.min() == 0 and counts.max() == 259
    stored = raw_file.raw.X.toarray()
    x = a.X.toarray()
    # the file stores log1p(counts / n_counts * 1e4) rounded to 3 decimals
    assert np.abs(x - stored).max() <= 5e-4 + 1e-5
    assert np.abs(x - stored).max() > 1e-4  # (the values were rounded: not a copy)
    assert "scaled" in a.layers and a.layers["scaled"].min() < 0
    # the scanpy >= 1.13 layout (counts in a layer, no raw) gives the same result
    new = ad.AnnData(X=x.copy(), obs=raw_file.obs.copy(), var=raw_file.var.copy())
    new.layers["counts"] = sparse.csr_matrix(counts)
    b = pbmc68k(new)
    assert np.array_equal(b.layers["counts"].toarray(), counts) and np.allclose(b.X.toarray(), x, atol=1e-6)
    ds = as_target(a, label_key="bulk_labels")
    assert ds.representation == "log1p" and ds.size_factors is not None and ds.is_sparse
    assert as_target(a, label_key="bulk_labels", layer="auto").representation == "counts"
    with pytest.raises(DatasetError, match="negative values"):
        as_target(a, label_key="bulk_labels", layer="scaled")


# ---------------------------------------------------------------------------- metrics
def test_two_sample_metrics_against_known_answers():
    from boltzkit.bio.single_cell import metrics as m

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((150, 5)), rng.standard_normal((150, 5))
    shifted = y + np.array([0.6, 0, 0, 0, 0])
    _, p_same = m.mmd2(x, y, n_perm=200)
    _, p_diff = m.mmd2(x, shifted, n_perm=200)
    assert p_same > 0.01 and p_diff <= 0.01
    # 1-D: exact W2 = quantile matching = sliced W2 (one direction, up to sign)
    a, b = rng.standard_normal((80, 1)), 2 + rng.standard_normal((80, 1))
    w_exact = math.sqrt(np.mean((np.sort(a[:, 0]) - np.sort(b[:, 0])) ** 2))
    assert abs(m.wasserstein2(a, b) - w_exact) < 1e-12
    assert abs(m.sliced_wasserstein(a, b, n_proj=4) - w_exact) < 1e-9
    assert abs(m.energy_distance(x, y)) < 0.1 < m.energy_distance(x, shifted + 1)
    assert abs(m.classifier_auc(x, y) - 0.5) < 0.12 and m.classifier_auc(x, y + 3) > 0.95
    assert m.correlation_error(x, x) == 0 and m.correlation_error(x, x @ np.triu(np.ones((5, 5)))) > 1
    labels = np.repeat(["a", "b"], 75)
    two = np.where(labels[:, None] == "a", 0.0, 2.0) + np.abs(x)
    mc = m.moment_correlations(two, labels, two, labels)
    assert mc["mean_pearson"] == pytest.approx(1.0) and mc["var_pearson"] == pytest.approx(1.0)


def test_marker_overlap_and_floor(law):
    pytest.importorskip("scanpy")
    from boltzkit.bio.single_cell import metrics as m

    tr, te = law.dataset(900, seed=7).split(0.3, seed=0)
    genes = law.gene_names
    same = m.marker_overlap(log_normalize(te.x), te.labels, log_normalize(te.x), te.labels, genes, top=3)
    assert same["marker_jaccard"] == 1.0
    shuffled = np.random.default_rng(0).permutation(te.labels)
    off = m.marker_overlap(log_normalize(te.x), te.labels, log_normalize(te.x), shuffled, genes, top=3)
    assert off["marker_jaccard"] < 0.8
    ref, fl = te.split(0.5, seed=1)
    res = m.evaluate_with_floor(log_normalize(tr.x), tr.labels, log_normalize(ref.x), ref.labels,
                                log_normalize(fl.x), fl.labels, log_normalize(ref.x), ref.labels, genes,
                                n_perm=20, n_pcs=8, markers=False)
    assert res["floor"]["label_accuracy"] > 0.75  # types are separable (on counts, Bayes accuracy 0.98)
    # the reference against itself: unbiased MMD^2 < 0, below the floor's
    assert res["model"]["mmd2"] < 0 and res["model"]["mmd2"] < res["floor"]["mmd2"]
    assert set(res["model"]) == set(res["floor"])


# ---------------------------------------------------------------------------- baselines
def test_baselines(law):
    from boltzkit.bio.single_cell.baselines import (ConditionalVAEBaseline, GaussianPCABaseline,
                                           NegativeBinomialBaseline)

    one_state = SyntheticCellLaw(law.mu[:, :1], np.ones((3, 1)), law.theta, law.type_probs)
    ds = one_state.dataset(3000, seed=8)
    want = {c: 2000 for c in ds.categories}
    x, labels = NegativeBinomialBaseline(seed=0).fit(ds).generate(want)
    assert np.all(x == np.round(x)) and list(labels).count("type2") == 2000
    # per-gene NB is the true model here: means match (MC + fit error), a 20% shift does not
    x2 = x[labels == "type2"]
    n_fit = int((ds.codes == 2).sum())
    for g in range(law.n_genes):
        sd = math.sqrt(one_state.cov(2)[g, g])
        se = sd * math.sqrt(1 / x2.shape[0] + 1 / n_fit)
        assert_consistent(x2[:, g].mean(), se, one_state.mean(2)[g], what=f"NB baseline mean {g}")
    g = int(np.argmax(one_state.mean(2)))
    se = math.sqrt(one_state.cov(2)[g, g] * (1 / x2.shape[0] + 1 / n_fit))
    assert_rejects(x2[:, g].mean(), se, 1.2 * one_state.mean(2)[g], what="NB baseline mean")
    xg, lg = GaussianPCABaseline(n_pcs=4, seed=0).fit(ds).generate(want)
    assert xg.shape == (6000, law.n_genes) and np.all(xg >= 0)
    xv, lv = ConditionalVAEBaseline(n_steps=30, hidden=16, latent=2).fit(ds).generate({"type0": 7})
    assert xv.shape == (7, law.n_genes) and set(lv) == {"type0"} and np.all(xv == np.round(xv))
    with pytest.raises(ConfigError, match="unknown label"):
        NegativeBinomialBaseline().fit(ds).generate({"zzz": 1})
