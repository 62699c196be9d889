"""Stem (conditional diffusion for spot expression), the spatial loader and the bio helpers.

The statistical test trains a small Stem on a tiny *synthetic* tissue whose law is known
(boltzkit.bio.spatial.synthetic): spots with a hidden state have a bimodal expression law given their
patch. The exact truths are the law's mixing probabilities pi(patch) and, from them, the
binomial probability that k samples show both modes. A deterministic regressor, the negative
control, cannot show two modes.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import boltzkit as bk
from boltzkit.bio.spatial import metrics
from boltzkit.bio.spatial.baselines import EmbeddingRegressor, NearestNeighbourRetrieval
from boltzkit.bio.spatial.encoders import RGB_FROM_HED, StainStatsEncoder, dihedral, stain_concentrations
from boltzkit.bio.spatial.synthetic import make_tissue
from boltzkit.datasets import SpatialDataset, result_to_anndata, select_genes
from boltzkit.errors import ConfigError, DatasetError, IncompatibleMethodError
from boltzkit.bio.spatial.stem import Stem
from _stats import assert_consistent, assert_rejects

GEO = dict(size=160, spacing=10.0, patch_size=20)
LAW = dict(n_genes=8, n_module=2, delta=3.5)


def _with_features(tissue):
    """The slide with the law's visible features as precomputed embeddings."""
    d = tissue.dataset
    return SpatialDataset(expression=d.expression, gene_names=d.gene_names, coords=d.coords,
                          embeddings=tissue.features, obs_names=d.obs_names, name=d.name,
                          provenance=d.provenance)


@pytest.fixture(scope="module")
def tissues():
    train = make_tissue("procedural", seed=1, **GEO, **LAW)
    test = make_tissue("procedural", seed=2, law=train.law, **GEO)
    return train, test


# ---------------------------------------------------------------------------- statistics
def test_stem_recovers_a_bimodal_spot_law_that_a_regressor_cannot(tissues):
    train, test = tissues
    law = train.law
    order = np.argsort(test.pi)
    idx = order[np.linspace(0, order.size - 1, 60).astype(int)]  # spots across the range of pi
    cond = _with_features(test).subset(idx)
    k = 32
    model = Stem(seed=0, device="cpu", encoder="precomputed", n_steps=600, hidden=32, depth=2, heads=2,
                 standardize=True, sampling_steps=50).fit(_with_features(train))
    res = model.predict(cond, n_samples=k)
    assert res.samples.shape == (60, k, law.n_genes)
    pi = test.pi[idx]
    modes = law.module_modes(test.features[idx])
    score = res.samples.numpy()[..., law.module].mean(-1)  # (spots, k) module score
    d0, d1 = np.abs(score - modes[:, :1]), np.abs(score - modes[:, 1:])
    high = (d1 < d0).mean(1)  # share of a spot's samples in the u = 1 mode

    # 1. the mixture weight follows the image: per pi-bin share in the high mode vs exact pi
    bins = {"low": pi < 0.3, "mid": (pi >= 0.3) & (pi <= 0.7), "high": pi > 0.7}
    for name, m in bins.items():
        assert m.sum() >= 8
        se = high[m].std(ddof=1) / math.sqrt(m.sum())
        assert_consistent(high[m].mean(), se, pi[m].mean(), bias=0.08, what=f"P(high mode), {name} pi")
    lo, hi = bins["low"], bins["high"]
    contrast = high[hi].mean() - high[lo].mean()
    se_c = math.hypot(high[hi].std(ddof=1) / math.sqrt(hi.sum()), high[lo].std(ddof=1) / math.sqrt(lo.sum()))
    assert_consistent(contrast, se_c, pi[hi].mean() - pi[lo].mean(), bias=0.12, what="high-low contrast")
    # negative control: a model that ignores the image has no contrast
    assert_rejects(contrast, se_c, 0.0, bias=0.12, what="high-low contrast")
    # 2. bimodal spots show both modes (>= 10% of the k samples each): exact binomial truth
    mid = bins["mid"]
    lo_c, hi_c = math.ceil(0.1 * k), math.floor(0.9 * k)
    p_both = (stats.binom.cdf(hi_c, k, pi[mid]) - stats.binom.cdf(lo_c - 1, k, pi[mid])).mean()
    both = ((high[mid] * k >= lo_c) & (high[mid] * k <= hi_c)).astype(float)
    se_b = max(both.std(ddof=1), 0.1) / math.sqrt(both.size)
    assert_consistent(both.mean(), se_b, p_both, bias=0.1, what="bimodal spots showing both modes")
    # 3. the modes sit where the law puts them (gap about 2.5 log2 units)
    dev = (score - np.where(d1 < d0, modes[:, 1:], modes[:, :1])).ravel()
    assert_consistent(dev.mean(), dev.std(ddof=1) / math.sqrt(dev.size), 0.0, bias=0.2,
                      what="module score minus its mode centre")

    # negative control: a regressor on the same embeddings gives one point per spot
    reg = EmbeddingRegressor("precomputed", n_steps=400, seed=0).fit(_with_features(train))
    rs = reg.predict(cond)[:, law.module].mean(-1)
    reg_both = np.zeros(int(mid.sum()))  # one point is in one mode: never both
    assert np.isfinite(rs).all()
    assert_rejects(reg_both.mean(), se_b, p_both, bias=0.1, what="regressor: bimodal spots showing both modes")


# ---------------------------------------------------------------------------- end to end
def test_bk_sample_on_images_end_to_end(tmp_path):
    train = make_tissue("procedural", seed=3, size=96, spacing=12.0, patch_size=16, n_genes=4)
    test = make_tissue("procedural", seed=4, size=96, spacing=12.0, patch_size=16, law=train.law)
    opts = dict(n_samples=3, n_steps=25, seed=5, device="cpu", hidden=16, depth=1, heads=2,
                sampling_steps=4, batch_size=16)
    assert bk.select(train.dataset).name == "stem"
    res = bk.sample(train.dataset, condition=test.dataset, **opts)
    n = test.dataset.n_spots
    assert res.samples.shape == (n, 3, 4) and res.method == "stem"
    assert res.log_z is None and "normalizing constant" in res.diagnostics["log_z_unavailable"]
    assert res.config["gene_names"] == train.dataset.gene_names
    assert res.config["condition"]["obs_names"] == test.dataset.obs_names
    assert "synthetic" in res.diagnostics["training_data"]
    assert len(res.history["loss"]) == 25 and np.isfinite(res.history["loss"]).all()
    again = bk.sample(train.dataset, condition=test.dataset, **opts)
    assert torch.equal(res.samples, again.samples)  # same seed, same result
    other = bk.sample(train.dataset, condition=test.dataset, **{**opts, "seed": 6})
    assert not torch.equal(res.samples, other.samples)
    loaded = bk.load(res.save(tmp_path / "res.npz"))
    assert torch.equal(loaded.samples, res.samples) and loaded.config["gene_names"] == res.config["gene_names"]

    # fit / save / load / predict on a new slide
    model = Stem(seed=1, device="cpu", n_steps=10, hidden=16, depth=1, heads=2, sampling_steps=3,
                 encoder="cnn", cnn_dim=8, batch_size=8).fit(train.dataset)
    model.save(tmp_path / "stem.pt")
    a = model.predict(test.dataset, n_samples=2)
    back = Stem.load(tmp_path / "stem.pt", device="cpu")
    b = back.predict(test.dataset, n_samples=2)
    assert torch.equal(a.samples, b.samples)


def test_result_to_anndata(tissues):
    pytest.importorskip("anndata")
    train, test = tissues
    model = Stem(seed=0, device="cpu", encoder="precomputed", n_steps=5, hidden=16, depth=1, heads=2,
                 sampling_steps=3).fit(_with_features(train))
    cond = _with_features(test).subset(np.arange(7)[::-1])  # reversed order must be kept
    res = model.predict(cond, n_samples=3)
    ad = result_to_anndata(res)
    assert list(ad.obs_names) == cond.obs_names
    assert list(ad.var_names) == train.dataset.gene_names
    np.testing.assert_allclose(ad.X, res.samples.numpy().mean(1), rtol=1e-6)
    np.testing.assert_allclose(ad.layers["sample_2"], res.samples.numpy()[:, 2])
    np.testing.assert_allclose(ad.obsm["spatial"], cond.coords)
    assert ad.uns["boltzkit"]["scale"] == "log2(1+x)"


# ---------------------------------------------------------------------------- loaders
def _visium_adata(rng, n=50, g=30, image_side=256, scalef=0.5, diameter=40.0):
    ad = pytest.importorskip("anndata")
    counts = rng.poisson(3.0, size=(n, g)).astype(np.float32)
    counts[7] = 0  # an empty spot: dropped
    a = ad.AnnData(counts)
    a.obs_names = [f"bc{i}" for i in range(n)]
    a.var_names = [f"G{j}" for j in range(g)]
    full = rng.uniform(20, image_side / scalef - 20, size=(n, 2))
    a.obsm["spatial"] = full
    image = rng.integers(0, 256, size=(image_side, image_side, 3), dtype=np.uint8)
    a.uns["spatial"] = {"lib1": {"images": {"hires": image},
                                 "scalefactors": {"tissue_hires_scalef": scalef,
                                                  "spot_diameter_fullres": diameter}}}
    return a, counts, full, image


def test_from_anndata_visium_layout():
    rng = np.random.default_rng(0)
    a, counts, full, image = _visium_adata(rng)
    ds = SpatialDataset.from_anndata(a)
    keep = np.ones(50, bool)
    keep[7] = False
    assert ds.n_spots == 49 and ds.meta["n_dropped_empty"] == 1
    assert ds.gene_names == [f"G{j}" for j in range(30)]  # <= 200 genes: all kept, in order
    np.testing.assert_allclose(ds.expression, np.log2(1 + counts[keep]), rtol=1e-6)
    np.testing.assert_allclose(ds.coords, full[keep] * 0.5)
    assert ds.patch_size == 112  # max(224, 40) full-res pixels x 0.5
    p = ds.patches(np.arange(ds.n_spots))
    assert p.shape == (49, 3, 112, 112) and p.dtype == torch.uint8
    # a patch equals the crop of the image around the spot (where it lies inside)
    i = int(np.argmin(np.abs(ds.coords - 128).sum(1)))
    x0 = int(np.floor(ds.coords[i, 0] - 56 + 0.5))
    y0 = int(np.floor(ds.coords[i, 1] - 56 + 0.5))
    ys, xs = slice(max(y0, 0), min(y0 + 112, 256)), slice(max(x0, 0), min(x0 + 112, 256))
    crop = image[ys, xs].transpose(2, 0, 1)
    got = p[i].numpy()[:, ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    np.testing.assert_array_equal(got, crop)
    assert not np.array_equal(got, np.roll(crop, 1, axis=2))  # negative control: off by a pixel
    sub = SpatialDataset.from_anndata(a, genes=["G3", "G1"], patch_size=60)
    assert sub.gene_names == ["G3", "G1"] and sub.patch_size == 30
    np.testing.assert_allclose(sub.expression[:, 0], np.log2(1 + counts[keep, 3]), rtol=1e-6)


def test_from_hest_layout(tmp_path):
    pytest.importorskip("anndata")
    from PIL import Image

    rng = np.random.default_rng(1)
    a, counts, full, image = _visium_adata(rng, scalef=1.0)
    a.uns["spatial"] = {"ST": {"scalefactors": {"spot_diameter_fullres": 20.0}}}
    (tmp_path / "st").mkdir()
    (tmp_path / "wsis").mkdir()
    a.write_h5ad(tmp_path / "st" / "S1.h5ad")
    Image.fromarray(image).save(tmp_path / "wsis" / "S1.png")
    ds = SpatialDataset.from_hest(tmp_path, "S1", patch_size=32)
    assert ds.name == "S1" and ds.n_spots == 49 and ds.patch_size == 32
    np.testing.assert_array_equal(ds.images["ST"], image)
    np.testing.assert_allclose(ds.coords, full[np.arange(50) != 7])


def test_select_genes_follows_the_definition():
    rng = np.random.default_rng(2)
    g = 300
    names = [f"G{j}" for j in range(g)]
    names[5], names[9], names[11] = "MT-CO1", "RPL3", "RPS6"
    counts = rng.negative_binomial(2, 0.5, size=(80, g)) * rng.uniform(0.1, 5, g)
    keep = select_genes(counts, names, 40)
    assert len(keep) == 40 and list(keep) == sorted(keep)
    # brute force from the definition
    ok = [j for j in range(g) if not names[j].startswith(("MT", "mt", "RPS", "RPL"))]
    mean = {j: counts[:, j].mean() for j in ok}
    sd = {j: counts[:, j].std() for j in ok}
    by_mean = sorted(ok, key=lambda j: -mean[j])
    by_sd = sorted(ok, key=lambda j: -sd[j])
    for kk in range(40, len(ok) + 1):
        common = set(by_mean[:kk]) & set(by_sd[:kk])
        if len(common) >= 40:
            break
    expect = sorted(sorted(common, key=lambda j: -mean[j])[:40])
    assert list(keep) == expect
    assert not {5, 9, 11} & set(keep)
    assert list(select_genes(counts[:, :30], names[:30], 200)) == list(range(30))  # all kept


def test_encoders():
    rng = np.random.default_rng(3)
    p = torch.as_tensor(rng.integers(0, 256, size=(4, 3, 16, 16), dtype=np.uint8))
    enc = StainStatsEncoder()
    e = enc(p)
    assert e.shape == (4, enc.out_dim) and torch.isfinite(e).all()
    # all features but the pooled grid are invariant under the 8 dihedral transforms
    g = enc.grid ** 2 * 3
    head = 3 * (2 + len(enc.quantiles))
    inv = torch.cat([e[:, :head], e[:, head + g:]], 1)
    for k in range(8):
        ek = enc(dihedral(p, k))
        np.testing.assert_allclose(torch.cat([ek[:, :head], ek[:, head + g:]], 1).numpy(), inv.numpy(),
                                   rtol=1e-5, atol=1e-5)
    assert len({tuple(dihedral(p, k)[0].flatten()[:40].tolist()) for k in range(8)}) == 8
    # unmixing inverts Beer-Lambert rendering (up to 8-bit rounding); white glass has no stain
    conc = np.array([0.8, 0.3, 0.2])
    rgb = np.round(256 * np.exp(-conc @ RGB_FROM_HED) - 1).astype(np.uint8)
    got = stain_concentrations(torch.as_tensor(rgb).reshape(1, 3, 1, 1))[0, :, 0, 0].numpy()
    np.testing.assert_allclose(got, conc, atol=0.02)
    assert np.abs(got - conc[[1, 0, 2]]).max() > 0.3  # negative control: stains are not interchangeable
    white = torch.full((1, 3, 8, 8), 255, dtype=torch.uint8)
    assert enc(white)[0, :3].abs().max() < 1e-6


def test_metrics_against_known_values():
    rng = np.random.default_rng(4)
    true = rng.normal(size=(200, 5))
    assert metrics.pcc_summary(true, true, ks=(2,))["pcc_all"] == pytest.approx(1.0)
    r = metrics.pearson_per_gene(true + rng.normal(size=(200, 5)), true)
    assert np.all((r > 0.5) & (r < 0.9))  # exact value 1/sqrt(2) ~ 0.71 up to noise
    assert metrics.relative_variance_distance(np.zeros_like(true) + 1, true) == pytest.approx(1.0)
    assert metrics.relative_variance_distance(2 * true, true) == pytest.approx(9.0)
    assert metrics.adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0
    assert metrics.adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    x = rng.normal(size=(30, 50, 3))
    y = rng.normal(size=(30, 50, 3))
    ed_same = metrics.energy_distance(x, y)
    ed_diff = metrics.energy_distance(x, y + 1.0)
    assert abs(ed_same.mean()) < 4 * ed_same.std() / math.sqrt(30) + 1e-12
    assert ed_diff.mean() > 0.5
    assert metrics.interval_coverage(rng.normal(size=(20, 2000, 2)), rng.normal(size=(20, 500, 2))) == \
        pytest.approx(0.8, abs=0.02)


def test_retrieval_returns_training_profiles(tissues):
    train, test = tissues
    knn = NearestNeighbourRetrieval("precomputed", k=5).fit(_with_features(train))
    s = knn.sample(_with_features(train).subset(np.arange(6)))
    assert s.shape == (6, 5, 8)
    np.testing.assert_array_equal(s[:, 0], train.dataset.expression[:6])  # nearest = itself


# ---------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_before_training(tissues):
    train, test = tissues
    ds = train.dataset
    with pytest.raises(DatasetError, match="empty"):
        SpatialDataset(expression=np.zeros((0, 3)), gene_names=["a", "b", "c"])
    with pytest.raises(DatasetError, match="outside"):
        SpatialDataset(expression=ds.expression[:2], gene_names=ds.gene_names, coords=[[5, 5], [500, 5]],
                       images=ds.images[ds.name], patch_size=8)
    with pytest.raises(DatasetError, match="alpha"):
        SpatialDataset(coords=[[5, 5]], images=np.zeros((10, 10, 4), np.uint8), patch_size=4)
    with pytest.raises(DatasetError, match="dtype"):
        SpatialDataset(coords=[[5, 5]], images=np.zeros((10, 10, 3), np.int32), patch_size=4)
    with pytest.raises(DatasetError, match="non-negative"):
        SpatialDataset(expression=-np.ones((2, 1)), gene_names=["a"])
    unlabeled = SpatialDataset(coords=ds.coords, images=ds.images[ds.name], patch_size=20, name=ds.name)
    with pytest.raises(DatasetError, match="no expression"):
        Stem(device="cpu", n_steps=1).fit(unlabeled)
    with pytest.raises(DatasetError, match="no tissue image"):
        Stem(device="cpu", n_steps=1).fit(SpatialDataset(expression=ds.expression, gene_names=ds.gene_names))
    with pytest.raises(DatasetError, match="embeddings"):
        Stem(device="cpu", n_steps=1, encoder="precomputed").fit(ds)
    with pytest.raises(DatasetError, match="condition"):  # wrong embedding width, before training
        Stem(device="cpu", n_steps=1, encoder="precomputed", condition=np.zeros((3, 7))).fit(_with_features(train))
    with pytest.raises(ConfigError, match="SpatialDataset"):
        Stem(condition="spots.h5ad")
    with pytest.raises(ConfigError, match="unknown option"):
        bk.sample(ds, n_samples=2, n_steps=1, conditon=ds)
    with pytest.raises(IncompatibleMethodError):
        bk.sample(ds, method="mdns", n_samples=2)
    with pytest.raises(ConfigError, match="fit"):
        Stem(device="cpu").predict(ds)


def test_bad_anndata_is_refused():
    rng = np.random.default_rng(5)
    a, *_ = _visium_adata(rng)
    with pytest.raises(DatasetError, match="spatial_key"):
        SpatialDataset.from_anndata(a, spatial_key="X_spatial")
    with pytest.raises(DatasetError, match="layer"):
        SpatialDataset.from_anndata(a, layer="counts")
    with pytest.raises(DatasetError, match="absent"):
        SpatialDataset.from_anndata(a, genes=["G1", "NOPE"])
    with pytest.raises(DatasetError, match="image_key"):
        SpatialDataset.from_anndata(a, image_key="lowres")
    b = a.copy()
    del b.uns["spatial"]
    with pytest.raises(DatasetError, match="image="):
        SpatialDataset.from_anndata(b)
    b.uns["spatial"] = {"l1": {}, "l2": {}}
    with pytest.raises(DatasetError, match="library_id"):
        SpatialDataset.from_anndata(b)
    c = a.copy()
    c.obsm["spatial"] = c.obsm["spatial"] * 10  # coordinates far outside the image
    with pytest.raises(DatasetError, match="outside"):
        SpatialDataset.from_anndata(c)
    with pytest.raises(DatasetError, match="empty"):
        SpatialDataset.from_anndata(a[:0].copy())
