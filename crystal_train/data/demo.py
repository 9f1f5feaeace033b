"""Built-in offline demo dataset: metallic alloys labelled by the EMT model.

This is NOT Materials Project or DFT data. The structures are generated here
(fcc/bcc/hcp cells, ordered prototypes such as L1_2, L1_0, B2, L2_1 and random
substitutional decorations of small supercells of Al, Cu, Ag, Au, Ni, Pd, Pt),
and the label is the formation energy per atom from ASE's Effective Medium
Theory potential (``ase.calculators.emt.EMT``), relative to each element's
fcc ground state at its own EMT equilibrium lattice constant. EMT is a cheap
semi-empirical model; the numbers are physically sensible but not accurate.

Generation of one crystal: pick a prototype and its elements, scale it to a
Vegard's-law lattice constant, apply a small volume-preserving anisotropic
strain and small random displacements, relax the volume by an isotropic scale
scan (13 points plus a parabola fit), then apply a small random isotropic
strain. The target is the exact EMT energy of the final geometry. Energies come
from a vectorised, energy-only re-implementation of ASE's EMT (same parameters
and cutoff, checked against ``ase.calculators.emt.EMT`` in the tests), which
lets one neighbour list serve every scale of the volume scan.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import product

import numpy as np
from ase.calculators.emt import beta, parameters
from ase.data import atomic_numbers, chemical_symbols
from ase.units import Bohr

from crystal_train.data.crystal import Crystal

DEMO_VERSION = 1
DEMO_ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
DEMO_TARGET = "formation_energy_per_atom"  # the one label the demo crystals carry (eV/atom)

_ANISO_STRAIN = 0.015  # std of the traceless strain components
_ISO_STRAIN = 0.01  # half-width of the uniform linear isotropic strain after relaxation
_RATTLE = 0.04  # Å, std of the random displacements
_RATTLE_CLIP = 0.1  # Å
_RELAX_SCALES = np.linspace(0.94, 1.06, 13)  # volume scan, relative to Vegard's law
_P_ORDERED = 0.4  # fraction of crystals built from ordered prototypes
_P_NUM_SPECIES = {1: 0.15, 2: 0.55, 3: 0.30}  # random decorations

# ---------------------------------------------------------------------------
# Energy-only EMT, numerically the same as ase.calculators.emt.EMT (default cutoff).


def _emt_cutoff() -> tuple[float, float, float]:
    """ASE EMT's smoothing midpoint rc, neighbour-list cutoff and slope (asap_cutoff=False)."""
    r1nn = beta * max(p[1] for p in parameters.values()) * Bohr
    rc = r1nn * 0.5 * (math.sqrt(3.0) + 2.0)
    acut = math.log(1.0 / 1e-4 - 1.0) / (2.0 * r1nn - rc)
    return rc, rc + 0.5, acut


_RC, _RC_LIST, _ACUT = _emt_cutoff()


def _emt_params(symbol: str) -> tuple[float, ...]:
    """(E0, s0, V0, eta2, kappa, lambda, n0, 1/(12 gamma1), -V0/(2 gamma2)) in eV/Å units."""
    e0, s0, v0, eta2, kappa, lmd, n0 = parameters[symbol]
    s0, eta2, kappa, lmd, n0 = s0 * Bohr, eta2 / Bohr, kappa / Bohr, lmd / Bohr, n0 / Bohr**3
    r = beta * s0 * np.sqrt([1.0, 2.0, 3.0])
    x = np.array([12, 6, 24]) / (1.0 + np.exp(_ACUT * (r - _RC))) / 12.0
    gamma1 = x @ np.exp(-eta2 * (r - beta * s0))
    gamma2 = x @ np.exp(-kappa / beta * (r - beta * s0))
    return e0, s0, v0, eta2, kappa, lmd, n0, 1.0 / (12.0 * gamma1), -0.5 * v0 / gamma2


_Z_TO_INDEX = {atomic_numbers[s]: k for k, s in enumerate(DEMO_ELEMENTS)}
_E0, _S0, _V0, _ETA2, _KAPPA, _LAMBDA, _N0, _INV12G1, _NEGHALFV0G2 = np.array(
    [_emt_params(s) for s in DEMO_ELEMENTS]
).T


def _pairs(lattice: np.ndarray, frac: np.ndarray, cutoff: float):
    """All ordered pairs (i, j, image) closer than cutoff: returns i, j, distances."""
    frac = frac % 1.0
    reach = np.ceil(cutoff * np.linalg.norm(np.linalg.inv(lattice), axis=0)).astype(int)
    images = np.array(list(product(*(range(-k, k + 1) for k in reach))), dtype=float)
    cart = frac @ lattice
    d = cart[None, :, None, :] + (images @ lattice)[None, None] - cart[:, None, None, :]
    r = np.sqrt(np.einsum("ijtk,ijtk->ijt", d, d))
    keep = (r < cutoff) & (r > 1e-8)  # drops each atom's zero-offset self pair
    i, j, _ = np.nonzero(keep)
    return i, j, r[keep]


def _scaled_energies(species: np.ndarray, i, j, r0, scales: np.ndarray) -> np.ndarray:
    """Total EMT energies (eV) of the structure with all distances multiplied by each scale."""
    n, si, sj = len(species), species[i], species[j]
    r = np.asarray(scales, dtype=float)[:, None] * r0[None, :]
    w = np.where(r < _RC_LIST, 1.0 / (1.0 + np.exp(_ACUT * (r - _RC))), 0.0)
    chi = _N0[sj] / _N0[si]
    dsigma1 = np.exp(-_ETA2[sj] * (r - beta * _S0[sj])) * chi * w
    rows = np.arange(len(r))[:, None] * n + i[None, :]
    sigma1 = np.bincount(rows.ravel(), dsigma1.ravel(), minlength=len(r) * n).reshape(len(r), n)
    ds = -np.log(sigma1 * _INV12G1[species]) / (beta * _ETA2[species])
    lds = _LAMBDA[species] * ds
    e_coh = _E0[species] * (1.0 + lds) * np.exp(-lds) + 6.0 * _V0[species] * np.exp(-_KAPPA[species] * ds)
    es = _NEGHALFV0G2[si] * np.exp(-_KAPPA[sj] * (r / beta - _S0[sj])) * chi * w
    eo = _NEGHALFV0G2[sj] * np.exp(-_KAPPA[si] * (r / beta - _S0[si])) / chi * w
    return (e_coh - _E0[species]).sum(axis=1) + 0.5 * (es + eo).sum(axis=1)


def _species(numbers: np.ndarray) -> np.ndarray:
    """Indices into DEMO_ELEMENTS for atomic numbers; ValueError for any other element."""
    try:
        return np.array([_Z_TO_INDEX[int(z)] for z in numbers], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"element Z={exc.args[0]} is not one of the EMT metals {DEMO_ELEMENTS}") from None


def emt_energy(crystal: Crystal) -> float:
    """Total EMT energy in eV of a crystal made of the EMT metals (as ase's EMT computes it)."""
    i, j, r = _pairs(crystal.lattice, crystal.frac_coords, _RC_LIST)
    return float(_scaled_energies(_species(crystal.numbers), i, j, r, np.ones(1))[0])


def _parabola_min(scales: np.ndarray, energies: np.ndarray) -> float:
    """Scale minimising a parabola through the lowest grid point and its neighbours."""
    k = int(np.clip(np.argmin(energies), 1, len(scales) - 2))
    x, y = scales[k - 1 : k + 2], energies[k - 1 : k + 2]
    a, b, _ = np.polyfit(x, y, 2)
    return float(np.clip(-b / (2 * a), scales[0], scales[-1])) if a > 0 else float(scales[np.argmin(energies)])


@lru_cache(maxsize=None)
def fcc_reference(symbol: str) -> tuple[float, float]:
    """EMT equilibrium fcc lattice constant (Å) and energy per atom (eV) of a pure element."""
    if symbol not in DEMO_ELEMENTS:
        raise ValueError(f"{symbol} is not one of the EMT metals {DEMO_ELEMENTS}")
    species = np.array([DEMO_ELEMENTS.index(symbol)])
    i, j, r = _pairs(_FCC_PRIM, np.zeros((1, 3)), _RC_LIST / 3.0)
    coarse = np.arange(3.0, 4.6, 0.01)
    a0 = _parabola_min(coarse, _scaled_energies(species, i, j, r, coarse))
    fine = a0 + np.linspace(-0.005, 0.005, 11)
    a0 = _parabola_min(fine, _scaled_energies(species, i, j, r, fine))
    return a0, float(_scaled_energies(species, i, j, r, np.array([a0]))[0])


def formation_energy_per_atom(crystal: Crystal) -> float:
    """EMT formation energy per atom (eV/atom) relative to the elements' relaxed fcc states."""
    mu = sum(fcc_reference(chemical_symbols[int(z)])[1] for z in crystal.numbers)
    return (emt_energy(crystal) - mu) / crystal.num_atoms


# ---------------------------------------------------------------------------
# Prototype cells, in units where the fcc-equivalent lattice constant is 1 (4 atoms per unit volume).

_FCC_PRIM = 0.5 * np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
_A_BCC = 2.0 ** (-1.0 / 3.0)
_A_HCP = 1.0 / math.sqrt(2.0)


@dataclass(frozen=True)
class _Template:
    """A cell with fractional sites; sites with equal label get the same element when ordered."""

    name: str
    cell: np.ndarray
    frac: np.ndarray
    labels: np.ndarray
    ordered: bool


def _repeat(cell, frac, reps):
    """Diagonal supercell: new cell, fractional sites and the image index of each site."""
    reps = np.asarray(reps)
    images = np.array(list(product(*(range(n) for n in reps))))
    frac = np.asarray(frac, dtype=float)
    new_frac = ((frac[None, :, :] + images[:, None, :]) / reps).reshape(-1, 3)
    image_of_site = np.repeat(np.arange(len(images)), len(frac))
    return np.diag(reps) @ np.asarray(cell, dtype=float), new_frac, images[image_of_site]


def _build_templates() -> tuple[_Template, ...]:
    """Ordered prototypes (one element per label) and supercells for random decoration."""
    fcc_conv = (np.eye(3), [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    fcc_prim = (_FCC_PRIM, [[0, 0, 0]])
    bcc_conv = (_A_BCC * np.eye(3), [[0, 0, 0], [0.5, 0.5, 0.5]])
    bcc_prim = (0.5 * _A_BCC * np.array([[-1.0, 1, 1], [1, -1, 1], [1, 1, -1]]), [[0, 0, 0]])
    hcp = (
        _A_HCP * np.array([[1.0, 0, 0], [-0.5, math.sqrt(3) / 2, 0], [0, 0, math.sqrt(8 / 3)]]),
        [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]],
    )
    heusler = (2 * _A_BCC * _FCC_PRIM, [[0, 0, 0], [0.25] * 3, [0.5] * 3, [0.75] * 3])
    d022_cell, d022_frac, _ = _repeat(*fcc_conv, (1, 1, 2))
    hcp_cell, hcp_frac, hcp_img = _repeat(*hcp, (2, 2, 1))
    ordered = [
        ("L1_2", *fcc_conv, [1, 0, 0, 0]),
        ("L1_0", np.diag([_A_HCP, _A_HCP, 1.0]), [[0, 0, 0], [0.5, 0.5, 0.5]], [0, 1]),
        ("L1_1", [[0.5, -0.5, 0], [0, 0.5, -0.5], [0, 1, 1]], [[0, 0, 0], [0, 0, 0.5]], [0, 1]),
        ("D0_22", d022_cell, d022_frac, [int(np.allclose(f, 0) or np.allclose(f, 0.5)) for f in d022_frac]),
        ("B2", *bcc_conv, [0, 1]),
        ("D0_3", *heusler, [1, 0, 0, 0]),
        ("L2_1", *heusler, [2, 0, 1, 0]),
        ("hcp_AB", *hcp, [0, 1]),
        # one B per close-packed layer, shifted between layers so that B has no B nearest neighbour
        ("D0_19", hcp_cell, hcp_frac,
         [int(tuple(im) == [(0, 0, 0), (1, 1, 0)][k % 2]) for k, im in enumerate(hcp_img)]),
    ]
    random = [
        ("fcc_prim", fcc_prim, (1, 1, 1)), ("fcc_prim", fcc_prim, (2, 1, 1)), ("fcc_prim", fcc_prim, (2, 2, 1)),
        ("fcc_prim", fcc_prim, (2, 2, 2)), ("fcc_conv", fcc_conv, (1, 1, 1)), ("fcc_conv", fcc_conv, (1, 1, 2)),
        ("fcc_conv", fcc_conv, (2, 2, 1)), ("bcc_prim", bcc_prim, (1, 1, 1)), ("bcc_prim", bcc_prim, (2, 2, 1)),
        ("bcc_prim", bcc_prim, (2, 2, 2)), ("bcc_conv", bcc_conv, (1, 1, 1)), ("bcc_conv", bcc_conv, (2, 1, 1)),
        ("bcc_conv", bcc_conv, (2, 2, 2)), ("hcp", hcp, (1, 1, 1)), ("hcp", hcp, (2, 1, 1)),
        ("hcp", hcp, (1, 1, 2)), ("hcp", hcp, (2, 2, 1)), ("hcp", hcp, (2, 2, 2)),
    ]
    templates = [
        _Template(name, np.asarray(cell, dtype=float), np.asarray(frac, dtype=float), np.array(labels), True)
        for name, cell, frac, labels in ordered
    ]
    for name, (cell, frac), reps in random:
        cell, frac, _ = _repeat(cell, frac, reps)
        label = f"{name}-{'x'.join(map(str, reps))}"
        templates.append(_Template(label, cell, frac, np.arange(len(frac)), False))
    return tuple(templates)


_TEMPLATES = _build_templates()
_ORDERED = tuple(t for t in _TEMPLATES if t.ordered)
_RANDOM = tuple(t for t in _TEMPLATES if not t.ordered)

# ---------------------------------------------------------------------------
# Generator.


def _decorate(template: _Template, rng: np.random.Generator) -> np.ndarray:
    """Atomic numbers for the template's sites."""
    if template.ordered:
        n_labels = int(template.labels.max()) + 1
        elements = rng.choice(len(DEMO_ELEMENTS), size=n_labels, replace=False)
        species = elements[template.labels]
    else:
        n_sites = len(template.labels)
        counts, probs = zip(*_P_NUM_SPECIES.items())
        n_species = min(int(rng.choice(counts, p=probs)), n_sites)
        elements = rng.choice(len(DEMO_ELEMENTS), size=n_species, replace=False)
        species = elements[rng.choice(n_species, size=n_sites, p=rng.dirichlet(np.ones(n_species)))]
        species[rng.permutation(n_sites)[:n_species]] = elements  # every chosen element appears
    return np.array([atomic_numbers[DEMO_ELEMENTS[s]] for s in species], dtype=np.int64)


def _random_crystal(index: int, rng: np.random.Generator) -> Crystal:
    """One labelled crystal: prototype, elements, Vegard scale, strain, rattle, volume scan, final strain."""
    pool = _ORDERED if rng.random() < _P_ORDERED else _RANDOM
    template = pool[rng.integers(len(pool))]
    numbers = _decorate(template, rng)
    species = _species(numbers)
    a_vegard = float(np.mean([fcc_reference(DEMO_ELEMENTS[s])[0] for s in species]))

    strain = rng.normal(0.0, _ANISO_STRAIN, size=(3, 3))
    strain = 0.5 * (strain + strain.T)
    strain -= np.trace(strain) / 3.0 * np.eye(3)
    lattice = a_vegard * template.cell @ (np.eye(3) + strain)
    shift = np.clip(rng.normal(0.0, _RATTLE, size=(len(numbers), 3)), -_RATTLE_CLIP, _RATTLE_CLIP)
    frac = (template.frac + shift @ np.linalg.inv(lattice)) % 1.0

    smallest = _RELAX_SCALES[0] * (1.0 - _ISO_STRAIN)
    i, j, r = _pairs(lattice, frac, _RC_LIST / smallest)
    relaxed = _parabola_min(_RELAX_SCALES, _scaled_energies(species, i, j, r, _RELAX_SCALES))
    scale = relaxed * (1.0 + rng.uniform(-_ISO_STRAIN, _ISO_STRAIN))
    energy = float(_scaled_energies(species, i, j, r, np.array([scale]))[0])

    mu = sum(fcc_reference(DEMO_ELEMENTS[s])[1] for s in species)
    return Crystal(
        id=f"demo-{index + 1:05d}",
        lattice=scale * lattice,
        numbers=numbers,
        frac_coords=frac,
        target=(energy - mu) / len(numbers),
        split=None,
    )


def build_demo_crystals(num_crystals: int = 1000, seed: int = 0) -> list[Crystal]:
    """Generate num_crystals EMT-labelled alloy crystals, deterministically for a given seed."""
    if num_crystals < 0:
        raise ValueError(f"num_crystals must be >= 0, got {num_crystals}")
    rng = np.random.default_rng(seed)
    return [_random_crystal(k, rng) for k in range(num_crystals)]


def demo_fingerprint(num_crystals: int, seed: int) -> str:
    """Short cache key that changes with the generator's version, settings, size and seed, and with ASE's EMT
    parameters (an ASE release that changed them would change the labels)."""
    settings = (
        DEMO_VERSION, DEMO_ELEMENTS, _ANISO_STRAIN, _ISO_STRAIN, _RATTLE, _RATTLE_CLIP,
        tuple(_RELAX_SCALES), _P_ORDERED, tuple(_P_NUM_SPECIES.items()), tuple(t.name for t in _TEMPLATES),
        sorted((symbol, tuple(values)) for symbol, values in parameters.items()), beta, Bohr,
    )
    digest = hashlib.sha1(repr(settings).encode()).hexdigest()[:8]
    return f"emt-demo-v{DEMO_VERSION}-{digest}-n{num_crystals}-s{seed}"
