"""The command line covers the main jobs: sample, info, explain, methods."""

import pytest

from boltzkit.cli import main
from boltzkit.result import Result


def test_sample_info_roundtrip(tmp_path, capsys):
    out = tmp_path / "run.npz"
    rc = main(["sample", "ising", "--L", "4", "--beta", "0.3", "--method", "ais", "--n-samples", "256",
               "--n-steps", "50", "--seed", "1", "--quiet", "--out", str(out), "--plot", str(tmp_path / "r.png")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "log Z =" in text and "exact log Z" in text
    res = Result.load(out)
    assert res.method == "ais" and res.n_samples == 256 and res.seed == 1
    assert (tmp_path / "r.png").exists()
    assert main(["info", str(out)]) == 0
    assert "samples: shape (256, 4, 4)" in capsys.readouterr().out


def test_explain_and_methods(capsys):
    assert main(["explain", "potts", "--L", "4", "--q", "3"]) == 0
    assert "would use" in capsys.readouterr().out
    assert main(["methods"]) == 0
    assert "ais" in capsys.readouterr().out


def test_cli_errors_are_messages_not_tracebacks(capsys):
    rc = main(["sample", "ising", "--L", "4", "--method", "ais", "--n-samples", "16", "--option", "bogus=1",
               "--quiet"])
    assert rc == 2
    assert "unknown option(s) ['bogus']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "no-such-target"])


def test_cli_samples_alanine_in_internal_coordinates(tmp_path, capsys):
    pytest.importorskip("openmm")
    pytest.importorskip("mdtraj")
    out = tmp_path / "ala.npz"
    rc = main(["sample", "alanine", "--method", "ais", "--n-samples", "32", "--n-steps", "5",
               "--seed", "0", "--quiet", "--out", str(out), "--plot", str(tmp_path / "ala.png")])
    assert rc == 0
    fig = Result.load(out).plot()
    assert fig.axes[0].get_xlabel() == "phi (deg)"  # the Ramachandran map, not x[0] vs x[1]
    res = Result.load(out)
    assert res.samples.shape == (32, 66) and "internal" in res.diagnostics["coordinates"]
    assert res.target["coordinates"] == "internal" and res.log_z is not None
    assert main(["explain", "alanine", "--coordinates", "cartesian"]) == 0
    assert "other coordinates" not in capsys.readouterr().out
