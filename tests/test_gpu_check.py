"""The prepared GPU check (``benchmarks/gpu_check.py``) must start and run every section
without a GPU: its dry run (toy sizes on CPU) writes a complete JSON marked dry-run, and a
section that fails is recorded as an error without stopping the others."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
SECTIONS = ("throughput_cpu", "mdns_ising16", "naas_gmm40", "ais_heat_bath_ising16")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.filterwarnings("ignore")
def test_dry_run_writes_every_section(gpu_check, tmp_path, monkeypatch):
    out = tmp_path / "dry.json"

    def broken(*args, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(gpu_check, "naas_gmm40", broken)  # a failing section is recorded, not fatal
    doc = gpu_check.main(["--dry-run", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["meta"]["dry_run"] is True and saved["meta"]["finished"] is True
    assert saved["meta"]["device"] == "cpu"
    assert set(SECTIONS) <= set(saved["sections"]) and doc["sections"].keys() == saved["sections"].keys()
    status = {k: v["status"] for k, v in saved["sections"].items()}
    assert status["naas_gmm40"] == "error" and "boom" in saved["sections"]["naas_gmm40"]["error"]
    assert all(status[k] == "ok" for k in SECTIONS if k != "naas_gmm40"), status
    thr = saved["sections"]["throughput_cpu"]
    assert thr["float32"]["samples_per_s"] > 0 and thr["ising_energy_evals_per_s"] > 0
    mdns = saved["sections"]["mdns_ising16"]
    assert mdns["exact_log_z"] > 0 and abs(mdns["log_z_err"]) < 5 and 0 < mdns["ess_frac"] <= 1
    ais = saved["sections"]["ais_heat_bath_ising16"]
    assert abs(ais["log_z"] - ais["exact_log_z"]) == pytest.approx(abs(ais["log_z_err"]))


def test_full_run_refuses_without_a_gpu(gpu_check, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full run would start")
    with pytest.raises(SystemExit, match="--dry-run"):
        gpu_check.main(["--out", str(tmp_path / "x.json")])
