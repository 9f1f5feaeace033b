"""Reading crystal structure files and CIF text into Crystal records."""

from __future__ import annotations

import warnings

from crystal_train.data.crystal import Crystal, SkippedItem


def parse_cif(text: str, item_id: str) -> Crystal:
    """Parse CIF text; raises SkippedItem with the reason when it cannot be used."""
    from pymatgen.core import Structure

    if not text or not text.strip():
        raise SkippedItem(item_id, "empty CIF")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(text, fmt="cif")
    except Exception as error:  # pymatgen raises many types for bad CIFs
        raise SkippedItem(item_id, f"malformed CIF: {_first_line(error)}") from None
    if not structure.is_ordered:
        raise SkippedItem(item_id, "partial occupancy or disorder")
    return Crystal.from_pymatgen(structure, item_id)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
