"""Tests for the generated CGCNN element feature table."""

import json
import math
import warnings

import pytest
import torch
from conftest import SHARED_DATASETS
from pymatgen.core import Element

from crystal_train.data.features import (
    FEATURE_SEGMENTS,
    cgcnn_feature_table,
    load_atom_init_json,
    supported_elements,
)

REFERENCE = SHARED_DATASETS / "cgcnn_sample" / "sample-regression" / "atom_init.json"


def _segments(table: torch.Tensor) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, width in FEATURE_SEGMENTS:
        out[name] = table[:, start : start + width]
        start += width
    return out


def _hot_index(segment_row: torch.Tensor) -> int:
    return int(torch.argmax(segment_row))


def test_table_shape_and_one_hot_segments():
    table = cgcnn_feature_table()
    assert table.shape == (101, 92) and table.dtype == torch.float32
    assert sum(width for _, width in FEATURE_SEGMENTS) == 92
    assert torch.all(table[0] == 0)
    assert set(table.unique().tolist()) <= {0.0, 1.0}
    segments = _segments(table)
    for name, segment in segments.items():
        sums = segment[1:].sum(dim=1)
        assert torch.all(sums <= 1), name
    # categorical data exists for every element up to Fm
    for name in ("group", "period", "valence_electrons", "block"):
        assert torch.all(segments[name][1:].sum(dim=1) == 1), name


def test_binned_segments_follow_pymatgen_data():
    segments = _segments(cgcnn_feature_table())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        electronegativity = {z: Element.from_Z(z).X for z in range(1, 101)}
    for z, x in electronegativity.items():
        assert segments["electronegativity"][z].sum() == (0 if math.isnan(x) else 1), z
    # bins are ordered like the property itself
    known = sorted((x, z) for z, x in electronegativity.items() if not math.isnan(x))
    bins = [_hot_index(segments["electronegativity"][z]) for _, z in known]
    assert bins == sorted(bins) and bins[0] == 0 and bins[-1] == 9
    assert _hot_index(segments["electronegativity"][9]) == 9  # fluorine is the most electronegative
    assert _hot_index(segments["ionization_energy"][2]) == 9  # helium has the highest ionization energy


def test_categorical_segments_match_periodic_table():
    segments = _segments(cgcnn_feature_table())
    iron, oxygen, cerium, helium = 26, 8, 58, 2
    assert _hot_index(segments["group"][iron]) == 8 and _hot_index(segments["period"][iron]) == 3
    assert _hot_index(segments["block"][iron]) == 2 and _hot_index(segments["valence_electrons"][iron]) == 7
    assert _hot_index(segments["group"][oxygen]) == 16 and _hot_index(segments["valence_electrons"][oxygen]) == 5
    assert _hot_index(segments["group"][cerium]) == 0 and _hot_index(segments["block"][cerium]) == 3
    assert _hot_index(segments["block"][helium]) == 0 and _hot_index(segments["valence_electrons"][helium]) == 1


def test_table_is_deterministic_and_cache_is_not_mutable_through_result():
    first = cgcnn_feature_table()
    first[6] = 5.0
    second = cgcnn_feature_table()
    assert torch.all(second[6] <= 1)
    assert torch.equal(second, cgcnn_feature_table())


def test_supported_elements():
    table = torch.zeros(5, 3)
    table[1, 0] = 1.0
    table[4, 2] = 1.0
    assert supported_elements(table) == frozenset({1, 4})
    assert supported_elements(cgcnn_feature_table()) == frozenset(range(1, 101))


# Elements whose one-hot bin differs from the reference atom_init.json by more than one bin: its property
# data are not pymatgen's (e.g. electron affinities of lanthanides, volumes of actinides). Every other
# element is in the same bin or the next one, and the four segments absent here agree exactly.
FURTHER_THAN_ONE_BIN_FROM_REFERENCE = {
    "electronegativity": {36, 74, 82, 86, 95, 96, 97, 98, 99, 100},
    "valence_electrons": {46},  # Pd: 12 in the reference, 10 by the group rule used for every d-block element
    "electron_affinity": {7, 54, 60, 61, 62, 64, 65, 67, 68, 70, 90, 91, 92, 93, 95, 96, 100},
    "atomic_volume": {61, 86, 93, 94, 97, 98, 99},
}
EXACT_SEGMENTS = ("group", "period", "block", "ionization_energy")


def test_agreement_with_reference_atom_init():
    if not REFERENCE.exists():
        pytest.skip("shared CGCNN atom_init.json not available")
    reference = load_atom_init_json(REFERENCE)
    ours = cgcnn_feature_table()
    assert reference.shape[1] == ours.shape[1]
    zs = sorted(supported_elements(reference))
    assert zs == list(range(1, 101))
    ref_segments, our_segments = _segments(reference), _segments(ours)
    for name in EXACT_SEGMENTS:
        assert torch.equal(ref_segments[name][zs], our_segments[name][zs]), name
    for name in ref_segments:
        bins_apart = {z: abs(_hot_index(ref_segments[name][z]) - _hot_index(our_segments[name][z])) for z in zs}
        assert {z for z, apart in bins_apart.items() if apart > 1} == FURTHER_THAN_ONE_BIN_FROM_REFERENCE.get(name, set()), name


def test_load_atom_init_json_round_trip(tmp_path):
    rows = {"1": [1, 0, 0, 1], "3": [0, 1, 0, 0], "8": [0.5, 0, 1, 0]}
    path = tmp_path / "atom_init.json"
    path.write_text(json.dumps(rows))
    table = load_atom_init_json(path)
    assert table.shape == (9, 4) and table.dtype == torch.float32
    for key, values in rows.items():
        assert table[int(key)].tolist() == values
    assert torch.all(table[[0, 2, 4, 5, 6, 7]] == 0)


@pytest.mark.parametrize(
    "content",
    ["{not json", "[1, 2]", "{}", '{"x": [1]}', '{"0": [1]}', '{"1": [1, 0], "2": [1]}', '{"1": ["a"]}'],
)
def test_load_atom_init_json_rejects_malformed(tmp_path, content):
    path = tmp_path / "bad_atom_init.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="bad_atom_init.json"):
        load_atom_init_json(path)
