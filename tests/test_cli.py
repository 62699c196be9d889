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
    out = capsys.readouterr().out
    assert "ais" in out
    import boltzkit as bk

    table = bk.methods()
    assert out.strip() == str(table).strip()  # bk.methods() is the table the CLI prints
    lines = str(table).splitlines()
    col = lines[0].index("log Z")  # aligned: every row has its log Z column at the same place
    assert all(ln[col:col + 3] in ("yes", "no ") or ln[col:col + 2] == "no" for ln in lines[2:]), lines


def test_misspelt_method_gets_a_suggestion_and_options_have_help(capsys):
    rc = main(["sample", "ising", "--L", "4", "--method", "aiss", "--n-samples", "16", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "did you mean 'ais'?" in err and err.count("\n") == 1
    from boltzkit.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["sample"]
    missing = [a.dest for a in sub._actions if a.dest != "help" and not a.help]
    assert not missing, missing


def test_sample_states_trust_first_and_shows_the_exact_potts_value(tmp_path, capsys):
    rc = main(["sample", "potts", "--L", "5", "--q", "3", "--beta", "1.0", "--method", "ais",
               "--n-samples", "128", "--n-steps", "10", "--seed", "0", "--quiet",
               "--plot", str(tmp_path / "p.png")])
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(("trusted", "NOT trusted")), out[0]  # said first
    if out[0].startswith("NOT"):
        assert out[1].strip().startswith("next:") and "train longer" not in out[1]  # AIS advice
        assert "annealing levels" in out[1]
    assert any(ln.strip().startswith("exact log Z =") for ln in out)


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


def test_cli_samples_a_smiles_molecule_on_its_torsions(tmp_path, capsys):
    pytest.importorskip("rdkit")
    out = tmp_path / "butane.npz"
    rc = main(["sample", "smiles", "--smiles", "CCCC", "--n-samples", "256", "--seed", "0", "--quiet",
               "--out", str(out)])
    assert rc == 0
    res = Result.load(out)
    assert res.method == "ais" and res.samples.shape == (256, 1)
    assert res.diagnostics["coordinates"].startswith("torsions on one period")
    import math

    import torch

    from boltzkit.energies import from_smiles

    grid = torch.linspace(-math.pi, math.pi, 401, dtype=torch.float64)[:-1, None]
    exact = float(torch.logsumexp(-from_smiles("CCCC").energy(grid).double(), 0) + math.log(2 * math.pi / 400))
    assert abs(res.log_z - exact) < 4 * res.log_z_stderr + res.log_z_stderr ** 2  # 1-D quadrature
    assert abs(res.log_z - exact - 0.3) > 4 * res.log_z_stderr  # negative control
    assert main(["sample", "smiles", "--quiet"]) == 2
    assert "--smiles CCCC" in capsys.readouterr().err
