"""Reading crystal structure files and CIF text into Crystal records.

P1 CIFs of the kind pymatgen writes (one data block, only the identity symmetry operation, all
occupancies 1) are parsed directly, about 20x faster than pymatgen; the result reproduces what
``Structure.from_str(text, fmt="cif")`` gives (site order, coordinate wrapping and rounding, lattice
convention).  Anything the fast path does not fully understand goes through pymatgen.
"""

from __future__ import annotations

import math
import re
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from crystal_train.data.crystal import MIN_CELL_THICKNESS, Crystal, SkippedItem, check_geometry, coinciding_sites

# pymatgen CifParser defaults that the fast path reproduces
_FRAC_TOLERANCE = 1e-4  # coordinates this close to 1/3 or 2/3 are snapped to them
# the CifBlock tokenizer of pymatgen: bare words, or quoted strings ending before whitespace
_TOKEN = re.compile(r"""([^'"\s][\S]*)|'(.*?)'(?!\S)|"(.*?)"(?!\S)""")
_COMMENT = re.compile(r"(\s|^)#.*$", flags=re.MULTILINE)
_UNCERTAINTY = re.compile(r"\(.+\)*")
_CELL_TAGS = tuple(f"_cell_length_{x}" for x in "abc") + tuple(f"_cell_angle_{x}" for x in ("alpha", "beta", "gamma"))
_IGNORED_SCALARS = frozenset(
    {
        "_symmetry_space_group_name_H-M",
        "_symmetry_Int_Tables_number",
        "_chemical_formula_structural",
        "_chemical_formula_sum",
        "_cell_volume",
        "_cell_formula_units_Z",
    }
)
_FORMULA_TAGS = ("_chemical_formula_sum", "_chemical_formula_structural")
_FORMULA_ELEMENT = re.compile(r"[A-Z][a-z]?")
_BLOCK_START = re.compile(r"^[ \t]*data_", re.MULTILINE | re.IGNORECASE)
_BLOCK_NAME = re.compile(r"[ \t]*data_(\S*)", re.IGNORECASE)
_ATOM_SITE_COORDINATES = re.compile(r"_atom_site_(fract|cartn)_x\b", re.IGNORECASE)
_SYMOP_LOOP = frozenset({"_symmetry_equiv_pos_site_id", "_symmetry_equiv_pos_as_xyz"})
_SITE_REQUIRED = ("_atom_site_type_symbol", "_atom_site_label") + tuple(f"_atom_site_fract_{x}" for x in "xyz")
_SITE_LOOP = frozenset(_SITE_REQUIRED + ("_atom_site_symmetry_multiplicity", "_atom_site_occupancy"))
# Structure files crystal-predict reads from a folder, by name, in any case (as pymatgen does):
STRUCTURE_FILE_SUFFIXES = (".cif", ".vasp")
STRUCTURE_FILE_WORDS = ("POSCAR", "CONTCAR")  # anywhere in the name
STRUCTURE_FILE_PATTERNS = tuple(f"*{suffix}" for suffix in STRUCTURE_FILE_SUFFIXES) + tuple(f"*{word}*" for word in STRUCTURE_FILE_WORDS)


def parse_cif(text: str, item_id: str) -> Crystal:
    """Parse CIF text; raises SkippedItem with the reason when it cannot be used."""
    if not text or not text.strip():
        raise SkippedItem(item_id, "empty CIF")
    parsed = _parse_p1(text)
    if parsed is None:
        return _parse_with_pymatgen(text, item_id)
    lattice, numbers, frac_coords = parsed
    return Crystal(id=str(item_id), lattice=lattice, numbers=numbers, frac_coords=frac_coords)


def structure_file_id(path: Path) -> str:
    """A structure file's id: its name without the extension (the whole name for *POSCAR* / *CONTCAR*, any case)."""
    return path.name if _is_poscar_name(path.name) else path.stem


def is_structure_file_name(name: str) -> bool:
    """Whether a file of this name is read as a structure (STRUCTURE_FILE_PATTERNS, any case)."""
    return name.lower().endswith(STRUCTURE_FILE_SUFFIXES) or _is_poscar_name(name)


def _is_poscar_name(name: str) -> bool:
    return any(word in name.upper() for word in STRUCTURE_FILE_WORDS)


def read_structure_file(path: str | Path) -> Crystal:
    """Read a ``*.cif``, ``*.vasp`` or ``*POSCAR*`` / ``*CONTCAR*`` file, with its `structure_file_id`."""
    path = Path(path)
    item_id = structure_file_id(path)
    suffix = path.suffix.lower()
    if suffix == ".cif":  # also POSCAR_relaxed.cif
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            raise SkippedItem(item_id, f"unreadable file: {_first_line(error)}") from None
        return parse_cif(text, item_id)
    if _is_poscar_name(path.name) or suffix == ".vasp":
        return _read_with_pymatgen(path, item_id)
    from crystal_train.data.sources import is_table_file  # here: sources imports this module

    hint = " (a table of structures: crystal-predict input=FILE predicts its rows, crystal-eval data.snapshot=FILE scores them)" if is_table_file(path) else ""
    raise SkippedItem(item_id, f"unsupported file type: {path.name}{hint}")


def _read_with_pymatgen(path: Path, item_id: str) -> Crystal:
    from pymatgen.core import Structure

    return crystal_via_pymatgen(lambda: Structure.from_file(path), item_id, "unreadable file")


def _parse_with_pymatgen(text: str, item_id: str) -> Crystal:
    """What ``Structure.from_str(text, fmt="cif")`` reads, but a CIF of several structures is skipped, not cut to its first."""
    from pymatgen.io.cif import CifParser

    def only_structure():
        # pymatgen keeps one of two blocks of the same name (cat a.cif b.cif), and drops one it cannot read, so count them here too
        try:
            structures = CifParser.from_str(text).parse_structures(primitive=False)
        except ZeroDivisionError:  # pymatgen's "integer modulo by zero" for a loop_ of no values (atom sites, symmetry, ...)
            raise SkippedItem(item_id, "malformed CIF: a loop_ in it lists no values (an atom-site loop without atoms?)") from None
        count = max(len(structures), len(cif_data_blocks(text)))
        if count > 1:
            raise SkippedItem(item_id, f"several structures in one CIF ({count}): give one structure per file or row")
        return structures[0]

    return crystal_via_pymatgen(only_structure, item_id, "malformed CIF")


def cif_data_blocks(text: str) -> list[tuple[str, str]]:
    """(name, text) of each data_ block of CIF text that lists atom sites, in file order: the structures it holds
    (a publication block without atoms is none)."""
    text = text.removeprefix("\ufeff")  # a byte-order mark before the first data_
    starts = [match.start() for match in _BLOCK_START.finditer(text)]
    blocks = [text[start:end] for start, end in zip(starts, starts[1:] + [len(text)])]
    return [(_BLOCK_NAME.match(block).group(1), block) for block in blocks if _ATOM_SITE_COORDINATES.search(block)]


def crystal_via_pymatgen(make_structure: Callable, item_id: str, failure: str) -> Crystal:
    """Crystal from a pymatgen Structure built by `make_structure`; SkippedItem("<failure>: ...")
    when pymatgen cannot build it, for partial occupancy, or for a species that is no element."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structure = make_structure()
        except SkippedItem:
            raise
        except Exception as error:  # pymatgen raises many types for bad input
            raise SkippedItem(item_id, f"{failure}: {_first_line(error)}{_parse_failure_detail(caught)}") from None
    misread = _misread_warning(caught)
    if misread:
        raise SkippedItem(item_id, misread)
    try:
        crystal = Crystal.from_pymatgen(structure, item_id)
    except ValueError as error:  # partial occupancy, or a species that is no element
        raise SkippedItem(item_id, str(error)) from None
    check_geometry(crystal.lattice, crystal.frac_coords, item_id)  # pymatgen's CIF reader merges coinciding sites, others do not
    return crystal


def _misread_warning(caught: list[warnings.WarningMessage]) -> str | None:
    """The reason to skip a structure pymatgen built but warned is wrong: stand-in elements or elements left out."""
    for warning in caught:
        message = str(warning.message).strip()
        if message.startswith("Elements in POSCAR cannot be determined"):
            return "POSCAR names no elements (VASP 4 format without a POTCAR): add the line of element symbols above the atom counts"
        missing = re.match(r"Missing elements (.+) from PMG structure composition", message)
        if missing:
            return f"the CIF formula lists {missing.group(1)} but no atom site holds it (positions left out, often hydrogen)"
    return None


def _formula_elements(formula: str) -> set[str]:
    return set(_FORMULA_ELEMENT.findall(formula))


def _parse_failure_detail(caught: list[warnings.WarningMessage]) -> str:
    """Why pymatgen's CifParser dropped a block ("Occupancy 1.05 exceeded tolerance."), which it only warns about."""
    for warning in caught:
        lines = str(warning.message).strip().splitlines()
        if lines and lines[0].startswith("No structure parsed") and len(lines) > 1:
            return f" ({' '.join(lines[1:])[:200]})"
    return ""


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _parse_p1(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Lattice, atomic numbers and fractional coordinates of a plain P1 CIF, or None to defer to pymatgen."""
    block = _read_block(text)
    if block is None:
        return None
    scalars, loops = block
    if set(scalars) - _IGNORED_SCALARS != set(_CELL_TAGS) or len(loops) != 2:
        return None
    symops = next((loop for loop in loops if set(loop) == _SYMOP_LOOP), None)
    sites = next((loop for loop in loops if set(_SITE_REQUIRED) <= set(loop) <= _SITE_LOOP), None)
    if symops is None or sites is None:
        return None
    if [op.replace(" ", "").lower() for op in symops["_symmetry_equiv_pos_as_xyz"]] != ["x,y,z"]:
        return None
    cell = [_to_float(scalars[tag]) for tag in _CELL_TAGS]
    if any(v is None or not math.isfinite(v) for v in cell):
        return None
    lattice = _lattice_from_parameters(*cell)
    if lattice is None:
        return None
    elements = _element_data()
    symbols = sites["_atom_site_type_symbol"]
    if not symbols or any(symbol not in elements or elements[symbol][1] is None for symbol in symbols):
        return None
    if any(_formula_elements(scalars[tag]) != set(symbols) for tag in _FORMULA_TAGS if tag in scalars):
        return None  # pymatgen's check names the elements the sites lack
    if any(v != 1.0 for v in _to_floats(sites.get("_atom_site_occupancy", []))):
        return None
    coords = [_to_floats(sites[f"_atom_site_fract_{x}"]) for x in "xyz"]
    if any(v is None for column in coords for v in column):
        return None
    frac = _snap_thirds(np.array(coords, dtype=np.float64).T)
    if not np.isfinite(frac).all() or coinciding_sites(frac) is not None:  # pymatgen would merge them
        return None
    # pymatgen groups sites by element and then sorts them by (electronegativity, symbol), keeping file order
    order = sorted(range(len(symbols)), key=lambda i: (elements[symbols[i]][1], symbols[i]))
    numbers = np.array([elements[symbols[i]][0] for i in order], dtype=np.int64)
    frac = frac[order]
    return lattice, numbers, frac - np.floor(frac)


def _read_block(text: str) -> tuple[dict[str, str], list[dict[str, list[str]]]] | None:
    """Scalar items and loops of a single-block CIF, tokenised like pymatgen; None for anything unusual."""
    if not text.isascii():
        return None
    scalars: dict[str, str] = {}
    loops: list[tuple[list[str], list[str]]] = []
    columns: list[str] | None = None  # the loop being read
    values: list[str] = []
    pending: str | None = None  # tag waiting for its value
    seen_data = False
    for line in text.splitlines():
        if "#" in line:
            line = _COMMENT.sub("", line)
        if line.startswith(";"):
            return None  # multi-line text field
        if columns is not None and "_" not in line and "'" not in line and '"' not in line:
            values.extend(line.split())  # the common case: a row of plain loop values
            continue
        for token in _TOKEN.findall(line):
            word, value = token[0], "".join(token)
            if pending is not None:
                if word.startswith(("_", "loop_", "data_")):
                    return None
                scalars[pending], pending = value, None
            elif word.startswith("data_"):
                if seen_data or "powder_pattern" in word:
                    return None
                seen_data = True
            elif not seen_data or word == "_eof":
                return None
            elif word.startswith("loop_"):
                columns, values = [], []
                loops.append((columns, values))
            elif word.startswith("_"):
                if columns is not None and not values:
                    columns.append(word)
                elif word in scalars:
                    return None
                else:
                    columns, pending = None, word
            elif columns:
                values.append(value.strip())
            else:
                return None
    if pending is not None:
        return None
    for columns, values in loops:
        if not columns or len(set(columns)) != len(columns) or len(values) % len(columns):
            return None
    tables = [{column: values[k :: len(columns)] for k, column in enumerate(columns)} for columns, values in loops]
    return scalars, tables


def _to_float(text: str) -> float | None:
    """pymatgen's str2float (drops an uncertainty in brackets); None if not a number."""
    if "(" in text:
        text = _UNCERTAINTY.sub("", text)
    try:
        return float(text)
    except ValueError:
        return None


def _to_floats(texts: list[str]) -> list[float | None]:
    try:
        return list(map(float, texts))
    except ValueError:
        return [_to_float(text) for text in texts]


def _snap_thirds(frac: np.ndarray) -> np.ndarray:
    """Replace coordinates within the fractional tolerance of 1/3 or 2/3 by the exact value, as pymatgen does."""
    for third in (1 / 3, 2 / 3):
        frac = np.where(np.abs(frac / third - 1) <= _FRAC_TOLERANCE, third, frac)
    return frac


def _lattice_from_parameters(a, b, c, alpha, beta, gamma) -> np.ndarray | None:
    """Cell vectors as rows, in the convention of pymatgen's ``Lattice.from_parameters``; None if degenerate."""
    angles = np.radians([alpha, beta, gamma])
    cos_alpha, cos_beta, cos_gamma = np.cos(angles)
    sin_alpha, sin_beta, _ = np.sin(angles)
    gamma_star = np.arccos(np.clip((cos_alpha * cos_beta - cos_gamma) / (sin_alpha * sin_beta), -1, 1))
    matrix = np.array(
        [
            [a * sin_beta, 0.0, a * cos_beta],
            [-b * sin_alpha * np.cos(gamma_star), b * sin_alpha * np.sin(gamma_star), b * cos_alpha],
            [0.0, 0.0, float(c)],
        ],
        dtype=np.float64,
    )
    # interplanar spacings d_100, d_010, d_001 = volume / face area; pymatgen rejects cells thinner than 0.01 Å
    cosines = [math.cos(math.radians(angle)) for angle in (alpha, beta, gamma)]
    volume_factor = 1 - sum(x * x for x in cosines) + 2 * cosines[0] * cosines[1] * cosines[2]
    if not volume_factor > 0:
        return None
    volume = a * b * c * math.sqrt(volume_factor)
    sines = [math.sqrt(1 - x * x) for x in cosines]
    areas = [b * c * sines[0], a * c * sines[1], a * b * sines[2]]
    if not volume > 0 or any(not area > 0 or volume / area < MIN_CELL_THICKNESS for area in areas):
        return None
    return matrix


@lru_cache(maxsize=1)
def _element_data() -> dict[str, tuple[int, float | None]]:
    """Element symbol -> (atomic number, Pauling electronegativity or None where pymatgen has none)."""
    from pymatgen.core import Element

    data = {}
    for z in range(1, 119):
        element = Element.from_Z(z)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = element.X
        data[element.symbol] = (z, x if math.isfinite(x) else None)
    return data
