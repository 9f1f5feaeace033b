"""build_graph against a brute-force enumeration of periodic images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pymatgen.core import Lattice

from crystal_train.data.crystal import Crystal
from crystal_train.data.dataset import report_skipped
from crystal_train.data.graphs import GraphSettings, build_graph
from crystal_train.data.store import build_store

ALL = GraphSettings(cutoff=8.0, max_neighbors=None)


def brute_force(crystal: Crystal, cutoff: float, centres=None) -> dict[tuple[int, int, tuple[int, int, int]], float]:
    """{(i, j, image): distance} for every neighbour j + image of centre i with 0 < d <= cutoff."""
    lattice, frac = crystal.lattice, crystal.frac_coords
    cart = frac @ lattice
    # fractional component k of a vector v is v . b_k with b_k the k-th column of inv(lattice), so a
    # neighbour within the cutoff needs |n_k + (f_j - f_i)_k| <= cutoff * |b_k|
    reciprocal_norms = np.linalg.norm(np.linalg.inv(lattice), axis=0)
    spread = np.abs(frac[:, None, :] - frac[None, :, :]).max(axis=(0, 1))
    reach = np.ceil(cutoff * reciprocal_norms + spread).astype(int)
    images = np.array(list(itertools.product(*(range(-r, r + 1) for r in reach))))
    shifts = images @ lattice
    found = {}
    for i in range(crystal.num_atoms) if centres is None else centres:
        vectors = cart[None, :, :] + shifts[:, None, :] - cart[i]
        distances = np.linalg.norm(vectors, axis=2)
        for t, j in zip(*np.nonzero((distances > 1e-8) & (distances <= cutoff))):
            found[(i, int(j), tuple(int(x) for x in images[t]))] = float(distances[t, j])
    return found


def edges_of(graph) -> dict[tuple[int, int, tuple[int, int, int]], float]:
    """{(i, j, image): distance} of a built graph; fails on a repeated edge."""
    j, i = graph.edge_index
    edges = {
        (int(a), int(b), tuple(int(x) for x in image)): float(d)
        for a, b, image, d in zip(i, j, graph.images, graph.distances)
    }
    assert len(edges) == graph.distances.size, "an edge appears twice"
    return edges


def random_cell(rng, num_atoms, lengths=(2.5, 6.0), angles=(60.0, 120.0), cid="x") -> Crystal:
    while True:
        a, b, c = rng.uniform(*lengths, size=3)
        alpha, beta, gamma = rng.uniform(*angles, size=3)
        lattice = Lattice.from_parameters(a, b, c, alpha, beta, gamma)
        if lattice.volume > 0.05 * a * b * c:
            break
    return Crystal(
        id=cid,
        lattice=np.array(lattice.matrix),
        numbers=rng.integers(1, 90, size=num_atoms),
        frac_coords=rng.uniform(0, 1, size=(num_atoms, 3)),
    )


def skewed_cell(rng, alpha, beta, gamma, num_atoms=3) -> Crystal:
    lattice = Lattice.from_parameters(*rng.uniform(3.0, 4.5, size=3), alpha, beta, gamma)
    return Crystal(
        id="skewed",
        lattice=np.array(lattice.matrix),
        numbers=rng.integers(1, 90, size=num_atoms),
        frac_coords=rng.uniform(0, 1, size=(num_atoms, 3)),
    )


def supercell(repeats=5) -> Crystal:
    """A 2-atom rocksalt-like primitive cell (non-round lengths) repeated repeats^3 times: 250 atoms."""
    base = np.array([[0.0, 1.71, 1.71], [1.71, 0.0, 1.71], [1.71, 1.71, 0.0]]) * 1.03
    base_frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    cells = np.array(list(itertools.product(range(repeats), repeat=3)))
    frac = (cells[:, None, :] + base_frac[None, :, :]).reshape(-1, 3) / repeats
    numbers = np.tile([11, 17], len(cells))
    return Crystal(id="super", lattice=base * repeats, numbers=numbers, frac_coords=frac)


def assert_all_edges(crystal: Crystal, cutoff: float, centres=None) -> dict:
    graph = build_graph(crystal, GraphSettings(cutoff=cutoff, max_neighbors=None))
    built = edges_of(graph)
    if centres is not None:
        built = {key: d for key, d in built.items() if key[0] in set(centres)}
    expected = brute_force(crystal, cutoff, centres)
    assert built.keys() == expected.keys()
    keys = sorted(expected)
    np.testing.assert_allclose([built[k] for k in keys], [expected[k] for k in keys], rtol=0, atol=1e-9)
    return built


def assert_nearest(crystal: Crystal, cutoff: float, k: int, centres=None) -> None:
    """Each centre keeps every real neighbour no farther than its k-th nearest; those nearer weigh 1,
    those at the k-th distance share what is left of k, so the weights sum to min(k, available)."""
    graph = build_graph(crystal, GraphSettings(cutoff=cutoff, max_neighbors=k))
    built = edges_of(graph)
    weights = dict(zip(built, graph.weights))
    expected = brute_force(crystal, cutoff, centres)
    for i in range(crystal.num_atoms) if centres is None else centres:
        kept = {key: d for key, d in built.items() if key[0] == i}
        for key, d in kept.items():
            assert key in expected
            assert d == pytest.approx(expected[key], abs=1e-9)
        available = sorted(d for key, d in expected.items() if key[0] == i)
        if not available:
            assert not kept
            continue
        kth = available[min(k, len(available)) - 1]
        np.testing.assert_allclose(sorted(kept.values()), [d for d in available if d <= kth + 1e-6], rtol=0, atol=1e-9)
        assert sum(weights[key] for key in kept) == pytest.approx(min(k, len(available)), abs=1e-9)
        assert all(weights[key] == 1.0 for key, d in kept.items() if d < kth - 1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_random_cells_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    crystal = random_cell(rng, num_atoms=int(rng.integers(1, 5)))
    cutoff = float(rng.uniform(4.0, 8.0))
    assert_all_edges(crystal, cutoff)
    assert_nearest(crystal, cutoff, 12)


@pytest.mark.parametrize("seed", range(3))
def test_one_atom_cell_shorter_than_cutoff_has_self_images(seed):
    rng = np.random.default_rng(100 + seed)
    crystal = random_cell(rng, num_atoms=1, lengths=(2.0, 3.2))
    built = assert_all_edges(crystal, 7.0)
    assert len(built) > 50
    assert all(i == j == 0 and image != (0, 0, 0) for i, j, image in built)
    assert_nearest(crystal, 7.0, 12)


@pytest.mark.parametrize("angles", [(25.0, 25.0, 25.0), (90.0, 90.0, 20.0), (30.0, 80.0, 100.0), (150.0, 90.0, 90.0)])
def test_skewed_cells_match_brute_force(angles):
    rng = np.random.default_rng(7)
    crystal = skewed_cell(rng, *angles)
    assert_all_edges(crystal, 8.0)
    assert_nearest(crystal, 8.0, 12)


def test_supercell_sampled_centres_match_brute_force():
    crystal = supercell()
    assert crystal.num_atoms == 250
    centres = np.random.default_rng(0).choice(crystal.num_atoms, size=8, replace=False).tolist()
    built = assert_all_edges(crystal, 8.0, centres)
    # the shortest supercell translation is 12.5 Å, so no atom reaches its own image within 8 Å
    assert all(j != i for i, j, _ in built)
    assert_nearest(crystal, 8.0, 12, centres)


def test_supercell_atoms_have_as_many_neighbours_as_in_the_primitive_cell():
    prim = supercell(repeats=1)
    big = supercell(repeats=5)
    for crystal in (prim, big):
        graph = build_graph(crystal, ALL)
        counts = np.bincount(graph.edge_index[1], minlength=crystal.num_atoms)
        assert len(set(counts.tolist())) == 1
    assert np.bincount(build_graph(big, ALL).edge_index[1])[0] == np.bincount(build_graph(prim, ALL).edge_index[1])[0]


def test_self_images_present_when_other_atoms_exist():
    crystal = Crystal("two", np.diag([3.1, 3.3, 9.0]), np.array([8, 26]), np.array([[0, 0, 0], [0.5, 0.5, 0.5]]))
    built = assert_all_edges(crystal, 5.0)
    self_images = {image for i, j, image in built if i == j == 0}
    assert {(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0)} <= self_images
    assert (0, 0, 0) not in self_images


def test_fewer_neighbours_than_max_keeps_all():
    crystal = Crystal("sparse", np.diag([6.0, 7.0, 30.0]), np.array([3, 9]), np.array([[0, 0, 0], [0.5, 0.5, 0.0]]))
    every = build_graph(crystal, GraphSettings(cutoff=5.0, max_neighbors=None))
    capped = build_graph(crystal, GraphSettings(cutoff=5.0, max_neighbors=12))
    assert every.distances.size < 12 * crystal.num_atoms
    assert edges_of(every) == edges_of(capped)


def neighbourhoods(crystal: Crystal, settings: GraphSettings, original: np.ndarray) -> dict[int, list]:
    """{original centre index: sorted (original neighbour index, distance, weight)} of crystal's graph."""
    graph = build_graph(crystal, settings)
    j, i = graph.edge_index
    result: dict[int, list] = {}
    for a, b, d, w in zip(i, j, graph.distances, graph.weights):
        result.setdefault(int(original[a]), []).append((int(original[b]), round(float(d), 6), round(float(w), 9)))
    return {key: sorted(value) for key, value in result.items()}


def test_a_shell_cut_by_the_neighbour_cap_is_kept_whole_with_shared_weights():
    # bcc: 8 neighbours at a*sqrt(3)/2, then 6 at a, so k=12 leaves 4 places for the 6 tied ones.
    lattice = np.eye(3) * 2.87 * 2
    frac = np.array(
        [[x, y, z] for x in (0, 0.5) for y in (0, 0.5) for z in (0, 0.5)]
        + [[x + 0.25, y + 0.25, z + 0.25] for x in (0, 0.5) for y in (0, 0.5) for z in (0, 0.5)]
    )
    numbers = np.full(16, 26)
    numbers[1], numbers[4] = 28, 27  # atom 0's second shell: atom 1 Ni, atom 2 Fe, atom 4 Co, two images each
    settings = GraphSettings(cutoff=6.0, max_neighbors=12)
    graph = build_graph(Crystal("bcc", lattice, numbers, frac), settings)
    centre_0 = graph.edge_index[1] == 0
    tied = centre_0 & np.isclose(graph.distances, 2.87)
    assert sorted(graph.edge_index[0][tied].tolist()) == [1, 1, 2, 2, 4, 4]  # Ni, Fe and Co all kept
    np.testing.assert_allclose(graph.weights[tied], 4 / 6)
    np.testing.assert_array_equal(graph.weights[centre_0 & ~tied], 1.0)
    np.testing.assert_allclose(np.bincount(graph.edge_index[1], weights=graph.weights), 12.0)

    order = np.random.default_rng(0).permutation(16)
    shuffled = Crystal("bcc", lattice, numbers[order], frac[order])
    assert neighbourhoods(shuffled, settings, order) == neighbourhoods(Crystal("bcc", lattice, numbers, frac), settings, np.arange(16))


def test_atom_order_cannot_choose_between_inequivalent_sites_at_the_cut():
    """Ti has three O at 2.0 Å on two inequivalent sites and room for two: each O edge weighs 2/3 in either order."""
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 1 / 3, 0.0]])
    numbers = np.array([22, 8, 8])
    settings = GraphSettings(cutoff=8.0, max_neighbors=2)
    listed = neighbourhoods(Crystal("TiO2", np.diag([4.0, 6.0, 20.0]), numbers, frac), settings, np.arange(3))
    assert listed[0] == [(1, 2.0, round(2 / 3, 9)), (1, 2.0, round(2 / 3, 9)), (2, 2.0, round(2 / 3, 9))]
    order = np.array([2, 1, 0])
    reordered = Crystal("TiO2", np.diag([4.0, 6.0, 20.0]), numbers[order], frac[order])
    assert neighbourhoods(reordered, settings, order) == listed


@pytest.mark.parametrize("seed", range(4))
def test_ties_are_found_near_the_kth_distance_not_on_a_fixed_grid(seed):
    """The three O sit at 2.0000005 Å, half-way between two 1e-6 Å steps: rounding each distance to a step
    would split the tie one way or the other with the rounding noise of a rotation, translation or supercell."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    lattice = np.diag([4.000001, 6.0000015, 20.0]) * rng.choice([1, 2], size=(3, 1)) @ rotation
    repeats = np.abs(np.round(np.linalg.norm(lattice, axis=1) / np.array([4.000001, 6.0000015, 20.0]))).astype(int)
    cells = np.array(list(itertools.product(*(range(r) for r in repeats))))
    base = np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 1 / 3, 0.0]]) + rng.random(3)
    frac = ((base[None] + cells[:, None]) / repeats).reshape(-1, 3)
    crystal = Crystal("TiO2", lattice, np.tile([22, 8, 8], len(cells)), frac)
    graph = build_graph(crystal, GraphSettings(cutoff=8.0, max_neighbors=2))
    titanium = graph.edge_index[1] % 3 == 0
    np.testing.assert_allclose(graph.distances[titanium], 2.0000005, atol=1e-9)
    np.testing.assert_allclose(graph.weights[titanium], 2 / 3, rtol=1e-12)


def test_permuted_atom_order_keeps_each_centres_neighbour_shells():
    rng = np.random.default_rng(3)
    crystal = supercell(repeats=2)
    perm = rng.permutation(crystal.num_atoms)
    permuted = Crystal("p", crystal.lattice, crystal.numbers[perm], crystal.frac_coords[perm])
    settings = GraphSettings(cutoff=6.0, max_neighbors=12)

    assert neighbourhoods(crystal, settings, np.arange(crystal.num_atoms)) == neighbourhoods(permuted, settings, perm)


def test_store_gives_each_crystal_the_same_graph_whatever_the_input_order():
    rng = np.random.default_rng(11)
    crystals = [random_cell(rng, int(rng.integers(1, 4)), cid=f"c{n}") for n in range(6)]
    settings = GraphSettings(cutoff=6.0, max_neighbors=12)
    order = rng.permutation(len(crystals))

    def per_id(items):
        store = build_store(items, lambda c: c, settings, num_workers=1, progress=False)
        return {
            cid: (
                store.edge_index[:, store.edge_ptr[n] : store.edge_ptr[n + 1]].tolist(),
                store.distances[store.edge_ptr[n] : store.edge_ptr[n + 1]].tolist(),
                store.edge_weights()[store.edge_ptr[n] : store.edge_ptr[n + 1]].tolist(),
            )
            for n, cid in enumerate(store.ids)
        }

    assert per_id(crystals) == per_id([crystals[k] for k in order])


def test_isolated_atoms_in_huge_cell():
    crystal = Crystal(
        "gas",
        np.eye(3) * 100.0,
        np.array([1, 2, 8]),
        np.array([[0.1, 0.1, 0.1], [0.5, 0.5, 0.5], [0.8, 0.2, 0.6]]),
    )
    graph = build_graph(crystal, GraphSettings(cutoff=4.0, max_neighbors=12))
    assert graph.distances.size == 0
    assert graph.isolated_atoms == crystal.num_atoms


def test_isolated_atoms_counts_only_atoms_without_neighbours():
    crystal = Crystal(
        "pair+lone",
        np.eye(3) * 50.0,
        np.array([1, 1, 8]),
        np.array([[0.1, 0.1, 0.1], [0.115, 0.1, 0.1], [0.6, 0.6, 0.6]]),
    )
    assert build_graph(crystal, GraphSettings(cutoff=3.0, max_neighbors=None)).isolated_atoms == 1


def test_crystals_with_isolated_atoms_are_named(caplog):
    dense = Crystal("dense", np.eye(3) * 3.0, np.array([26]), np.zeros((1, 3)))
    lone = Crystal("pair+lone", np.eye(3) * 50.0, np.array([1, 1, 8]), np.array([[0.1, 0.1, 0.1], [0.115, 0.1, 0.1], [0.6, 0.6, 0.6]]))
    gas = Crystal("gas", np.eye(3) * 100.0, np.array([1, 2]), np.array([[0.1, 0.1, 0.1], [0.5, 0.5, 0.5]]))
    store = build_store([dense, lone, dense, gas], lambda c: c, GraphSettings(cutoff=4.0, max_neighbors=12), num_workers=1, progress=False)
    assert store.isolated_atoms == 3 and store.crystals_with_isolated_atoms().tolist() == [1, 3]
    with caplog.at_level("WARNING"):
        report_skipped(store)
    assert "3 atoms in 2 crystal(s) have no neighbour within the cutoff, so the model sees each of them alone: pair+lone, gas" in caplog.text


def test_image_offsets_place_the_neighbour_at_its_distance_for_coordinates_far_outside_the_cell():
    """A fractional coordinate of 200.5 needs translations near -200, beyond what 8-bit offsets hold."""
    lattice = np.eye(3) * 3.0
    frac = np.array([[0.0, 0.0, 0.0], [200.5, 0.5, 0.5]])
    graph = build_graph(Crystal(id="far", lattice=lattice, numbers=np.array([29, 29]), frac_coords=frac), GraphSettings(8.0, 12))
    j, i = graph.edge_index
    vectors = (frac[j] + graph.images - frac[i]) @ lattice
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), graph.distances, rtol=0, atol=1e-9)


def test_crystals_with_atoms_closer_than_any_bond_are_named(caplog):
    """Half an ångström is shorter than any bond, H2's 0.74 Å included: such a structure is broken, so a warning names it."""
    hydrogen = Crystal("H2", np.eye(3) * 6.0, np.array([1, 1]), np.array([[0.0, 0.0, 0.0], [0.74 / 6.0, 0.0, 0.0]]))
    squeezed = Crystal("squeezed", np.eye(3) * 6.0, np.array([8, 8]), np.array([[0.0, 0.0, 0.0], [0.3 / 6.0, 0.0, 0.0]]))
    tiny_cell = Crystal("bohr-as-angstrom", np.eye(3) * 0.45, np.array([26]), np.zeros((1, 3)))  # its own image 0.45 Å away
    store = build_store([hydrogen, squeezed, tiny_cell], lambda c: c, GraphSettings(cutoff=4.0, max_neighbors=12), num_workers=1, progress=False)
    assert store.crystals_with_close_atoms(0.5).tolist() == [1, 2]
    with caplog.at_level("WARNING"):
        report_skipped(store)
    assert "2 crystal(s) have atoms under 0.5 Å apart" in caplog.text
    assert caplog.text.rstrip().endswith("squeezed, bohr-as-angstrom")


def test_the_skip_summary_counts_reasons_by_kind_and_names_only_the_commonest(caplog):
    store = build_store([Crystal("dense", np.eye(3) * 3.0, np.array([26]), np.zeros((1, 3)))], lambda c: c, ALL, num_workers=1, progress=False)
    store.skipped = [(f"mp-{n}", f"invalid label 'Ac{n}' (not a finite number)") for n in range(40)]
    store.skipped += [("a", "partial occupancy or disorder (site 0: Zn0.5)"), ("b", "missing file b.cif"), ("c", "missing file c.cif")]
    store.skipped += [(kind, f"{kind}: particulars") for kind in ("k1", "k2", "k3", "k4", "k5")]
    with caplog.at_level("WARNING"):
        report_skipped(store, listed_in="skipped.csv")
    assert (
        "Skipped 48 item(s) (40 invalid label; 2 missing file; 1 partial occupancy or disorder; 1 k1; 1 k2; 1 k3; 2 for 2 other reason(s)); "
        "listed with their reasons in skipped.csv"
    ) in caplog.text
