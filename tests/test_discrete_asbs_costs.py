"""Discrete ASBS reports its energy cost exactly: the counts in ``Result.diagnostics`` against
the number of configurations the target actually evaluated (a counting wrapper is the truth),
on a generic energy (discrete scores by single-site energy differences) and on a lattice with
closed-form local fields. Negative controls: the accounting without the score energies or the
sampling draws does not match."""

import math

import pytest
import torch

from boltzkit.domains import Lattice
from boltzkit.energies import Energy, Ising
from boltzkit.energies.base import validate_target
from boltzkit.samplers.discrete_asbs import DiscreteASBS, score_energy_cost

pytestmark = pytest.mark.filterwarnings("ignore::boltzkit.errors.UnreliableEstimateWarning")

FAST = {"batch_size": 64, "n_replicates": 2, "buffer_size": 128, "resample_every": 5,
        "n_time_steps": 8, "hidden": 8, "n_layers": 1, "controller_steps": 12, "warmup_steps": 4}


class _Count:
    def __init__(self):
        self.energy, self.scores = 0, 0


def _clock(counter):
    def clock(x):
        counter.energy += x.shape[0]
        c = lambda a, b: torch.cos(0.5 * math.pi * (a - b).double())
        return -0.4 * (c(x, torch.roll(x, 1, 1)) + c(x, torch.roll(x, 1, 2))).flatten(1).sum(1)

    return Energy.from_function(clock, Lattice((3, 3), 4), name="clock")


def _counting_ising(counter):
    target = Ising(L=3, beta=0.4)
    energy, scores = target.energy, target.local_log_ratios

    def counted_energy(x):
        counter.energy += x.shape[0]
        return energy(x)

    def counted_scores(x):
        counter.scores += x.shape[0]
        return scores(x)

    target.energy, target.local_log_ratios = counted_energy, counted_scores
    return target


def _run(target, counter, n_samples):
    validate_target(target)  # the boundary check run by fit: not a sampling cost
    checked, counter.energy = counter.energy, 0
    sampler = DiscreteASBS(device="cpu", seed=0, progress=False, **FAST)
    sampler.fit(target, n_steps=12)
    counter.energy -= checked
    return sampler, sampler.sample(n_samples).diagnostics


def test_energy_evaluations_count_scores_of_a_generic_energy_and_the_samples():
    counter = _Count()
    target = _clock(counter)
    cost = score_energy_cost(target)
    assert cost == 1 + 9 * 3
    _, diag = _run(target, counter, 100)
    assert diag["energy_evaluations"] == counter.energy
    assert diag["sample_energy_evals"] == 100
    assert diag["train_energy_evals"] + 100 == counter.energy
    refreshes = diag["train_score_evals"]  # one score per trajectory in a controller-only run
    assert refreshes > 0 and diag["train_energy_evals"] == refreshes * (1 + cost)
    # negative controls: the trajectories alone, or training alone, are not the cost
    assert refreshes + 100 != counter.energy
    assert diag["train_energy_evals"] != counter.energy


def test_energy_evaluations_on_a_lattice_with_local_fields():
    counter = _Count()
    target = _counting_ising(counter)
    assert score_energy_cost(target) == 0
    _, diag = _run(target, counter, 100)
    assert diag["energy_evaluations"] == counter.energy > 100
    assert diag["train_score_evals"] == counter.scores > 0  # closed form: no energy calls
    assert diag["train_energy_evals"] == counter.scores  # one energy and one score per trajectory
    # negative control: counting the scores as 1 + D (q - 1) energies would overstate the cost
    assert diag["energy_evaluations"] != counter.energy + counter.scores * (1 + 9)


def test_training_history_refers_to_the_true_target_during_the_warm_up():
    """The batch log Z in ``history`` estimates the target's log Z (exact: Kaufman / transfer
    matrix) while the buffer is weighted for the warm-up target exp(-0.3 U); negative control:
    the warm-up target's log Z is rejected."""
    target = Ising(L=3, beta=0.4)
    sampler = DiscreteASBS(device="cpu", seed=0, progress=False,
                           **{**FAST, "batch_size": 1024, "buffer_size": 1024, "warmup_steps": 100})
    sampler.fit(target, n_steps=1)
    assert sampler.energy_scale(0) == pytest.approx(0.3)
    log_z, se = sampler.history["log_z"][0], sampler.history["log_z_stderr"][0]
    assert 0.0 < se < 0.2
    assert abs(log_z - target.exact_log_z()) < 4 * se
    assert abs(log_z - Ising(L=3, beta=0.3 * 0.4).exact_log_z()) > 10 * se
