"""A new user's first hour: named errors on result files and non-finite energies, progress
reports that reach logs and notebooks, exact log Z where cheap, and results that say first
whether they can be trusted."""

import json
import os
import stat

import numpy as np
import pytest
import torch

import boltzkit as bk
from boltzkit.cli import main
from boltzkit.errors import BoltzkitError, FileAccessError, MissingFileError, ResultFileError
from boltzkit.result import Result, iter_shards


def _result(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return Result(samples=x, log_weights=torch.zeros(n, dtype=torch.float64), log_z=0.0,
                  log_z_stderr=0.01, ess=float(n), method="ais", target={"name": "toy"})


# ----------------------------------------------------------------------------- result files
def _bad_files(tmp_path):
    good = _result().save(tmp_path / "good.npz")
    blob = good.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "text.npz").write_text("samples,log_z\n1,2\n")
    (tmp_path / "empty.npz").write_bytes(b"")
    np.savez(tmp_path / "objects.npz", samples=np.zeros((2, 2)),
             __meta__=np.array([{"x": 1}], dtype=object))
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    meta = json.loads(str(np.load(good)["__meta__"]))
    meta["format_version"] = 99
    np.savez(tmp_path / "newer.npz", samples=np.zeros((2, 2)), __meta__=np.array(json.dumps(meta)))
    (tmp_path / "folder").mkdir()
    return {  # file -> words the message must contain
        "truncated.npz": "truncated",
        "text.npz": "not an npz",
        "empty.npz": "empty",
        "objects.npz": "object arrays",
        "foreign.npz": "not a boltzkit result",
        "newer.npz": "newer",
        "folder": "folder",
    }


def test_every_load_failure_is_a_named_boltzkit_error(tmp_path):
    cases = _bad_files(tmp_path)
    for name, words in cases.items():
        with pytest.raises(BoltzkitError) as info:
            Result.load(tmp_path / name)
        msg = str(info.value)
        assert str(tmp_path / name) in msg, msg  # names the file
        assert words in msg, msg  # and the problem
        assert ".tmp" not in msg
    with pytest.raises(MissingFileError, match="no result file at"):
        Result.load(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError):  # still a FileNotFoundError for ordinary except clauses
        Result.load(tmp_path / "missing.npz")
    with pytest.raises(ResultFileError):  # and a ValueError for the content errors
        Result.load(tmp_path / "objects.npz")
    # negative control: the good file loads
    assert Result.load(tmp_path / "good.npz").n_samples == 64


def test_load_never_unpickles(tmp_path, monkeypatch):
    np.savez(tmp_path / "objects.npz", samples=np.zeros((2, 2)),
             __meta__=np.array([{"x": 1}], dtype=object))
    import pickle

    def forbidden(*a, **k):
        raise AssertionError("pickle.load was called")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(ResultFileError, match="object arrays"):
        Result.load(tmp_path / "objects.npz")


def test_cli_info_prints_one_line_not_a_traceback(tmp_path, capsys):
    cases = _bad_files(tmp_path)
    for name in ("truncated.npz", "text.npz", "objects.npz", "folder"):
        assert main(["info", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(tmp_path / name) in err and "Traceback" not in err
    assert main(["info", str(tmp_path / "missing.npz")]) == 2
    assert "no result file" in capsys.readouterr().err
    assert len(cases) == 7


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_saved_files_honour_the_umask_and_failures_name_the_target(tmp_path):
    old = os.umask(0o022)
    try:
        path = _result().save(tmp_path / "shared.npz")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        private = _result().save(tmp_path / "private.npz")
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    # overwriting keeps the mode the file had
    path.chmod(0o664)
    _result(seed=1).save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(FileAccessError) as info:
                _result().save(ro / "r.npz")
            assert f"could not write {ro / 'r.npz'}" in str(info.value)
            assert ".tmp" not in str(info.value)
        finally:
            ro.chmod(0o755)


def test_failed_save_leaves_the_earlier_file_intact(tmp_path, monkeypatch):
    path = _result().save(tmp_path / "r.npz")
    before = path.read_bytes()

    def full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / ".r.npz.x.tmp"))

    monkeypatch.setattr(np, "savez_compressed", full)
    with pytest.raises(FileAccessError) as info:
        _result(seed=3).save(path)
    monkeypatch.undo()
    assert str(info.value) == f"could not write {path}: No space left on device"
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.npz"]


# ----------------------------------------------------------------------------- progress
def _fast_reports(monkeypatch):
    from boltzkit import _utils

    monkeypatch.setattr(_utils, "PROGRESS_MIN_INTERVAL_S", 0.0)
    monkeypatch.setattr(_utils, "LONG_RUN_S", 0.0)
    monkeypatch.setattr(_utils, "ESTIMATE_AFTER_S", 0.0)


def test_progress_goes_to_logs_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    _fast_reports(monkeypatch)
    target = bk.energies.Ising(L=4, beta=0.3)
    bk.sample(target, "ais", n_samples=64, n_steps=40, seed=0)  # progress=None, stderr captured
    err = capsys.readouterr().err.strip().splitlines()
    steps = [ln for ln in err if "step " in ln and "ETA" in ln]
    assert len(steps) >= 9, err  # a line every 10 %
    assert all(ln.startswith("boltzkit | ais") for ln in steps)
    assert "acc=" in steps[-1]  # the metrics
    assert sum("will take about" in ln for ln in err) == 1  # the estimate, once
    assert "done in" in err[-1]
    bk.sample(target, "ais", n_samples=64, n_steps=40, seed=0, progress=False)
    assert capsys.readouterr().err == ""  # progress=False silences (the negative control)


def test_progress_is_quiet_for_short_runs_and_a_bar_in_notebooks(monkeypatch, capsys):
    from boltzkit import _utils

    bar = _utils.progress_bar(total=5, desc="short", enabled=None)
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert capsys.readouterr().err == ""  # seconds-long work prints nothing
    monkeypatch.setattr(_utils, "_in_notebook", lambda: True)
    assert _utils.progress_mode(None) == "bar" and _utils.progress_mode(False) == "off"
    bar = _utils.progress_bar(total=3, desc="nb", enabled=True)
    assert bar.bar is not None  # tqdm.auto: a widget in Jupyter
    bar.close()
    assert _utils.format_duration(3725) == "1 h 02 min" and _utils.format_duration(75) == "1 min 15 s"


# ----------------------------------------------------------------------------- NaN during sampling
class LateNaN(bk.energies.Energy):
    """A standard normal whose energy gains sqrt(1.5 - x0) after ``after`` evaluations: NaN (with
    NaN gradients) on the region x0 > 1.5 that the 8-state pre-check and the first steps miss."""

    def __init__(self, after):
        super().__init__(bk.domains.Reals(2), "LateNaN")
        self.after, self.calls = after, 0

    def energy(self, x):
        self.calls += 1
        u = 0.5 * (x * x).sum(-1)
        if self.calls > self.after:
            u = u + torch.sqrt(1.5 - x[:, 0]) - 1.5 ** 0.5
        return u


_RUNS = {  # method -> (options, words naming where in the run); unit-scale starts, no scale probe
    "naas": (dict(prior_std=1.0, n_steps=4, batch_size=64, n_time_steps=16, prior_time_steps=8, hidden=16,
                  train_batch_size=64, sample_batch_size=256), "naas training step"),
    "mala": (dict(init_std=1.0, n_steps=60, n_chains=64), "mala step"),
    "ais": (dict(init_std=1.0, n_steps=60), "annealing level"),
}


@pytest.mark.parametrize("method", sorted(_RUNS))
def test_nan_late_in_a_run_is_named_not_dropped_or_called_divergence(method):
    opts, where = _RUNS[method]
    with pytest.raises(bk.errors.NonFiniteEnergyError) as info:
        bk.sample(LateNaN(after=30), method, n_samples=256, seed=0, progress=False, **opts)
    msg = str(info.value)
    assert "LateNaN.energy returned" in msg and "NaN" in msg, msg  # names the non-finite values
    assert where in msg and "x[0] in [" in msg, msg  # the step and the states' range
    assert "diverged" not in msg and not isinstance(info.value, bk.errors.TrainingDivergedError)
    lo = float(msg.split("x[0] in [")[1].split(",")[0])
    assert lo > 1.5  # the NaN states are exactly those with x0 > 1.5
    # negative control: the same target with the NaN region never switched on runs through
    res = bk.sample(LateNaN(after=10**9), method, n_samples=256, seed=0, progress=False, **opts)
    assert torch.isfinite(res.samples).all()


@pytest.mark.parametrize("method", ["ais", "mala", "naas"])
def test_nan_states_are_reported_in_the_targets_coordinates_not_the_probes_frame(method):
    # a Gaussian at (1000, 1000) with NaN beyond x0 = 1003: the samplers run in the scale
    # probe's frame (z = x - 1000), the message gives x (before: x[0] in [3.1, 3.3])
    def u(x):
        e = 0.5 * ((x - 1000.0) ** 2).sum(-1)
        return torch.where(x[:, 0] > 1003.0, torch.full_like(e, float("nan")), e)

    t = bk.energies.Energy.from_function(u, bk.domains.Reals(2), name="far")
    opts = {"n_steps": 5} if method == "naas" else {}
    with pytest.raises(bk.errors.NonFiniteEnergyError) as info:
        bk.sample(t, method, n_samples=2000, seed=0, progress=False, **opts)
    lo = float(str(info.value).split("x[0] in [")[1].split(",")[0])
    assert 1003.0 <= lo < 1010.0, str(info.value)


def test_plus_inf_is_zero_density_not_an_error():
    from boltzkit._finite import check_energies

    x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 0.5]])
    check_energies(torch.tensor([0.0, float("inf"), 1.0]), x, name="E")  # +inf: fine
    with pytest.raises(bk.errors.NonFiniteEnergyError, match=r"1 NaN and 1 -inf energies out of 3 states here"):
        check_energies(torch.tensor([float("nan"), float("-inf"), 1.0]), x, name="E", where="here")
    with pytest.raises(bk.errors.NonFiniteEnergyError, match="non-finite gradients"):
        check_energies(torch.zeros(3), x, grad=torch.tensor([[0.0, float("nan")], [0, 0], [0, 0]]), name="E")


def test_nan_late_in_a_constrained_run_is_named_not_called_divergence():
    from boltzkit.constraints import sphere

    calls = {"n": 0}

    def energy(x):  # on S^2: NaN where x0 > 0.5, but only after 20 evaluations
        calls["n"] += 1
        u = -x[:, 2]
        return u + torch.sqrt(0.5 - x[:, 0]) - 0.5 ** 0.5 if calls["n"] > 20 else u

    target = bk.constrain(energy, sphere(3))
    with pytest.raises(bk.errors.NonFiniteEnergyError) as info:
        bk.sample(target, "olla", n_samples=256, n_steps=200, seed=0, progress=False, n_chains=64)
    msg = str(info.value)
    assert "NaN" in msg and "olla step" in msg and "x[0] in [" in msg, msg
    # negative control: the same run without the NaN region samples without error
    calls["n"] = -10 ** 9
    bk.sample(target, "olla", n_samples=256, n_steps=50, seed=0, progress=False, n_chains=64)


# ----------------------------------------------------------------------------- exact values
def test_potts_momentum_transfer_matches_dense_transfer_and_enumeration():
    from boltzkit.energies import exact

    for (L, M, q, K) in [(1, 3, 3, 0.7), (2, 2, 3, -0.4), (2, 3, 4, 1.1), (3, 4, 3, 0.9), (4, 4, 2, 0.3),
                         (5, 6, 3, 1.0), (6, 6, 3, -0.3), (4, 5, 4, 0.6)]:
        dense = exact.potts_log_z_transfer(L, M, q, K)
        assert abs(exact.potts_log_z_momentum(L, M, q, K) - dense) < 1e-9 * abs(dense) + 1e-10, (L, M, q, K)
    assert abs(exact.potts_log_z_momentum(3, 3, 3, 0.8) - exact.potts_log_z_enumerate(3, 3, 3, 0.8)) < 1e-10
    # negative control: a different coupling is told apart
    assert abs(exact.potts_log_z_momentum(3, 3, 3, 0.81) - exact.potts_log_z_enumerate(3, 3, 3, 0.8)) > 1e-3
    # the CLI's example now has an exact value: 3-state Potts 8 x 8 (6561 row states), cheaply
    assert exact.potts_log_z(8, 8, 3, 1.0) is not None and exact.potts_log_z(9, 9, 3, 1.0) is None


# ----------------------------------------------------------------------------- say it first
def _degenerate(method, config):
    lw = torch.zeros(400, dtype=torch.float64)
    lw[0] = 40.0  # one sample holds all the weight
    from boltzkit.result import result_from_log_weights

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = result_from_log_weights(torch.randn(400, 2), lw, method=method, config=config,
                                      target={"name": "toy"})
    return res, [str(w.message) for w in caught]


def test_summary_says_first_whether_to_trust_and_the_method_specific_next_step():
    ok = _result()
    assert ok.summary().splitlines()[0].startswith("trusted: ESS 64 of 64")
    ais, warned = _degenerate("ais", {"n_steps": 200, "n_mcmc": 1, "resample_ess": None})
    first = ais.summary().splitlines()
    assert first[0].startswith("NOT trusted: degenerate weights") and "Pareto k" in first[0]
    assert first[1].strip().startswith("next: more annealing levels (n_steps=400)")
    assert "train longer" not in ais.summary() and "train longer" not in warned[0]  # AIS is not trained
    assert "n_steps=400" in warned[0]
    naas, warned = _degenerate("naas", {"n_steps": 300})
    assert naas.trust()[2].startswith("next: train longer (n_steps=600)") and "train longer" in warned[0]
    # a result far from the exact value is not trusted even with healthy weights (negative control)
    far = Result(**{**{f: getattr(ok, f) for f in ("samples", "log_weights", "log_z", "log_z_stderr", "ess",
                                                  "method", "target")}, "diagnostics": {"exact_log_z": 1.0}})
    assert far.summary().startswith("NOT trusted: log Z is 100.0 standard errors from the exact value")
    # a zero error bar (one mode found, every weight equal) says so, not "1e300 standard errors"
    flat = Result(**{**{f: getattr(far, f) for f in ("samples", "log_weights", "log_z", "method", "target",
                                                    "diagnostics")}, "log_z_stderr": 0.0, "ess": 64.0})
    assert flat.summary().startswith("NOT trusted: log Z is -1 from the exact value with an error bar of 0")
    assert "e+" not in flat.trust()[1]
    exact = Result(**{**{f: getattr(flat, f) for f in ("samples", "log_weights", "log_z_stderr", "method",
                                                      "target", "ess")}, "log_z": 1.0, "diagnostics": {"exact_log_z": 1.0}})
    assert exact.trust()[0]  # negative control: an exact answer with no error bar is trusted
    # healthy pooled weights flagged for the islands' spread: the verdict gives that reason
    why = "islands disagree (log Z spread 0.90 between 32 islands; limit 0.5)"
    isl = Result(**{**{f: getattr(ok, f) for f in ("samples", "log_weights", "log_z", "log_z_stderr", "ess",
                                                  "method", "target")},
                    "diagnostics": {"reliable": False, "unreliable_because": why}})
    assert isl.trust()[1].startswith("NOT trusted: " + why) and "degenerate" not in isl.trust()[1]
    plain = Result(**{**{f: getattr(isl, f) for f in ("samples", "log_weights", "log_z", "log_z_stderr", "ess",
                                                     "method", "target")}, "diagnostics": {"reliable": False}})
    assert plain.trust()[1].startswith("NOT trusted: degenerate weights")  # no reason given: the generic one


def test_figure_states_trust_exact_value_and_zooms_on_the_final_agreement(tmp_path):
    exact = 15.5
    hist = np.r_[np.linspace(0.0, 15.0, 50), exact + 0.01 * np.sin(np.arange(250))]
    res = Result(samples=torch.randint(0, 2, (64, 4, 4)) * 2 - 1, log_weights=torch.zeros(64, dtype=torch.float64),
                 log_z=15.51, log_z_stderr=0.02, ess=64.0, method="mdns",
                 target={"name": "Ising(L=4)"}, diagnostics={"exact_log_z": exact},
                 history={"log_z": hist})
    fig = res.plot(tmp_path / "demo.png")
    title = fig._suptitle.get_text()
    assert title.startswith("trusted") and "exact 15.5000" in title
    panel = [ax for ax in fig.axes if ax.get_title() == "log_z"][0]
    lo, hi = panel.get_ylim()
    assert lo < exact < hi and hi - lo < 1.0  # the final agreement is visible, not the 0..15 transient
    snap = fig.axes[0]
    assert sorted(t.get_text() for t in snap.get_legend().get_texts()) == ["s = +1", "s = -1"]
    mcmc = Result(samples=res.samples, ess=64.0, method="swendsen_wang",
                  diagnostics={"log_z_unavailable": "MCMC"}, target={"name": "Ising(L=4)"})
    labels = [ax.get_ylabel() for ax in mcmc.plot().axes]
    assert "density" in labels and "density (weighted)" not in labels  # unweighted samples


def test_unreadable_file_and_folder_are_named_even_as_root(tmp_path, monkeypatch):
    """The permission paths, simulated (root reads everything, so chmod cannot test them there)."""
    import builtins
    from pathlib import Path

    path = _result().save(tmp_path / "r.npz")
    folder = tmp_path / "shards"
    folder.mkdir()
    real_open, real_read = builtins.open, Path.read_text

    def no_open(file, *a, **k):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    def no_read(self, *a, **k):
        if self.parent == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self, *a, **k)

    monkeypatch.setattr(builtins, "open", no_open)
    monkeypatch.setattr(Path, "read_text", no_read)
    with pytest.raises(FileAccessError, match=f"cannot read {path}: permission denied"):
        Result.load(path)
    with pytest.raises(FileAccessError, match=f"cannot read {folder / 'index.json'}: permission denied"):
        next(iter_shards(folder))
    monkeypatch.undo()
    assert Result.load(path).n_samples == 64  # negative control


def test_long_run_estimate_leaves_out_the_first_steps_warm_up(monkeypatch, capsys):
    from boltzkit import _utils

    clock = [0.0]
    monkeypatch.setattr(_utils.time, "monotonic", lambda: clock[0])
    bar = _utils.progress_bar(total=100, desc="train", enabled=None)
    for i in range(100):
        clock[0] += 10.0 if i == 0 else 1.0  # a 10 s warm-up, then 1 s per step: 109 s in all
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    estimates = [ln for ln in err.splitlines() if "will take about" in ln]
    assert len(estimates) == 1 and "about 1 min 49 s" in estimates[0], err  # not 100 x 10 s
    assert err.strip().splitlines()[-1].endswith("done in 1 min 49 s")
