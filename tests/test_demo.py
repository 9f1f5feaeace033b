import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.data import atomic_numbers, chemical_symbols
from scipy.optimize import minimize_scalar

from crystal_train.data import demo
from crystal_train.data.crystal import Crystal

EMT_METALS = {atomic_numbers[s] for s in ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")}


@pytest.fixture(scope="module")
def crystals():
    return demo.build_demo_crystals(200, seed=0)


def _ase_energy(atoms: Atoms) -> float:
    atoms.calc = EMT()
    return atoms.get_potential_energy()


def _to_ase(crystal: Crystal) -> Atoms:
    return Atoms(numbers=crystal.numbers, cell=crystal.lattice, scaled_positions=crystal.frac_coords, pbc=True)


def _fcc_crystal(symbol: str, a: float) -> Crystal:
    atoms = bulk(symbol, "fcc", a=a)
    return Crystal("fcc", np.array(atoms.cell), atoms.numbers.astype(np.int64), atoms.get_scaled_positions())


def test_deterministic_for_a_seed():
    first, second = demo.build_demo_crystals(30, seed=3), demo.build_demo_crystals(30, seed=3)
    other = demo.build_demo_crystals(30, seed=4)
    for a, b in zip(first, second):
        assert a.id == b.id and a.target == b.target
        assert np.array_equal(a.lattice, b.lattice)
        assert np.array_equal(a.numbers, b.numbers)
        assert np.array_equal(a.frac_coords, b.frac_coords)
    assert [c.target for c in first] != [c.target for c in other]


def test_count_ids_and_fields(crystals):
    assert len(crystals) == 200
    assert crystals[0].id == "demo-00001" and crystals[-1].id == "demo-00200"
    assert len({c.id for c in crystals}) == 200
    for c in crystals:
        assert c.split is None
        assert c.lattice.shape == (3, 3) and c.frac_coords.shape == (c.num_atoms, 3)
        assert c.numbers.dtype == np.int64
        assert np.all((c.frac_coords >= 0) & (c.frac_coords < 1))
    assert demo.build_demo_crystals(0) == []
    with pytest.raises(ValueError):
        demo.build_demo_crystals(-1)


def test_variety_of_cells_and_compositions(crystals):
    sizes = {c.num_atoms for c in crystals}
    assert min(sizes) == 1 and max(sizes) == 16
    assert {len(set(c.numbers)) for c in crystals} == {1, 2, 3}
    angles = np.array([c.to_pymatgen().lattice.angles for c in crystals])
    assert np.mean(np.any(np.abs(angles - 90) > 10, axis=1)) > 0.2  # not only near-cubic cells


def test_only_emt_metals_and_positive_volume(crystals):
    for c in crystals:
        assert set(c.numbers.tolist()) <= EMT_METALS
        assert np.linalg.det(c.lattice) > 0


def test_no_atoms_closer_than_1_8_angstrom(crystals):
    for c in crystals[::4]:
        structure = c.to_pymatgen()
        assert all(len(nbrs) == 0 for nbrs in structure.get_all_neighbors(1.8)), c.id


def test_targets_finite_sensible_with_spread(crystals):
    y = np.array([c.target for c in crystals])
    assert np.all(np.isfinite(y))
    assert np.all(np.abs(y) < 1.0) and np.mean(np.abs(y) < 0.5) > 0.95
    assert y.std() > 0.03
    assert y.min() < 0 < y.max()


def test_targets_match_independent_ase_emt(crystals):
    sample = crystals[:4] + [max(crystals, key=lambda c: c.num_atoms)]
    mu = {}
    for z in {int(z) for c in sample for z in c.numbers}:
        symbol = chemical_symbols[z]
        energy = lambda a: _ase_energy(bulk(symbol, "fcc", a=a))  # noqa: E731
        mu[z] = minimize_scalar(energy, bounds=(3.2, 4.4), method="bounded", options={"xatol": 1e-4}).fun
    for c in sample:
        expected = (_ase_energy(_to_ase(c)) - sum(mu[int(z)] for z in c.numbers)) / c.num_atoms
        assert c.target == pytest.approx(expected, abs=1e-6), c.id


def test_emt_energy_equals_ase_on_distorted_cell():
    fcc_sites = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    frac = np.concatenate([fcc_sites * [1, 1, 0.5], fcc_sites * [1, 1, 0.5] + [0, 0, 0.5]])
    crystal = Crystal(
        "x",
        np.array([[3.7, 0.1, 0.0], [0.3, 3.9, 0.2], [0.0, -0.2, 7.6]]),
        np.array([29, 79, 46, 29, 13, 28, 78, 47], dtype=np.int64),
        frac + np.random.default_rng(1).random((8, 3)) * 0.02 - 0.01,  # some coordinates fall outside [0, 1)
    )
    assert demo.emt_energy(crystal) == pytest.approx(_ase_energy(_to_ase(crystal)), abs=1e-9)


@pytest.mark.parametrize("symbol", ["Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt"])
def test_fcc_reference_is_ase_emt_minimum(symbol):
    a0, mu = demo.fcc_reference(symbol)
    assert mu == pytest.approx(_ase_energy(bulk(symbol, "fcc", a=a0)), abs=1e-9)
    assert _ase_energy(bulk(symbol, "fcc", a=a0 - 0.01)) > mu
    assert _ase_energy(bulk(symbol, "fcc", a=a0 + 0.01)) > mu
    assert demo.formation_energy_per_atom(_fcc_crystal(symbol, a0)) == pytest.approx(0.0, abs=1e-9)


def test_formation_energy_depends_on_structure():
    a0, _ = demo.fcc_reference("Cu")
    a_bcc = a0 / 2 ** (1 / 3)  # same volume per atom as fcc
    atoms = bulk("Cu", "bcc", a=a_bcc)
    bcc = Crystal("bcc", np.array(atoms.cell), atoms.numbers.astype(np.int64), atoms.get_scaled_positions())
    assert demo.formation_energy_per_atom(bcc) > 0.01


def test_non_emt_element_is_rejected():
    with pytest.raises(ValueError):
        demo.emt_energy(_fcc_crystal("Fe", 3.6))


def test_fingerprint_tracks_settings(monkeypatch):
    key = demo.demo_fingerprint(1000, 0)
    assert key == demo.demo_fingerprint(1000, 0)
    assert len({key, demo.demo_fingerprint(999, 0), demo.demo_fingerprint(1000, 1)}) == 3
    monkeypatch.setattr(demo, "DEMO_VERSION", demo.DEMO_VERSION + 1)
    assert demo.demo_fingerprint(1000, 0) != key


def test_fingerprint_tracks_the_emt_parameters_of_the_installed_ase(monkeypatch):
    key = demo.demo_fingerprint(1000, 0)
    changed = dict(demo.parameters)
    changed["Cu"] = (changed["Cu"][0] + 0.01, *changed["Cu"][1:])
    monkeypatch.setattr(demo, "parameters", changed)
    assert demo.demo_fingerprint(1000, 0) != key
