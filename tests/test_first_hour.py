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


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions, not root")
def test_unreadable_file_and_folder_are_named(tmp_path):
    path = _result().save(tmp_path / "r.npz")
    path.chmod(0)
    try:
        with pytest.raises(FileAccessError, match=f"cannot read {path}: permission denied"):
            Result.load(path)
    finally:
        path.chmod(0o644)
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "index.json").write_text("{}")
    folder.chmod(0)
    try:
        with pytest.raises(FileAccessError, match="permission denied") as info:
            next(iter_shards(folder))
        assert str(folder) in str(info.value)
    finally:
        folder.chmod(0o755)
    with pytest.raises(ResultFileError, match=f"{folder}.*not a valid sample_to"):
        next(iter_shards(folder))


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
