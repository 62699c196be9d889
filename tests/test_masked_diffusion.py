"""Tests of the masked diffusion sequence model, sequence data sets, loaders and oracles.

Exact truths: a first-order Markov chain over 4 letters (its law enumerated directly), brute-force
averages over every reveal order of short sequences, and modlamp's own peptide descriptors.
"""

import importlib.util
import itertools
import math

import numpy as np
import pytest
import torch

import boltzkit as bk
from boltzkit.bio.sequences import SequenceDataset, ars_dna, peptides
from boltzkit.errors import ConfigError, DatasetError, DomainError, MissingDependencyError
from boltzkit.bio.sequences.masked_diffusion import MaskedDiffusion
from boltzkit.bio.sequences.oracles import hydrophobic_moment, net_charge

from _stats import assert_consistent, assert_rejects, chi2_gof_pvalue, z_limit

P0 = np.array([0.4, 0.3, 0.2, 0.1])
T = np.array([[0.6, 0.2, 0.1, 0.1], [0.1, 0.5, 0.3, 0.1], [0.2, 0.2, 0.4, 0.2], [0.3, 0.1, 0.1, 0.5]])
T_WRONG = np.array([[0.4, 0.2, 0.2, 0.2], [0.2, 0.4, 0.2, 0.2], [0.2, 0.2, 0.4, 0.2], [0.2, 0.2, 0.2, 0.4]])


def all_states(L, q=4):
    return torch.tensor(list(itertools.product(range(q), repeat=L)))


def chain_log_prob(x, p0=P0, t=T):
    """log p(x) of the Markov chain, straight from its definition."""
    x = np.asarray(x)
    return np.log(p0[x[:, 0]]) + np.log(t[x[:, :-1], x[:, 1:]]).sum(1)


def _perturb(module, seed=1, std=0.5):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen))
    return module


def brute_force_orders(model, x):
    """(log E_sigma q(x|sigma), E_sigma log q(x|sigma)) by looping over every order and site."""
    L, q = x.shape[1], model.q
    out_p, out_e = [], []
    for row in x.tolist():
        logs = []
        for order in itertools.permutations(range(L)):
            tok = [q] * L
            total = 0.0
            for d in order:
                with torch.no_grad():
                    logits = model.net(torch.tensor([tok]))[0, d].double()
                total += float(torch.log_softmax(logits, -1)[row[d]])
                tok[d] = row[d]
            logs.append(total)
        logs = np.array(logs)
        out_p.append(np.logaddexp.reduce(logs) - math.log(len(logs)))
        out_e.append(logs.mean())
    return np.array(out_p), np.array(out_e)


# ---------------------------------------------------------------------------- exact Markov model
def test_markov_model_is_exact():
    L = 6
    model = MaskedDiffusion.from_markov_chain(P0, T, "ACGT", L)
    x = all_states(L)
    truth = chain_log_prob(x)
    assert np.abs(model.exact_log_prob(x).numpy() - truth).max() < 1e-10
    # every reveal order of an exact model gives log p(x): the ELBO is tight, with no variance
    sub = x[::97]
    assert np.abs(model.elbo(sub, n_mc=3, seed=0).numpy() - chain_log_prob(sub)).max() < 1e-10
    # negative control: the other chain is far from this one
    assert np.abs(model.exact_log_prob(sub).numpy() - chain_log_prob(sub, t=T_WRONG)).max() > 0.5


def test_markov_model_samples_match_the_chain():
    L = 6
    model = MaskedDiffusion.from_markov_chain(P0, T, "ACGT", L)
    x = model.sample(20_000, seed=3)
    idx = (x * torch.tensor([4 ** (L - 1 - i) for i in range(L)])).sum(1).numpy()
    counts = np.bincount(idx, minlength=4 ** L)
    assert chi2_gof_pvalue(counts, np.exp(chain_log_prob(all_states(L)))) > 1e-4
    assert chi2_gof_pvalue(counts, np.exp(chain_log_prob(all_states(L), t=T_WRONG))) < 1e-6
    # multi-position steps are an approximation of the chain (independent draws in a block)
    y = model.sample(20_000, seed=3, n_unmask_steps=2)
    idy = (y * torch.tensor([4 ** (L - 1 - i) for i in range(L)])).sum(1).numpy()
    assert chi2_gof_pvalue(np.bincount(idy, minlength=4 ** L), np.exp(chain_log_prob(all_states(L)))) < 1e-6


# ---------------------------------------------------------------------------- likelihoods of a network
@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    model = MaskedDiffusion(bk.domains.Sequence(4, "ACGT"), net="cnn", hidden=16, n_layers=2)
    _perturb(model.net, std=0.3)
    return model


def test_exact_log_prob_matches_all_orders(random_model):
    x = all_states(4)
    exact = random_model.exact_log_prob(x)
    assert abs(float(torch.logsumexp(exact, 0))) < 1e-9  # a normalized law over the 256 states
    sub = x[::37]
    brute_p, brute_e = brute_force_orders(random_model, sub)
    assert np.allclose(exact[::37].numpy(), brute_p, rtol=1e-6, atol=1e-5)  # float32 network
    assert np.all(brute_e <= brute_p + 1e-9)  # Jensen: the ELBO is a lower bound
    assert (brute_p - brute_e).max() > 0.05  # ... and not tight for an inconsistent network


def test_elbo_is_unbiased(random_model):
    x = all_states(4)[::37]
    _, truth = brute_force_orders(random_model, x)
    for estimator, n_mc in (("orders", 400), ("masks", 3000)):
        est, se = random_model.elbo(x, n_mc=n_mc, estimator=estimator, seed=1, return_stderr=True)
        est, se = est.numpy(), se.numpy()
        # pooled over sequences: mean estimate vs mean truth, with its error bar
        m, s = est.mean(), math.sqrt((se ** 2).sum()) / len(se)
        assert_consistent(m, s, truth.mean(), what=f"ELBO ({estimator})")
        assert_rejects(m, s, truth.mean() + 5 * z_limit() * s, what=f"ELBO ({estimator})")


# ---------------------------------------------------------------------------- pretraining
@pytest.fixture(scope="module")
def chain_data():
    L = 6
    exact = MaskedDiffusion.from_markov_chain(P0, T, "ACGT", L)
    x = exact.sample(4000, seed=11)
    return SequenceDataset(x, "ACGT", name="markov chain")


def test_pretraining_learns_the_chain(chain_data, tmp_path):
    L = 6
    model = MaskedDiffusion.pretrain(chain_data, n_steps=250, batch_size=128, lr=3e-3, seed=0,
                                     net="cnn", hidden=32, n_layers=2, device="cpu", progress=False)
    states = all_states(L)
    p_true = np.exp(chain_log_prob(states))
    p_model = np.exp(model.exact_log_prob(states).numpy())
    tv = 0.5 * np.abs(p_model - p_true).sum()
    tv_uniform = 0.5 * np.abs(1 / 4 ** L - p_true).sum()
    assert tv < 0.3 * tv_uniform, (tv, tv_uniform)
    # negative control: the learned law is much farther from the other chain
    assert 0.5 * np.abs(p_model - np.exp(chain_log_prob(states, t=T_WRONG))).sum() > 2 * tv
    assert model.history["loss"][-1] < model.history["loss"][0]
    # save / load round trip (weights_only): identical logits and config
    path = model.save(tmp_path / "mdm.pt")
    back = MaskedDiffusion.load(path)
    assert back.config() == model.config()
    with torch.no_grad():
        tok = states[:50]
        assert torch.equal(back(tok), model(tok))
    assert back.to_strings(states[:2]) == ["AAAAAA", "AAAAAC"]


def test_model_input_errors(chain_data, tmp_path):
    model = MaskedDiffusion.from_markov_chain(P0, T, "ACGT", 6)
    with pytest.raises(DomainError, match="length"):
        model.elbo(torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(DatasetError, match="'X'"):
        model.elbo(["ACGXAC"])
    with pytest.raises(ConfigError, match="no trainable"):
        model.fit(chain_data, n_steps=1)
    with pytest.raises(ConfigError, match="too long"):
        MaskedDiffusion(bk.domains.Sequence(20, "AC")).exact_log_prob(torch.zeros(1, 20, dtype=torch.long))
    other = SequenceDataset(torch.zeros(3, 5, dtype=torch.long), "ACGT")
    with pytest.raises(DatasetError, match="does not match"):
        MaskedDiffusion(bk.domains.Sequence(6, "ACGT"), hidden=8, n_layers=1).fit(other, n_steps=1)
    with pytest.raises(DatasetError, match="SequenceDataset"):
        MaskedDiffusion.pretrain(["ACGT"], n_steps=1)
    with pytest.raises(FileNotFoundError):
        MaskedDiffusion.load(tmp_path / "missing.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not a boltzkit"):
        MaskedDiffusion.load(tmp_path / "other.pt")


# ---------------------------------------------------------------------------- data sets
def test_sequence_dataset_strings_and_padding(tmp_path):
    ds = SequenceDataset.from_strings(["ACG", "A", "GGTT"], alphabet="ACGT", pad="-", labels=[1, 0, 2])
    assert ds.tokens.dtype == torch.int64 and ds.tokens.shape == (3, 4)
    assert ds.alphabet == list("ACGT-") and ds.pad_index == 4
    assert ds.strings() == ["ACG", "A", "GGTT"]
    assert ds.domain == bk.domains.Sequence(4, "ACGT-")
    a, b = ds.split(0.34, seed=0)
    assert len(a) + len(b) == 3 and set(a.strings()).isdisjoint(b.strings())
    short = SequenceDataset.from_strings(["ACGTA", "AC"], alphabet="ACGT", length=3, pad="-",
                                         drop_longer=True)
    assert short.strings() == ["AC"] and short.info["n_dropped_longer"] == 1
    fasta = tmp_path / "s.fa"
    fasta.write_text(">one\nAC\nGT\n>two\nacg\n")
    fa = SequenceDataset.from_fasta(fasta, alphabet="ACGT", pad="-")
    assert fa.strings() == ["ACGT", "ACG"] and fa.info["names"] == ["one", "two"]


def test_sequence_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"\['X', 'Z'\].*sequence 1 position 2"):
        SequenceDataset.from_strings(["ACGT", "ACXT", "ZZ"], alphabet="ACGT", pad="-")
    with pytest.raises(DatasetError, match="empty"):
        SequenceDataset.from_strings([], alphabet="ACGT")
    with pytest.raises(DatasetError, match="empty sequence"):
        SequenceDataset.from_strings(["AC", ""], alphabet="ACGT", pad="-")
    with pytest.raises(DatasetError, match="longer than length=3.*index 1, length 5"):
        SequenceDataset.from_strings(["AC", "ACGTA"], alphabet="ACGT", length=3, pad="-")
    with pytest.raises(DatasetError, match="pad="):
        SequenceDataset.from_strings(["AC", "ACG"], alphabet="ACGT")
    with pytest.raises(DatasetError, match="at least one"):
        SequenceDataset(torch.zeros(0, 4, dtype=torch.long), "ACGT")
    with pytest.raises(DatasetError, match="labels"):
        SequenceDataset.from_strings(["AC"], alphabet="ACGT", labels=[1, 2])
    bad = tmp_path / "bad.fa"
    bad.write_text("ACGT\n")
    with pytest.raises(DatasetError, match="not FASTA"):
        SequenceDataset.from_fasta(bad, alphabet="ACGT")


def test_loaders_read_installed_packages(monkeypatch):
    if importlib.util.find_spec("modlamp") is None or importlib.util.find_spec("logomaker") is None:
        pytest.skip("needs the 'sequences' extra (modlamp, logomaker)")
    pep = peptides()
    assert pep.length == 48 and pep.alphabet[-1] == "-" and len(pep) > 4500
    assert set(pep.labels.unique().tolist()) == {0.0, 1.0}
    assert all(s and "-" not in s for s in pep.strings()[:200])
    ars = ars_dna(300, seed=1)
    assert ars.tokens.shape == (300, 150) and ars.alphabet == list("ACGT")
    assert torch.isfinite(ars.labels).all() and ars.info["library_ct"].shape == (300,)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "modlamp" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"boltzkit\[sequences\]"):
        peptides()


def test_peptide_descriptors_match_modlamp():
    descriptors = pytest.importorskip("modlamp.descriptors")
    seqs = ["GLWSKIKEVGKEAAKAAAKAAGKAALGAVSEAV", "KLAKFGKRSELVALSG", "DDEEYCHWK"]
    ds = SequenceDataset.from_strings(seqs, alphabet="ACDEFGHIKLMNPQRSTVWY", pad="-")
    ref = descriptors.GlobalDescriptor(seqs)
    ref.calculate_charge(ph=7.0, amide=False)
    mine = net_charge(ds.tokens, ds.alphabet, pad="-").numpy()
    assert np.abs(mine - ref.descriptor[:, 0]).max() < 2e-3  # modlamp rounds to 3 decimals
    mom = descriptors.PeptideDescriptor(seqs, "eisenberg")
    mom.calculate_moment(window=1000, angle=100, modality="max")
    # modlamp's Eisenberg scale is rounded to 2 digits: agreement to a few percent
    assert np.allclose(hydrophobic_moment(ds.tokens, ds.alphabet, pad="-").numpy(), mom.descriptor[:, 0],
                       rtol=0.05, atol=0.005)


def test_sequence_slice_public_names_and_imports():
    """The slice's names are the same objects under their public homes (bk.datasets, boltzkit.models,
    bk.MaskedDiffusion), importing the slice's modules in either order with boltzkit.rewards works (no
    import cycle), and ``import boltzkit`` loads neither the slice's model nor a sampler."""
    import subprocess
    import sys

    code = """
import sys, importlib
importlib.import_module(sys.argv[1])
import boltzkit as bk, boltzkit.models, boltzkit.rewards
from boltzkit.bio.sequences import dataset, masked_diffusion, metrics, oracles
assert bk.datasets.SequenceDataset is dataset.SequenceDataset and bk.datasets.peptides is dataset.peptides
assert bk.datasets.ars_dna is dataset.ars_dna
assert bk.MaskedDiffusion is boltzkit.models.MaskedDiffusion is masked_diffusion.MaskedDiffusion
assert bk.RewardTarget is boltzkit.rewards.RewardTarget and bk.bio.sequences.oracles is oracles
"""
    for first in ("boltzkit.bio.sequences.metrics", "boltzkit.rewards"):
        subprocess.run([sys.executable, "-c", code, first], check=True)
    cheap = ("import sys, boltzkit; loaded = [m for m in sys.modules if m.startswith('boltzkit.samplers') "
             "or m.endswith('masked_diffusion')]; assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", cheap], check=True)
