"""The shared MCMC driver, the one replay buffer and the public boltzkit.nn (CPU, seconds).

Statistical correctness of each MCMC method is tested in its own file against exact truths;
here: the contract the driver gives every method (same keys, same option names, same seed ->
same chains) and the negative controls of its option checks.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

import boltzkit as bk
from boltzkit.constraints import sphere
from boltzkit.energies import Gaussian, Ising
from boltzkit.errors import ConfigError
from boltzkit.samplers.mala import MALA
from boltzkit.samplers.mcmc import Metropolis
from boltzkit.samplers.olla import OLLA

pytestmark = pytest.mark.filterwarnings("ignore::boltzkit.errors.ConvergenceWarning")

COMMON = ("n_chains", "thin", "burn_in", "steps_per_chain", "total_steps", "tau_int", "tau_converged",
          "wall_time_s", "sample_wall_time_s", "ess_per_second", "log_z_unavailable")


def _runs():
    yield MALA(seed=0, n_chains=8, init_std=1.0).fit(Gaussian(torch.zeros(2)), n_steps=20).sample(64)
    yield Metropolis(seed=0, n_chains=8).fit(Ising(L=4, beta=0.3), n_steps=10).sample(64)
    yield OLLA(seed=0, n_chains=16, step_size=5e-3, alpha=20.0, thin=2).fit(
        bk.constrain(None, sphere(3)), n_steps=20).sample(64)


def test_every_mcmc_method_reports_the_same_driver_keys():
    for res in _runs():
        missing = [k for k in COMMON if k not in res.diagnostics]
        assert not missing, (res.method, missing)
        assert res.log_z is None and res.log_weights is None
        assert res.diagnostics["total_steps"] == res.diagnostics["burn_in"] + \
            res.diagnostics["steps_per_chain"] * res.diagnostics["thin"]
        assert res.ess == pytest.approx(res.n_samples / res.diagnostics["tau_int"])


def test_burn_in_has_one_name_and_the_old_one_is_an_alias():
    assert OLLA(n_burnin=7).config.burn_in == 7 == OLLA(burn_in=7).config.burn_in
    assert "n_burnin" not in OLLA().config_dict()
    with pytest.raises(ConfigError, match="not both"):
        OLLA(n_burnin=7, burn_in=8)
    with pytest.raises(ConfigError, match="burn_in"):
        MALA(burn_in=-1)
    with pytest.raises(ConfigError, match="checkpoint"):
        OLLA().fit(bk.constrain(None, sphere(3)), checkpoint="x.pt")


def test_same_seed_same_chains_and_refit_restarts():
    a = Metropolis(seed=3, n_chains=4).fit(Ising(L=4, beta=0.4), n_steps=5)
    r1 = a.sample(16)
    b = Metropolis(seed=3, n_chains=4).fit(Ising(L=4, beta=0.4), n_steps=5)
    assert torch.equal(r1.samples, b.sample(16).samples)
    assert not torch.equal(r1.samples, Metropolis(seed=4, n_chains=4).fit(Ising(L=4, beta=0.4), n_steps=5)
                           .sample(16).samples)
    a.fit(Ising(L=4, beta=0.4), n_steps=2)  # a second fit starts a fresh history
    assert len(a.history["mean_energy"]) == 2 and a.n_total == 2


def test_replay_buffer_with_replacement_draws_uniform_rows():
    from boltzkit.nn import ReplayBuffer

    buf = ReplayBuffer(6, replace=True)
    for start in (0, 4, 8):  # the oldest rows are dropped twice
        buf.add(t=torch.arange(start, start + 4.0))
    assert buf.get()["t"].tolist() == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]  # oldest first
    draws = buf.sample(60_000, generator=torch.Generator().manual_seed(0))["t"]
    freq = np.bincount(draws.long().numpy() - 6, minlength=6) / draws.numel()
    se = np.sqrt(freq * (1 - freq) / draws.numel())
    assert np.all(np.abs(freq - 1 / 6) < 4 * se)  # uniform over the six kept rows
    assert not np.all(np.abs(freq - np.r_[0.5, 0.1, 0.1, 0.1, 0.1, 0.1]) < 4 * se)  # negative control


def test_nn_is_public_and_models_do_not_load_the_samplers():
    code = ("import sys, boltzkit.bio.sequences.masked_diffusion, boltzkit.nn as nn; "
            "assert 'boltzkit.samplers' not in sys.modules, 'models imported the samplers'; "
            "from boltzkit.nn.ema import EMA; assert EMA is nn.EMA; "
            "import importlib.util as u; assert u.find_spec('boltzkit.samplers._shared.ema') is None")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_targets_do_not_load_the_scale_probe():
    # layering (docs/architecture.md): targets sit above the probe; their finite-difference
    # Hessians come from the utilities layer
    code = ("import sys, boltzkit.energies.internal, boltzkit.energies.openmm_energy, boltzkit.energies.smiles; "
            "assert 'boltzkit.probe' not in sys.modules, 'a target imported the probe'; "
            "import boltzkit.probe as p, boltzkit._numerics as n; assert p.hessian_fd is n.hessian_fd")
    subprocess.run([sys.executable, "-c", code], check=True)
