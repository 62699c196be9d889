"""Molecular targets: OpenMM alanine dipeptide, RDKit torsion targets, analysis helpers.

Oracles: OpenMM itself (a Context built here independently of boltzkit), the published
regression energies of the openmmtools system, finite differences, RDKit's own MMFF energies
and dihedral routines, exact symmetries (translation, rotation, mirror image), and exact
multinomial populations for the basin estimators.
"""

import math
import pickle
import warnings

import numpy as np
import pytest
import torch

from _stats import assert_consistent, assert_rejects

mm = pytest.importorskip("openmm")
app = pytest.importorskip("openmm.app")
unit = pytest.importorskip("openmm.unit")
md = pytest.importorskip("mdtraj")

import boltzkit as bk  # noqa: E402
from boltzkit.analysis import (ALANINE_BASINS, alanine_basin, basin_ess, basin_free_energies,  # noqa: E402
                               basin_populations, dihedral, load_alanine_reference,
                               ramachandran_histogram)
from boltzkit.energies.molecular import AlanineDipeptide, alanine_dipeptide_files  # noqa: E402

KT300 = 2.494338785  # kJ/mol, R * 300 K


@pytest.fixture(scope="module")
def vac():
    """Sampled in its Cartesian harmonic frame (the tests of that frame); the default,
    internal coordinates, is tested in test_internal_coordinates.py and below."""
    return AlanineDipeptide("vacuum", coordinates="cartesian")


@pytest.fixture(scope="module")
def raw_vac():
    """No restraint: the energy is exactly OpenMM's U / kT."""
    return AlanineDipeptide("vacuum", com_restraint=None)


def _independent_openmm(solvent):
    """Energy (kJ/mol) and forces of the shipped coordinates from a Context built here."""
    f = alanine_dipeptide_files()
    prmtop = app.AmberPrmtopFile(f["prmtop"])
    system = prmtop.createSystem(implicitSolvent=None if solvent == "vacuum" else app.OBC1,
                                 constraints=None, nonbondedCutoff=None)
    ctx = mm.Context(system, mm.VerletIntegrator(1.0 * unit.femtosecond),
                     mm.Platform.getPlatformByName("Reference"))
    pos = app.AmberInpcrdFile(f["crd"]).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    ctx.setPositions(pos * unit.nanometer)
    st = ctx.getState(getEnergy=True, getForces=True)
    return (st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer),
            np.asarray(pos))


def _random_rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return torch.from_numpy(q * np.linalg.det(q))  # proper rotation


def _near(target, n, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = target.reference_state().double()
    return x0 + scale * torch.randn(n, x0.shape[1], generator=g, dtype=torch.float64)


def test_core_import_does_not_load_optional_dependencies():
    import subprocess
    import sys

    code = ("import sys, boltzkit as bk; bk.energies.AlanineDipeptide; "
            "print(sorted(m for m in ('openmm', 'mdtraj', 'rdkit', 'openmmtools') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- OpenMM energies
@pytest.mark.parametrize("solvent", ["vacuum", "implicit"])
def test_energy_and_forces_match_openmm_and_regression(solvent):
    e_ref, f_ref, pos = _independent_openmm(solvent)
    assert e_ref == pytest.approx(AlanineDipeptide.REGRESSION_KJ_MOL[solvent], abs=1e-3)
    target = AlanineDipeptide(solvent, platform="Reference", com_restraint=None)
    x = torch.from_numpy(pos).reshape(1, 66)  # uncentred coordinates: translation invariance
    u = target.energy(x)
    assert u.dtype == torch.float64 and u.shape == (1,)
    assert float(u) * KT300 == pytest.approx(e_ref, abs=1e-6)
    g = target.grad_energy(x).reshape(22, 3).numpy()
    np.testing.assert_allclose(g, -f_ref / KT300, rtol=1e-9, atol=1e-9)


def test_auto_platform_and_implicit_cpu_agree_with_reference():
    auto = AlanineDipeptide("implicit")
    assert auto.platform == "CPU" and AlanineDipeptide("vacuum").platform == "Reference"
    ref = AlanineDipeptide("implicit", platform="Reference")
    x = _near(ref, 3, 0.005, 1)
    np.testing.assert_allclose(auto.energy(x).numpy(), ref.energy(x).numpy(), rtol=1e-5, atol=1e-3)


def test_gradient_matches_finite_differences(raw_vac):
    x = _near(raw_vac, 3, 0.004, 2)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g = raw_vac.grad_energy(x)
    eps = 1e-6
    fd = (raw_vac.energy(x + eps * v) - raw_vac.energy(x - eps * v)) / (2 * eps)
    np.testing.assert_allclose((g * v).sum(1).numpy(), fd.numpy(), rtol=1e-6)
    # autograd path gives the same gradient
    xr = x.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(raw_vac.energy(xr).sum(), xr)
    torch.testing.assert_close(ga, g)


def test_double_backward_hessian_vector_product(vac):
    """Adjoint samplers differentiate the gradient: the FD Hessian-vector product must be a
    symmetric bilinear form and match a finite difference with a different step."""
    x = _near(vac, 2, 0.003, 4)
    gen = torch.Generator().manual_seed(5)
    v, w = (torch.randn(x.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(vac.energy(xr).sum(), xr, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), xr)
    xr2 = x.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(vac.energy(xr2).sum(), xr2, create_graph=True)
    (hw,) = torch.autograd.grad((g2 * w).sum(), xr2)
    np.testing.assert_allclose((hv * w).sum(1).numpy(), (hw * v).sum(1).numpy(), rtol=1e-5)
    eps = 3e-6
    fd = (vac.grad_energy(x + eps * v) - vac.grad_energy(x - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hv.numpy(), fd.numpy(), rtol=1e-4, atol=1e-2 * fd.abs().max().item())


def test_batched_equals_looped_and_shapes(vac):
    x = _near(vac, 6, 0.005, 6)
    u = vac.energy(x)
    loop = torch.cat([vac.energy(x[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(u, loop, rtol=0, atol=0)
    torch.testing.assert_close(vac.energy(x.reshape(6, 22, 3)), u)
    assert vac.energy(x.float()).dtype == torch.float32
    with pytest.raises(bk.errors.TargetError, match=r"\(B, 66\)"):
        vac.energy(x[:, :60])


def test_units_two_temperatures():
    x = _near(AlanineDipeptide(), 3, 0.003, 7)
    t300 = AlanineDipeptide(temperature=300.0, com_restraint=None)
    t450 = AlanineDipeptide(temperature=450.0, com_restraint=None)
    assert t300.kT == pytest.approx(KT300, rel=1e-8)
    assert t450.kT == pytest.approx(8.314462618e-3 * 450.0, rel=1e-8)
    e_kj = t300.openmm_energy(x)
    np.testing.assert_allclose(t300.energy(x).numpy() * t300.kT, e_kj, rtol=1e-12)
    np.testing.assert_allclose(t450.energy(x).numpy() * t450.kT, e_kj, rtol=1e-12)
    np.testing.assert_allclose((t300.energy(x) / t450.energy(x)).numpy(), 1.5, rtol=1e-12)


def test_symmetries_and_com_restraint(vac, raw_vac):
    x = _near(vac, 4, 0.004, 8)
    shift = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    xt = (x.reshape(4, 22, 3) + shift).reshape(4, 66)
    rot = _random_rotation(9)
    xr = (x.reshape(4, 22, 3) @ rot.T).reshape(4, 66)
    mirror = -x
    u = raw_vac.energy(x)
    for y in (xt, xr):
        np.testing.assert_allclose(raw_vac.energy(y).numpy(), u.numpy(), rtol=1e-9, atol=1e-7)
    # ff96 is achiral: a mirror image has the same energy, up to the torsion phases that the
    # prmtop stores as 3.141594 instead of pi (asymmetry ~1e-5 kT)
    np.testing.assert_allclose(raw_vac.energy(mirror).numpy(), u.numpy(), rtol=0, atol=1e-3)
    # the restraint adds exactly |c|^2 / (2 s^2) on the centre of geometry
    c = xt.reshape(4, 22, 3).mean(1)
    extra = (c * c).sum(1) / (2 * 0.1 ** 2)
    np.testing.assert_allclose((vac.energy(xt) - raw_vac.energy(xt)).numpy(), extra.numpy(), rtol=1e-9)
    assert float(vac.energy(vac.reference_state().double()) * KT300) == pytest.approx(-88.089, abs=1e-3)
    assert vac.exact_log_z() is None


@pytest.mark.parametrize("restrained", [False, True])
def test_clashes_give_inf_never_nan(raw_vac, vac, restrained):
    t = vac if restrained else raw_vac  # the centre-of-mass restraint must not turn +inf into NaN
    x = t.reference_state().double().repeat(3, 1)
    x[0, 3:6] = x[0, 0:3]  # two atoms on top of each other
    x[1, 7] = float("nan")
    u = t.energy(x)
    assert math.isinf(u[0]) and u[0] > 0 and math.isinf(u[1]) and u[1] > 0 and math.isfinite(u[2])
    g = t.grad_energy(x)
    assert bool(torch.isfinite(g).all()) and float(g[:2].abs().max()) == 0.0
    with pytest.raises(bk.errors.TargetError, match="infinite"):
        bk.energies.check_energy_values(u, 3)


def test_energy_cut_is_lin_log_and_continuous():
    cut = 100.0
    t = AlanineDipeptide(com_restraint=None, energy_cut=cut)
    raw = AlanineDipeptide(com_restraint=None)
    x = torch.cat([_near(t, 2, 0.002, 10), torch.randn(2, 66, dtype=torch.float64,
                                                      generator=torch.Generator().manual_seed(1))])
    u_raw, u = raw.energy(x), t.energy(x)
    low = u_raw <= cut
    assert bool(low[:2].all()) and not bool(low[2:].any())
    torch.testing.assert_close(u[low], u_raw[low])
    torch.testing.assert_close(u[~low], cut + torch.log1p(u_raw[~low] - cut))
    g_raw, g = raw.grad_energy(x[2:]), t.grad_energy(x[2:])
    torch.testing.assert_close(g, g_raw / (1 + u_raw[2:] - cut)[:, None])


def test_validate_target_on_reference_draws(vac):
    # the Reals reference draws standard-normal coordinates: clashing but finite energies
    bk.energies.validate_target(vac, needs_grad=True)
    assert vac.domain == bk.domains.Reals(66)


def test_pickle_rebuilds_context(vac):
    x = _near(vac, 2, 0.003, 11)
    clone = pickle.loads(pickle.dumps(vac))
    torch.testing.assert_close(clone.energy(x), vac.energy(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- analysis
def test_phi_psi_indices_and_values(vac):
    traj = vac.to_mdtraj(vac.reference_state())
    phi_idx, phi = md.compute_phi(traj)
    psi_idx, psi = md.compute_psi(traj)
    assert [tuple(r) for r in phi_idx] == [AlanineDipeptide.PHI_ATOMS]
    assert [tuple(r) for r in psi_idx] == [AlanineDipeptide.PSI_ATOMS]
    names = [a.name for a in vac.mdtraj_topology.atoms]
    assert [names[i] for i in AlanineDipeptide.PHI_ATOMS] == ["C", "N", "CA", "C"]
    p, s = vac.phi_psi(vac.reference_state())
    assert abs(abs(math.degrees(p[0])) - 180) < 0.1 and abs(abs(math.degrees(s[0])) - 180) < 0.1
    x = _near(vac, 5, 0.05, 12)
    p, s = vac.phi_psi(x)
    tp, ts = vac.phi_psi_torch(x)
    d = np.angle(np.exp(1j * (np.stack([p, s]) - np.stack([tp.numpy(), ts.numpy()]))))
    assert np.abs(d).max() < 1e-5  # mdtraj works in float32


def test_chirality_l_and_mirror_d(vac):
    x = vac.reference_state().double()
    assert bool(vac.is_l(x).all()) and float(vac.chirality(x)) > 0
    assert not bool(vac.is_l(-x).any())
    # the sign is a property of the molecule, not of its orientation
    rot = _random_rotation(13)
    xr = (x.reshape(1, 22, 3) @ rot.T).reshape(1, 66)
    torch.testing.assert_close(vac.chirality(xr), vac.chirality(x))


def test_short_mala_run_near_structure(vac):
    # no shift needed: MALA starts from and is preconditioned by the target's prior hint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bk.errors.ConvergenceWarning)
        res = bk.sample(vac, method="mala", n_samples=8 * 20, n_steps=150, n_chains=8, seed=0)
    x = res.samples.double()
    u = vac.energy(x)
    assert bool(torch.isfinite(u).all()) and float(u.max()) < 20.0  # no clashes, near the minimum
    assert bool(vac.is_l(x).all())
    assert 0.2 < res.diagnostics["acceptance"] < 0.9
    # energy fluctuations of a thermal state of 63 internal dof: mean > minimum + a few kT
    assert float(u.mean() - u.min()) > 1.0
    # the old workaround (coordinates relative to the structure) still works
    shifted = vac.shifted()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bk.errors.ConvergenceWarning)
        res = bk.sample(shifted, method="mala", n_samples=8 * 5, n_steps=20, n_chains=8,
                        init_std=0.003, seed=0)
    assert bool(vac.is_l(shifted.to_absolute(res.samples.double())).all())


def test_prior_hint_is_the_harmonic_frame_of_a_minimum(vac):
    hint = vac.prior_hint()
    assert hint is vac.prior_hint()  # cached
    xm = hint.loc[None]
    assert float(vac.energy(xm)) < float(vac.energy(vac.reference_state().double())) - 5.0
    assert float(vac.grad_energy(xm).abs().max()) < 1e-2  # a stationary point ...
    # ... and, in the frame, the curvature is the identity except along the capped flat
    # directions (3 rotations and the softest torsional modes), where it is below 1
    fe = bk.energies.base.FramedEnergy(vac, hint)
    eye = torch.eye(66, dtype=torch.float64)
    h = 1e-3
    hz = (fe.grad_energy(h * eye) - fe.grad_energy(-h * eye)) / (2 * h)
    ev = torch.linalg.eigvalsh(0.5 * (hz + hz.T))
    lam = torch.linalg.eigvalsh(vac.hessian(xm))
    n_capped = int((lam.abs() < 1.0 / vac.hint_max_std ** 2).sum())
    assert 3 <= n_capped <= 10
    assert float(ev.max()) < 1.01 and float(ev.min()) > -0.05
    assert int(((ev - 1.0).abs() < 0.01).sum()) == 66 - n_capped
    # harmonic draws are L-alanine conformations near the C5/C7eq basin, without clashes
    z = torch.randn(256, 66, generator=torch.Generator().manual_seed(0))
    x = hint.to_x(z)
    assert bool(vac.is_l(x).all()) and float(vac.energy(x).max()) < 1e3
    assert bk.energies.molecular.OpenMMEnergy.prior_hint is not bk.energies.base.Energy.prior_hint


@pytest.mark.parametrize("coordinates", ["internal", "cartesian"])
def test_bk_sample_alanine_dipeptide_end_to_end(vac, coordinates):
    # the priority choice (a neural sampler), in internal coordinates (the default) or the
    # Cartesian frame:
    # Cartesian states with finite energies, L chirality, finite log-weights and a log Z
    # estimate; a few training steps only
    target = vac if coordinates == "cartesian" else AlanineDipeptide("vacuum")
    view = target.sampling_view()
    choice = bk.select(vac if view is None else view.target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bk.sample(target, choice.name, n_steps=2, n_samples=128, seed=0, batch_size=16,
                        n_time_steps=128)
    assert res.method == choice.name in ("naas", "pdns")
    assert ("internal" in res.diagnostics.get("coordinates", "")) == (coordinates == "internal")
    x = res.samples.double()
    assert x.shape == (128, 66)
    u = vac.energy(x)
    assert bool(torch.isfinite(u).all()) and float(u.median()) < 0.0  # thermal, not clashing
    assert bool(vac.is_l(x).all())
    assert bool(torch.isfinite(res.log_weights).all()) and math.isfinite(res.log_z)
    assert res.diagnostics["prior_hint"] is True
    phi, psi = vac.phi_psi(x)
    dfs = basin_free_energies(phi, psi, res.log_weights.numpy(), n_blocks=4)
    assert dfs["C7eq"] == (0.0, 0.0)


def test_basin_labels_and_histogram():
    deg = np.radians
    phi = deg(np.array([-80.0, -150.0, 170.0, -70.0, 60.0, 119.0, 121.0, -70.0]))
    psi = deg(np.array([70.0, 150.0, 170.0, -40.0, 30.0, -60.0, 150.0, 60.0]))
    assert alanine_basin(phi, psi).tolist() == [0, 0, 0, 1, 2, 2, 0, 0]
    h, edges = ramachandran_histogram(phi, psi, bins=36)
    assert h.shape == (36, 36) and h.sum() == pytest.approx(1.0) and edges[0] == -180.0


def test_basin_free_energies_against_exact_populations():
    """Samples from a known 3-basin mixture (uniform inside boxes): the jackknife dF must cover
    the exact -log(p_A / p_C7eq) and reject a value 1 kT away."""
    probs = np.array([0.7, 0.25, 0.05])
    rng = np.random.default_rng(0)
    n = 20000
    lab = rng.choice(3, size=n, p=probs)
    boxes = {0: ((-170, -60), (100, 170)), 1: ((-100, -40), (-60, 0)), 2: ((40, 90), (-40, 60))}
    phi, psi = np.empty(n), np.empty(n)
    for k, ((a, b), (c, d)) in boxes.items():
        m = lab == k
        phi[m], psi[m] = rng.uniform(a, b, m.sum()), rng.uniform(c, d, m.sum())
    phi, psi = np.radians(phi), np.radians(psi)
    dfs = basin_free_energies(phi, psi, n_blocks=20)
    pops = basin_populations(phi, psi, n_blocks=20)
    for i, b in enumerate(ALANINE_BASINS):
        assert_consistent(pops[b][0], pops[b][1], probs[i], what=f"P({b})")
        if i:
            truth = -math.log(probs[i] / probs[0])
            assert_consistent(*dfs[b], truth, what=f"dF({b})")
            assert_rejects(*dfs[b], truth + 1.0, what=f"dF({b})")
    # importance weights: the same samples reweighted to equal basin probabilities
    lw = -np.log(probs[lab])
    dfw = basin_free_energies(phi, psi, lw, n_blocks=20)
    assert_consistent(*dfw["C7ax"], 0.0, what="reweighted dF(C7ax)")
    assert_rejects(*dfw["C7ax"], 1.0, what="reweighted dF(C7ax)")
    # weights constant within a basin: its effective sample count is its sample count
    ess = basin_ess(phi, psi, lw)
    for i, b in enumerate(ALANINE_BASINS):
        assert ess[b] == pytest.approx(float((lab == i).sum()), rel=1e-9)
    # one C7ax sample carrying nearly all of its basin's weight: the dF is flagged
    lw_bad = lw.copy()
    lw_bad[np.flatnonzero(lab == 2)[0]] += 12.0
    assert basin_ess(phi, psi, lw_bad)["C7ax"] < 2.0
    with pytest.warns(bk.errors.UnreliableEstimateWarning, match="C7ax"):
        basin_free_energies(phi, psi, lw_bad, n_blocks=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        basin_free_energies(phi, psi, lw, n_blocks=20)  # well-spread weights: no warning


def test_dihedral_torch_matches_mdtraj_convention():
    x = torch.randn(7, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    top = md.Topology()
    ch = top.add_chain()
    res = top.add_residue("X", ch)
    for i in range(4):
        top.add_atom(f"C{i}", md.element.carbon, res)
    ref = md.compute_dihedrals(md.Trajectory(x.numpy(), top), [[0, 1, 2, 3]])[:, 0]
    np.testing.assert_allclose(dihedral(x, (0, 1, 2, 3)).numpy(), ref, atol=1e-5)


def test_shipped_reference_file():
    ref = load_alanine_reference()
    n = ref["phi"].size
    assert ref["psi"].size == ref["log_weight"].size == ref["energy"].size == n >= 1000
    meta = ref["meta"]
    dfs = basin_free_energies(ref["phi"], ref["psi"], ref["log_weight"],
                              n_blocks=meta["settings"]["n_blocks"] * meta["settings"]["runs"])
    for b in ("alpha_R", "C7ax"):
        est, se = meta["delta_f_kT"][b]
        assert math.isfinite(est) and 0 < se < 0.5
        assert dfs[b][0] == pytest.approx(est, abs=1e-3)  # float32 storage
    # an independent method (replica exchange + MBAR) at the same force field agrees within 2 sigma;
    # a reference shifted by 1 kT would not (negative control)
    check = meta["cross_check"]["delta_f_kT"]
    for b in ("alpha_R", "C7ax"):
        (m, em), (r, er) = meta["delta_f_kT"][b], check[b]
        assert abs(m - r) < 2 * math.hypot(em, er)
        assert abs(m + 1.0 - r) > 2 * math.hypot(em, er)
    # the rare basin is visited (enhanced sampling) and C7ax is uphill from C7eq
    assert meta["delta_f_kT"]["C7ax"][0] > 1.0 and (alanine_basin(ref["phi"], ref["psi"]) == 2).mean() > 0.01


# ----------------------------------------------------------------------------- RDKit torsions
@pytest.fixture(scope="module")
def ala_torsions():
    pytest.importorskip("rdkit")
    return bk.energies.from_smiles("CC(=O)N[C@@H](C)C(=O)NC", seed=0, n_conformers=4)


def test_from_smiles_matches_rdkit_mmff(ala_torsions):
    from rdkit import Chem
    from rdkit.Chem import AllChem, rdMolTransforms

    t = ala_torsions
    assert t.domain == bk.domains.Reals(4) and t.torsions.shape == (4, 4)
    mol = Chem.MolFromMolBlock(t.molblock, removeHs=False)
    ff = AllChem.MMFFGetMoleculeForceField(mol, AllChem.MMFFGetMoleculeProperties(mol))
    e_min = ff.CalcEnergy()  # kcal/mol at the minimized template conformer
    kT = 1.987204259e-3 * 300.0
    u0 = t.energy(t.reference_state().double())
    assert float(u0) * kT == pytest.approx(e_min, abs=1e-6)
    # built conformers carry exactly the requested torsions (RDKit's own dihedral routine)
    th = t.wrap(t.reference_state().double() + 2.0 * torch.rand(5, 4, dtype=torch.float64,
                                                                generator=torch.Generator().manual_seed(0)) - 1.0)
    xyz = t.conformers(th)
    conf = mol.GetConformer()
    for b in range(5):
        for i in range(22):
            conf.SetAtomPosition(i, xyz[b, i].tolist())
        got = [rdMolTransforms.GetDihedralRad(conf, *map(int, q)) for q in t.torsions]
        np.testing.assert_allclose(np.angle(np.exp(1j * (np.array(got) - th[b].numpy()))), 0, atol=1e-9)
        # bond lengths are rigid
        for bond in mol.GetBonds():
            i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
            assert np.linalg.norm(xyz[b, i] - xyz[b, j]) == pytest.approx(
                np.linalg.norm(t.template[i] - t.template[j]), abs=1e-9)
        assert float(t.energy(th[b:b + 1])) * kT == pytest.approx(ff.CalcEnergy(xyz[b].ravel().tolist()), abs=1e-7)


def test_torsion_energy_gradient_periodicity_batching(ala_torsions):
    t = ala_torsions
    th = t.reference_state().double() + torch.randn(3, 4, dtype=torch.float64,
                                                    generator=torch.Generator().manual_seed(1))
    u = t.energy(th)
    assert bool(torch.isfinite(u).all())
    torch.testing.assert_close(torch.cat([t.energy(th[i:i + 1]) for i in range(3)]), u)
    torch.testing.assert_close(t.energy(th + 2 * math.pi), u, rtol=1e-9, atol=1e-8)
    g = t.grad_energy(th)
    eps = 1e-6
    fd = torch.stack([(t.energy(th + eps * e) - t.energy(th - eps * e)) / (2 * eps)
                      for e in torch.eye(4, dtype=torch.float64)], 1)
    np.testing.assert_allclose(g.numpy(), fd.numpy(), rtol=1e-5, atol=1e-6)
    hot = bk.energies.from_smiles("CC(=O)N[C@@H](C)C(=O)NC", temperature=600.0, n_conformers=4)
    torch.testing.assert_close(hot.energy(th) * 2, u)
    bk.energies.validate_target(t, needs_grad=True)
    assert t.exact_log_z() is None


def test_bk_sample_a_smiles_molecule_gives_the_torus_log_z():
    # butane's central torsion: the energy is 2 pi-periodic, so on R it has infinite mass;
    # bk.sample samples one period (the sampling view) and reports log Z of the circle
    pytest.importorskip("rdkit")
    t = bk.energies.from_smiles("CCCC")
    grid = torch.linspace(-math.pi, math.pi, 401, dtype=torch.float64)[:-1, None]
    exact = float(torch.logsumexp(-t.energy(grid).double(), 0) + math.log(2 * math.pi / 400))
    res = bk.sample(t, n_samples=1000, seed=0, progress=False)
    assert res.diagnostics["coordinates"].startswith("torsions on one period")
    assert res.diagnostics["reliable"]
    assert float(res.samples.min()) >= -math.pi and float(res.samples.max()) < math.pi
    assert_consistent(res.log_z, res.log_z_stderr, exact, bias=res.log_z_stderr ** 2)
    # negative control: half a kT off is rejected (without the view, 21.9 for pentane)
    assert_rejects(res.log_z, res.log_z_stderr, exact + 0.5)
    # the trans well (|theta| > 2 pi / 3) holds the mass the quadrature gives it
    trans = (grid[:, 0].abs() > 2 * math.pi / 3).double()
    p_exact = float((torch.softmax(-t.energy(grid).double(), 0) * trans).sum())
    p = float((torch.softmax(res.log_weights.double(), 0) * (res.samples[:, 0].abs() > 2 * math.pi / 3)).sum())
    se = math.sqrt(p_exact * (1 - p_exact) / res.ess)
    assert abs(p - p_exact) < 4 * se and abs(p - 1.0) > 4 * se


def test_from_smiles_bad_input():
    pytest.importorskip("rdkit")
    with pytest.raises(bk.errors.TargetError, match="parse"):
        bk.energies.from_smiles("C1CC(")
    with pytest.raises(bk.errors.TargetError, match="no rotatable"):
        bk.energies.from_smiles("C")


# ----------------------------------------------------------------------------- torch force field
def test_torch_force_field_matches_openmm_reference():
    """The torch backend (default in vacuum) against OpenMM's Reference Context on states near
    the structure and far from it (clashing, stretched): energies to 1e-6 kJ/mol, forces to
    1e-8 relative to the largest; the Hessian-vector product (exact, by autograd) against a
    central difference of OpenMM's own forces. Negative control: the rounded Coulomb constant
    of older OpenMM versions misses the energy tolerance."""
    from boltzkit.energies import openmm_energy as oe

    t = AlanineDipeptide(com_restraint=None, backend="torch")
    o = AlanineDipeptide(com_restraint=None, backend="openmm")
    assert t._torch_for(torch.zeros(1, 66)) and not o._torch_for(torch.zeros(1, 66))
    assert not AlanineDipeptide()._torch_for(torch.zeros(1, 66))  # auto: OpenMM on CPU
    x = torch.cat([_near(t, 16, 0.003, 11), _near(t, 16, 0.03, 12)])
    e_omm = o.openmm_energy(x)
    e_t = t.energy(x).numpy() * t.kT
    np.testing.assert_allclose(e_t, e_omm, rtol=0, atol=1e-6)
    g_t, g_o = t.grad_energy(x), o.grad_energy(x)
    scale = float(g_o.abs().max())
    np.testing.assert_allclose(g_t.numpy(), g_o.numpy(), rtol=0, atol=1e-8 * scale)
    # exact HVP vs a central difference of OpenMM forces
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    xr = x[:8].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(t.energy(xr).sum(), xr, create_graph=True)
    (hv,) = torch.autograd.grad(g, xr, grad_outputs=v[:8])
    eps = 1e-6
    fd = (o.grad_energy(x[:8] + eps * v[:8]) - o.grad_energy(x[:8] - eps * v[:8])) / (2 * eps)
    np.testing.assert_allclose(hv.numpy(), fd.numpy(), rtol=0, atol=1e-5 * float(fd.abs().max()))
    # negative control: the old rounded constant is visible at this tolerance
    ff = oe.TorchForceField(t.system)
    pos = x.reshape(-1, 22, 3)
    old = oe.ONE_4PI_EPS0
    try:
        oe.ONE_4PI_EPS0 = 138.935456
        e_rounded = ff(pos).numpy()
    finally:
        oe.ONE_4PI_EPS0 = old
    assert np.abs(e_rounded - e_omm).max() > 1e-6
    np.testing.assert_allclose(ff(pos).numpy(), e_omm, rtol=0, atol=1e-6)


def test_backend_choice_and_errors():
    assert AlanineDipeptide("implicit")._ff is None                   # GB force: OpenMM only
    assert AlanineDipeptide()._ff is not None                          # vacuum: torch on accelerators
    with pytest.raises(bk.errors.ConfigError, match="CustomGBForce"):
        AlanineDipeptide("implicit", backend="torch")
    with pytest.raises(bk.errors.ConfigError, match="backend"):
        AlanineDipeptide(backend="jax")
    t = AlanineDipeptide(backend="torch")
    assert pickle.loads(pickle.dumps(t)).backend == "torch"
    assert t.to_config()["backend"] == "torch"


def test_torch_backend_clashes_give_inf_and_zero_gradient():
    t = AlanineDipeptide(com_restraint=None, backend="torch")
    x = t.reference_state().double().repeat(3, 1)
    x[0, 3:6] = x[0, 0:3]
    x[1, 7] = float("nan")
    u, g = t.energy(x), t.grad_energy(x)
    assert math.isinf(u[0]) and u[0] > 0 and math.isinf(u[1]) and math.isfinite(u[2])
    assert bool(torch.isfinite(g).all()) and float(g[:2].abs().max()) == 0.0
