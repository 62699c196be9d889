"""Tests of the shared discrete site networks' optional time conditioning.

The time input is an addition for discrete ASBS; networks built without it (MDNS, PDNS,
TR2-D2, the masked-diffusion model) must be exactly what they were: same parameters from the
same seed, same state-dict keys, no time argument accepted.
"""

import pytest
import torch

from boltzkit.domains import Lattice, Sequence
from boltzkit.errors import ConfigError
from boltzkit.nn.discrete_nets import make_discrete_net

CASES = [(Lattice((4, 4), 3), "cnn"), (Lattice((4, 4), 2), "transformer"), (Sequence(5, "ACG"), "auto")]


def _build(dom, kind, seed=0, **kw):
    torch.manual_seed(seed)
    return make_discrete_net(dom, kind, hidden=16, **kw)


def _perturb(net, seed=1, scale=0.2):
    """Random weights everywhere (the heads and FiLM projections start at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return net


@pytest.mark.parametrize("dom,kind", CASES)
def test_time_parameters_are_added_last(dom, kind):
    """Without the option nothing changes; with it, the original parameters are initialized
    identically from the same seed and the extra ones live under ``time.``."""
    plain, timed = _build(dom, kind), _build(dom, kind, time_conditioned=True)
    assert plain.time is None
    plain_sd, timed_sd = plain.state_dict(), timed.state_dict()
    extra = [k for k in timed_sd if k not in plain_sd]
    assert extra and all(k.startswith("time.") for k in extra)
    assert not any(k.startswith("time.") for k in plain_sd)
    for k, v in plain_sd.items():
        assert torch.equal(v, timed_sd[k]), k
    # the global RNG after construction differs only by the extra draws, not before them
    x = torch.randint(0, dom.q + 1, (6, dom.n_sites), generator=torch.Generator().manual_seed(2))
    assert torch.equal(plain(x), _build(dom, kind)(x))


@pytest.mark.parametrize("dom,kind", CASES)
def test_time_input_is_checked(dom, kind):
    x = torch.randint(0, dom.q, (3, dom.n_sites))
    with pytest.raises(ConfigError, match="time_conditioned=True"):
        _build(dom, kind)(x, torch.rand(3))
    with pytest.raises(ConfigError, match=r"net\(tokens, t\)"):
        _build(dom, kind, time_conditioned=True)(x)


@pytest.mark.parametrize("dom,kind", CASES)
def test_time_conditioning_is_per_row(dom, kind):
    """Zero output at initialization (zero head), a real dependence on t once trained, and a
    batch with one time per row equals the rows evaluated one by one."""
    net = _build(dom, kind, time_conditioned=True)
    x = torch.randint(0, dom.q, (5, dom.n_sites), generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    assert float(net(x, t).detach().abs().max()) == 0.0
    _perturb(net)
    with torch.no_grad():
        out = net(x, t)
        rows = torch.cat([net(x[i:i + 1], float(t[i])) for i in range(5)])
        torch.testing.assert_close(out, rows, rtol=1e-4, atol=1e-4)
        same_x = net(x[:1].expand(5, -1), t)
        assert float((same_x[1:] - same_x[:1]).abs().amax(dim=(1, 2)).min()) > 1e-3  # t matters
        torch.testing.assert_close(net(x, 0.5), net(x, torch.full((5,), 0.5)))


def test_time_conditioned_cnn_is_translation_equivariant():
    """Time enters as a per-sample constant, so the periodic CNN stays equivariant to lattice
    translations; the transformer's relative bias likewise (negative control: a non-periodic
    shift by a different amount in the output breaks the identity)."""
    for kind in ("cnn", "transformer"):
        dom = Lattice((4, 4), 3)
        net = _perturb(_build(dom, kind, time_conditioned=True))
        x = torch.randint(0, 3, (4, 4, 4), generator=torch.Generator().manual_seed(5))
        t = torch.rand(4, generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            out = net(x.flatten(1), t).view(4, 4, 4, 3)
            shifted = net(torch.roll(x, (1, 2), (1, 2)).flatten(1), t).view(4, 4, 4, 3)
        torch.testing.assert_close(shifted, torch.roll(out, (1, 2), (1, 2)), rtol=1e-4, atol=1e-5)
        assert float((shifted - torch.roll(out, (2, 1), (1, 2))).abs().max()) > 1e-3


# ---------------------------------------------------------------------------- site_logits hook
@pytest.mark.parametrize("shape,q,periodic", [((8, 8), 2, True), ((5, 7), 3, True), ((6, 6), 3, False),
                                              ((9,), 4, True), ((4, 4, 4), 2, False), ((3, 3), 2, True)])
def test_cnn_site_logits_equal_the_full_pass(shape, q, periodic):
    """The receptive-field (cone) evaluation of a few sites is the full pass gathered there, to
    float64 rounding, on periodic and open grids of 1-3 dimensions (lattices smaller than the
    patch wrap around several times). Negative control: a neighbouring site's logits differ."""
    dom = Lattice(shape, q, periodic=periodic)
    torch.manual_seed(0)
    net = _perturb(make_discrete_net(dom, "cnn", hidden=8).double(), scale=0.3)
    gen = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, q + 1, (5, dom.n_sites), generator=gen)
    sites = torch.randint(0, dom.n_sites, (5, 2), generator=gen)
    with torch.no_grad():
        full = net(tokens)
        got = net.site_logits(tokens, sites)
    want = full.gather(1, sites.unsqueeze(-1).expand(-1, -1, q))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # the per-call patch index (used where the cached per-site table would be large)
    geometry = net._patch_geometry(tokens.device)
    net._geometry[str(tokens.device)] = (None, None) + geometry[2:]
    with torch.no_grad():
        torch.testing.assert_close(net.site_logits(tokens, sites), want, rtol=1e-10, atol=1e-10)
    other = full.gather(1, ((sites + 1) % dom.n_sites).unsqueeze(-1).expand(-1, -1, q))
    assert float((got - other).abs().max()) > 1e-3


def test_cnn_site_logits_fall_back_to_the_full_pass():
    """Many sites per pass (or a time-conditioned net) use the full pass: same values."""
    dom = Lattice((6, 6), 2)
    net = _perturb(_build(dom, "cnn"))
    tokens = torch.randint(0, 3, (3, 36), generator=torch.Generator().manual_seed(1))
    sites = torch.arange(36).repeat(3, 1)
    cone, full = net._cone_cost(36)
    assert cone > full
    with torch.no_grad():
        torch.testing.assert_close(net.site_logits(tokens, sites), net(tokens))


@pytest.mark.parametrize("periodic", [True, False])
def test_cnn_folded_first_convolution_is_the_plain_one(periodic):
    """The full pass runs its first convolution on one-hot tokens with the embedding folded
    into the weights: same values and same parameter gradients as convolving gelu(embedding),
    in float64 (negative control: dropping the gelu changes them)."""
    from torch.nn import functional as F

    dom = Lattice((5, 6), 3, periodic=periodic)
    torch.manual_seed(0)
    net = _perturb(make_discrete_net(dom, "cnn", hidden=8).double(), scale=0.3)
    tokens = torch.randint(0, 4, (4, 30), generator=torch.Generator().manual_seed(2))

    def plain(act=F.gelu):
        h = net.embed(tokens).transpose(1, 2).reshape(4, -1, 5, 6)
        first = net.blocks[0]
        h = h + first.c2(F.gelu(first.c1(act(h))))
        out = net.head(F.gelu(net.blocks[1:](h)))
        return out.reshape(4, 3, -1).transpose(1, 2)

    def value_and_grads(f):
        net.zero_grad()
        out = f()
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
        return out.detach(), [p.grad.clone() for p in net.parameters()]

    (got, g_got), (want, g_want) = value_and_grads(lambda: net(tokens)), value_and_grads(plain)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    assert float((plain(lambda h: h).detach() - want).abs().max()) > 1e-3


# ---------------------------------------------------------------------------- reduced precision
def test_bf16_autocast_keeps_discrete_asbs_weights_exact():
    """Discrete ASBS with its networks under bf16 autocast (the CUDA default, forced here on
    CPU): the float64 path weights come from the rates actually used, so E[w] = Z still holds
    for a random controller. Negative control: a 10% error in Z is rejected."""
    import math

    from _stats import assert_consistent, assert_rejects

    from boltzkit.energies import Ising
    from boltzkit.samplers.discrete_asbs import DiscreteASBS

    target = Ising(L=3, beta=0.1)
    sampler = DiscreteASBS(device="cpu", seed=0, progress=False, n_time_steps=6, net="transformer",
                           hidden=16, n_layers=1, sample_batch_size=6000, source="uniform",
                           precision="bf16")
    sampler._attach(target)
    sampler._setup(sampler.target)
    assert sampler._amp == torch.bfloat16
    net = sampler.ema_controller.shadow
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in list(net.net.head.parameters()) + list(net.net.time.film.parameters()):
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    path, lw = sampler.sample_paths(12_000)
    assert float(path.log_ratio.std()) > 0.3, "the proposal is too close to the reference"
    ratio = torch.exp(lw - target.exact_log_z()).numpy()
    est, se = ratio.mean(), ratio.std(ddof=1) / math.sqrt(ratio.size)
    assert_consistent(est, se, 1.0, what="Z_hat / Z (bf16)")
    assert_rejects(est, se, 0.9, what="Z_hat / Z (bf16)")
    with pytest.raises(ConfigError, match="precision"):
        DiscreteASBS(precision="half")
