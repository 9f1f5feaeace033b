"""Tests for CIF parsing (fast P1 path and pymatgen fallback) and structure-file reading."""

import warnings

import numpy as np
import pytest
from conftest import MP2018_SNAPSHOT
from pymatgen.core import Structure

from crystal_train.data import cif
from crystal_train.data.cif import parse_cif, read_structure_file
from crystal_train.data.crystal import SkippedItem

P1_HEADER = """# generated using pymatgen
data_test
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   4.10000000
_cell_length_b   5.20000000
_cell_length_c   6.30000000
_cell_angle_alpha   81.00000000
_cell_angle_beta   95.50000000
_cell_angle_gamma   101.25000000
_symmetry_Int_Tables_number   1
_chemical_formula_structural   ZnO
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
  1  'x, y, z'
"""
SITES_HEADER = """loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_symmetry_multiplicity
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
"""


def _p1_cif(rows: str) -> str:
    return P1_HEADER + SITES_HEADER + rows


def _pymatgen(text: str) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(text, fmt="cif")


def _assert_same_as_pymatgen(crystal, text: str) -> None:
    structure = _pymatgen(text)
    np.testing.assert_array_equal(crystal.numbers, structure.atomic_numbers)
    diff = crystal.frac_coords - structure.frac_coords
    np.testing.assert_allclose(diff - np.round(diff), 0, atol=1e-6)
    metric, reference = crystal.lattice @ crystal.lattice.T, structure.lattice.matrix @ structure.lattice.matrix.T
    np.testing.assert_allclose(metric, reference, atol=1e-6)


@pytest.fixture
def fallback_calls(monkeypatch):
    """Records the ids that went through the pymatgen path."""
    calls = []
    original = cif._parse_with_pymatgen

    def recording(text, item_id):
        calls.append(item_id)
        return original(text, item_id)

    monkeypatch.setattr(cif, "_parse_with_pymatgen", recording)
    return calls


def test_fast_path_matches_pymatgen_on_materials_project_cifs(fallback_calls):
    if not MP2018_SNAPSHOT.exists():
        pytest.skip("shared mp2018_megnet dataset not available")
    import pandas as pd

    rows = pd.read_csv(MP2018_SNAPSHOT, keep_default_na=False, nrows=300, usecols=["material_id", "cif"])
    for material_id, text in zip(rows.material_id, rows.cif):
        crystal = parse_cif(text, material_id)
        assert crystal.id == material_id
        _assert_same_as_pymatgen(crystal, text)
    assert fallback_calls == []


def test_fast_path_handles_column_order_uncertainties_and_wrapping(fallback_calls):
    text = P1_HEADER + (
        "loop_\n _atom_site_fract_z\n _atom_site_label\n _atom_site_fract_x\n"
        " _atom_site_type_symbol\n _atom_site_fract_y\n"
        "  0.5(2)  Zn1  -0.25  Zn  1.125\n"
        "  0.66666  O1  0.33334  O  0.0\n"
        "  0.1  O2  0.9  O  0.3\n"
    )
    crystal = parse_cif(text, "x")
    assert fallback_calls == []
    assert crystal.num_atoms == 3 and sorted(crystal.numbers.tolist()) == [8, 8, 30]
    assert np.all((crystal.frac_coords >= 0) & (crystal.frac_coords < 1))
    _assert_same_as_pymatgen(crystal, text)


def test_non_p1_cifs_fall_back_to_pymatgen(fallback_calls):
    triclinic = P1_HEADER.replace("'P 1'", "'P -1'").replace("  1  'x, y, z'\n", "  1  'x, y, z'\n  2  '-x, -y, -z'\n")
    triclinic += SITES_HEADER + "  Zn  Zn1  1  0.0  0.0  0.0  1\n  O  O1  2  0.1  0.2  0.3  1\n"
    cubic = (
        "data_NaCl\n_symmetry_space_group_name_H-M   'F m -3 m'\n"
        "_cell_length_a 5.64\n_cell_length_b 5.64\n_cell_length_c 5.64\n"
        "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
        + SITES_HEADER
        + "  Na  Na1  4  0.0  0.0  0.0  1\n  Cl  Cl1  4  0.5  0.5  0.5  1\n"
    )
    for item_id, text, atoms in (("triclinic", triclinic, 3), ("cubic", cubic, 8)):
        crystal = parse_cif(text, item_id)
        assert crystal.num_atoms == atoms
        _assert_same_as_pymatgen(crystal, text)
    assert fallback_calls == ["triclinic", "cubic"]


def test_overlapping_sites_fall_back_to_pymatgen(fallback_calls):
    # pymatgen merges sites closer than 1e-4 into one with total occupancy 2, which it rejects
    text = _p1_cif("  Zn  Zn1  1  0.10000  0.2  0.3  1\n  O  O1  1  0.10001  0.2  0.3  1\n")
    with pytest.raises(ValueError):
        _pymatgen(text)
    with pytest.raises(SkippedItem, match="malformed CIF"):
        parse_cif(text, "overlap")
    assert fallback_calls == ["overlap"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty CIF"),
        ("  \n\t\n", "empty CIF"),
        ("this is not a CIF file\n", "malformed CIF"),
        (_p1_cif("  Zn  Zn1  1  0.0  0.0  0.0  0.5\n  O  O1  1  0.5  0.5  0.5  1\n"), "partial occupancy or disorder (site 0: Zn0.5)"),
        (_p1_cif("  X  X1  1  0.0  0.0  0.0  1\n  O  O1  1  0.5  0.5  0.5  1\n"), "not an element: X"),  # not a made-up Z
        (_p1_cif("  Zn  Zn1  1  0.0  0.0  0.0  1\n  O  O1  1  0.5  0.5  0.5  1\n").replace("4.10000000", "nan", 1), "the cell or the atom"),
        (_p1_cif("  Zn  Zn1  1  0.0  0.0  0.0  1\n  O  O1  1  0.5  0.5  0.5  1\n").replace("4.10000000", "inf", 1), "the cell or the atom"),
        (_p1_cif(""), "malformed CIF: a loop_ in it lists no values (an atom-site loop without atoms?)"),  # pymatgen: "integer modulo by zero"
        (  # pymatgen only warns why it dropped the block; the reason says it
            _p1_cif("  Zn  Zn1  1  0.0  0.0  0.0  1.05\n  O  O1  1  0.5  0.5  0.5  1\n"),
            "malformed CIF: Invalid CIF file with no structures! (Occupancy 1.05 exceeded tolerance.)",
        ),
    ],
)
def test_unusable_cifs_raise_skipped_item(text, reason):
    with pytest.raises(SkippedItem) as caught:
        parse_cif(text, "bad")
    assert caught.value.item_id == "bad"
    assert caught.value.reason.startswith(reason)


def test_a_cif_of_several_structures_is_skipped_not_cut_to_its_first(fallback_calls, tmp_path):
    zno = _p1_cif("  Zn  Zn1  1  0.0  0.0  0.0  1\n  O  O1  1  0.5  0.5  0.5  1\n")
    two = zno + zno.replace("data_test", "data_second").replace("Zn", "Mg")
    with pytest.raises(SkippedItem) as caught:
        parse_cif(two, "pair")
    assert (caught.value.item_id, caught.value.reason) == ("pair", "several structures in one CIF (2): give one structure per file or row")

    same_name = zno + zno.replace("Zn", "Mg")  # cat a.cif b.cif: pymatgen keeps only the second of two blocks named alike
    unreadable_second = zno + zno.replace("data_test", "data_second").replace("4.10000000", "abc")  # pymatgen drops it
    for text in (same_name, unreadable_second):
        with pytest.raises(SkippedItem, match=r"^pair: several structures in one CIF \(2\)"):
            parse_cif(text, "pair")

    named_like_a_poscar = tmp_path / "POSCAR_two.cif"  # read as the CIF it is, with the same check
    named_like_a_poscar.write_text(two)
    with pytest.raises(SkippedItem, match=r"^POSCAR_two.cif: several structures in one CIF \(2\)"):
        read_structure_file(named_like_a_poscar)

    publication_block = "data_global\n_journal_name_full 'Some Journal'\n_journal_year 2018\n"
    crystal = parse_cif(publication_block + zno, "with-global")  # a block without atoms is no second structure
    _assert_same_as_pymatgen(crystal, publication_block + zno)
    assert fallback_calls == ["pair", "pair", "pair", "POSCAR_two.cif", "with-global"]


POSCAR = """Zn O test cell
1.0
   3.2   0.0   0.0
  -1.6   2.771281   0.0
   0.0   0.0   5.2
Zn O
2 2
direct
  0.333333 0.666667 0.0
  0.666667 0.333333 0.5
  0.333333 0.666667 0.38
  0.666667 0.333333 0.88
"""


@pytest.mark.parametrize(
    ("name", "item_id"), [("POSCAR", "POSCAR"), ("CONTCAR_relaxed", "CONTCAR_relaxed"), ("zno.vasp", "zno"), ("poscar_zno", "poscar_zno")]
)
def test_read_structure_file_vasp(tmp_path, name, item_id):
    path = tmp_path / name
    path.write_text(POSCAR)
    crystal = read_structure_file(path)
    assert crystal.id == item_id
    assert crystal.numbers.tolist() == [30, 30, 8, 8]
    np.testing.assert_allclose(crystal.lattice, [[3.2, 0, 0], [-1.6, 2.771281, 0], [0, 0, 5.2]])
    np.testing.assert_allclose(crystal.frac_coords[2], [0.333333, 0.666667, 0.38])


def test_a_vasp4_poscar_without_element_names_is_skipped_not_read_with_stand_in_elements(tmp_path):
    path = tmp_path / "POSCAR_zno"
    path.write_text(POSCAR.replace("Zn O\n2 2", "2 2"))  # pymatgen would call the atoms H and He
    with pytest.raises(SkippedItem, match=r"POSCAR names no elements \(VASP 4 format"):
        read_structure_file(path)


def test_a_poscar_with_two_atoms_at_one_position_is_skipped_naming_them(tmp_path):
    """pymatgen's POSCAR reader keeps both (its CIF reader would merge them): the edge between them would vanish."""
    path = tmp_path / "POSCAR_doubled"
    path.write_text(POSCAR.replace("  0.666667 0.333333 0.88\n", "  0.333333 0.666667 0.38\n"))
    with pytest.raises(SkippedItem, match=r"two sites at one position: sites 2 and 3, counting from 0"):
        read_structure_file(path)


@pytest.mark.parametrize("formula", ["_chemical_formula_structural   Zn(OH)2", "_chemical_formula_sum   'Zn1 O2 H2'"])
def test_a_cif_whose_formula_lists_elements_no_site_holds_is_skipped(formula, fallback_calls):
    text = _p1_cif("  Zn  Zn1  1  0.0  0.0  0.0  1\n  O  O1  1  0.5  0.5  0.5  1\n  O  O2  1  0.2  0.3  0.4  1\n")
    text = text.replace("_chemical_formula_structural   ZnO", formula)
    with pytest.raises(SkippedItem, match=r"the CIF formula lists H but no atom site holds it"):
        parse_cif(text, "zn-hydroxide")
    assert fallback_calls == ["zn-hydroxide"]


def test_read_structure_file_cif_and_errors(tmp_path):
    path = tmp_path / "mp-1.cif"
    path.write_text(_p1_cif("  Zn  Zn1  1  0.0  0.0  0.0  1\n  O  O1  1  0.5  0.5  0.5  1\n"))
    crystal = read_structure_file(path)
    assert crystal.id == "mp-1" and crystal.numbers.tolist() == [30, 8]
    with pytest.raises(SkippedItem, match="unreadable file"):
        read_structure_file(tmp_path / "missing.cif")
    broken = tmp_path / "POSCAR_broken"
    broken.write_text("not a poscar\n")
    with pytest.raises(SkippedItem, match="unreadable file"):
        read_structure_file(broken)
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(SkippedItem, match="unsupported file type: notes.txt$"):
        read_structure_file(other)
    table = tmp_path / "mp.csv"
    table.write_text("material_id,cif\n")
    with pytest.raises(SkippedItem, match=r"unsupported file type: mp.csv \(a table of structures: crystal-predict input=FILE predicts its rows, crystal-eval data.snapshot=FILE scores them\)"):
        read_structure_file(table)
