"""Multislice 4D-STEM with strain labels: the ``abtem`` engine of ``edgestem simulate``.

Same output and label convention as the kinematic engine (:mod:`edgestem.data.simulate`): labels from
:func:`~edgestem.data.simulate.specimen_labels`, ``F = R(theta) (I + eps)``, patterns ``(Qx, Qy)``
with axis -2 = kx, axis -1 = ky and the centre at ``((Q - 1) / 2, (Q - 1) / 2)``, each summing to 1.

Each scan position is an independent multislice simulation (abTEM) of a uniformly deformed crystal:

* The crystal (a preset or a structure file read by ase) is turned so that the zone axis points
  along z (the beam) and its first cell vector not parallel to the zone axis along x.
* A fixed periodic box ``L x L`` with ``L = 1 / reciprocal_pixel`` (the same for every pattern, so
  the detector pixel is the same in every pattern, as on a real detector) is filled with the
  deformed crystal: atoms at ``c + F (r + s)`` in-plane (``c`` the box centre, ``s`` a random
  translation by a fraction of a cell, seeded, when ``jitter``), keeping those that land in the box.
  The deformed lattice does not match the box's period, so there is a seam at the box edge; the
  probe sits at the centre, ``L / 2`` from it.
* Along z the box is one repeat of the crystal along the zone axis; abTEM's ``CrystalPotential``
  stacks ``n`` repeats (thickness ``n`` repeats), each drawn from a pool of thermally displaced
  copies (frozen phonons), and the patterns of the configurations are averaged.
* The exit wave's intensity in reciprocal space (sampled at ``1 / L``) is cropped to ``Q x Q``
  detector pixels. For even ``Q`` each pixel averages the 2 x 2 nearest samples, so that the pattern's
  centre falls between pixels, at ``(Q - 1) / 2``, as in edgestem's convention (sampling the periodic
  wave at half-integer frequencies instead gives streaks and checkerboards: the probe's tails wrap).

abTEM and ase are imported only inside the functions that need them (``edgestem[physics]``).
Patterns are cached one file per scan position in a folder next to the output, keyed by a hash of
the configuration: a killed run resumes where it stopped, and several worker processes share it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgestem import strain
from edgestem.config import Config, MultisliceConfig, dump_config
from edgestem.errors import ConfigError, DataError, ToolMissingError

__all__ = [
    "SIMULATOR",
    "PRESETS",
    "Crystal",
    "require_physics",
    "load_crystal",
    "wavelength",
    "Geometry",
    "geometry",
    "thickness_map",
    "position_seeds",
    "simulate_pattern",
    "reduce_mantissa",
    "cache_dir",
    "simulate_to_file",
]

SIMULATOR = "abtem multislice"
# Seed streams (the kinematic engine uses 1 and 2 for labels and disk modulation, noise its own).
PHONON_STREAM = 11
THICKNESS_STREAM = 12

# name: (zone axis, RMS displacement per direction in Angstrom from the Debye-Waller B: sqrt(B / 8 pi^2)).
PRESETS: dict[str, tuple[tuple[int, int, int], float]] = {
    "Si": ((0, 0, 1), 0.076),  # diamond, a = 5.431 A, B = 0.46 A^2; [001]: square pattern
    "GaN": ((0, 0, 1), 0.067),  # wurtzite, a = 3.189, c = 5.185 A, B ~ 0.35 A^2; [0001]: hexagonal pattern
    "Au": ((1, 1, 1), 0.089),  # fcc, a = 4.078 A, B = 0.62 A^2; [111]: hexagonal pattern
}
_FILE_SIGMA = 0.08


def require_physics() -> None:
    """Raise a one-line error when abTEM or ase is missing."""
    try:
        import abtem  # noqa: F401
        import ase  # noqa: F401
    except ImportError as exc:
        raise ToolMissingError(
            f"the abtem engine needs abTEM and ase ({exc.name} is missing): pip install 'edgestem[physics]'"
        ) from None


@dataclass(frozen=True)
class Crystal:
    """One unit cell: ``cell`` (3, 3) rows a1, a2, a3 and ``positions`` (n, 3) in Angstrom."""

    name: str
    cell: np.ndarray
    numbers: np.ndarray
    positions: np.ndarray
    zone_axis: tuple[int, int, int]
    sigma: float


def load_crystal(ms: MultisliceConfig) -> Crystal:
    """The crystal of ``ms.crystal``: a preset name, or a structure file read by ase."""
    require_physics()
    if ms.crystal in PRESETS:
        from ase.build import bulk

        atoms = {
            "Si": lambda: bulk("Si", "diamond", a=5.431, cubic=True),
            "GaN": lambda: bulk("GaN", "wurtzite", a=3.189, c=5.185),
            "Au": lambda: bulk("Au", "fcc", a=4.078, cubic=True),
        }[ms.crystal]()
        zone, sigma = PRESETS[ms.crystal]
    else:
        path = Path(ms.crystal)
        if not path.is_file():
            raise ConfigError(
                f"simulate.multislice.crystal {ms.crystal!r} is neither a preset ({', '.join(PRESETS)}) nor a file"
            )
        import ase.io

        try:
            atoms = ase.io.read(path)
        except Exception as exc:  # ase raises many kinds for a bad file
            raise DataError(f"{path}: ase cannot read this structure file ({type(exc).__name__}: {exc})") from None
        if len(atoms) == 0 or abs(np.linalg.det(np.asarray(atoms.cell))) < 1e-6:
            raise DataError(f"{path}: the structure needs atoms and a 3-D unit cell")
        zone, sigma = (0, 0, 1), _FILE_SIGMA
    if ms.zone_axis is not None:
        zone = tuple(int(v) for v in ms.zone_axis)
    if not any(zone):
        raise ConfigError("simulate.multislice.zone_axis must not be [0, 0, 0]")
    g = math.gcd(math.gcd(abs(zone[0]), abs(zone[1])), abs(zone[2]))
    zone = (zone[0] // g, zone[1] // g, zone[2] // g)
    return Crystal(
        name=ms.crystal,
        cell=np.array(atoms.cell, dtype=float),
        numbers=np.array(atoms.numbers, dtype=int),
        positions=np.array(atoms.positions, dtype=float),
        zone_axis=zone,
        sigma=float(ms.phonon_sigma if ms.phonon_sigma is not None else sigma),
    )


def wavelength(energy_kev: float) -> float:
    """Relativistic electron wavelength in Angstrom."""
    e = energy_kev * 1e3  # eV
    return 12.2642584 / math.sqrt(e * (1.0 + 0.978475562e-6 * e))


@dataclass(frozen=True)
class Geometry:
    """The oriented crystal and the box: everything a position's simulation needs besides F and seeds."""

    cell: np.ndarray  # (3, 3) rotated cell vectors (rows), zone axis along z
    numbers: np.ndarray
    basis: np.ndarray  # (n, 3) rotated atom positions of one cell
    period: float  # repeat of the crystal along z, Angstrom
    box: float  # L, Angstrom
    gpts: int
    size: int
    energy_kev: float
    semiangle_mrad: float
    slices_per_repeat: int
    frozen_phonons: int
    phonon_pool: int
    sigma: float
    jitter: bool

    def describe(self) -> dict[str, Any]:
        lam = wavelength(self.energy_kev)
        return {
            "box_A": self.box,
            "gpts": self.gpts,
            "real_space_sampling_A": self.box / self.gpts,
            "repeat_A": self.period,
            "atoms_per_cell": int(len(self.numbers)),
            "wavelength_A": lam,
            "disk_radius_px": self.semiangle_mrad * 1e-3 / lam * self.box,
            "slice_thickness_A": self.period / self.slices_per_repeat,
        }


def geometry(ms: MultisliceConfig, size: int, crystal: Crystal | None = None) -> Geometry:
    """Orient ``crystal`` (default: :func:`load_crystal`) and size the box for ``size`` px patterns."""
    c = crystal if crystal is not None else load_crystal(ms)
    d = np.asarray(c.zone_axis, dtype=float) @ c.cell
    z = d / np.linalg.norm(d)
    x = None
    for a in c.cell:
        p = a - (a @ z) * z
        if np.linalg.norm(p) > 1e-6 * np.linalg.norm(a):
            x = p / np.linalg.norm(p)
            break
    assert x is not None  # three independent cell vectors cannot all be parallel to z
    y = np.cross(z, x)
    rot = np.stack([x, y, z])
    box = 1.0 / ms.reciprocal_pixel
    gpts = ms.gpts if ms.gpts is not None else 2 * math.ceil(0.75 * size + 1.5)
    if gpts < size:
        raise ConfigError(f"simulate.multislice.gpts ({gpts}) must be at least simulate.size ({size})")
    return Geometry(
        cell=c.cell @ rot.T,
        numbers=c.numbers,
        basis=c.positions @ rot.T,
        period=float(np.linalg.norm(d)),
        box=box,
        gpts=int(gpts),
        size=int(size),
        energy_kev=float(ms.energy_kev),
        semiangle_mrad=float(ms.semiangle_mrad),
        slices_per_repeat=int(ms.slices_per_repeat),
        frozen_phonons=int(ms.frozen_phonons),
        phonon_pool=int(ms.phonon_pool),
        sigma=c.sigma,
        jitter=bool(ms.jitter),
    )


def zolz_lattice(geo: Geometry) -> dict[str, Any]:
    """The zero-order Laue zone as seen on the detector: shortest allowed reflections, their fold.

    Reflections with a kinematic structure factor (weights Z) below 1e-6 of the largest are
    forbidden (e.g. Si 200); ``spacing_px`` is the shortest allowed ``|g|`` in detector pixels,
    ``symmetry`` the number of reflections at that length (4 square, 6 hexagonal).
    """
    recip = np.linalg.inv(geo.cell).T  # rows b1, b2, b3 with a_i . b_j = delta_ij
    n = np.arange(-6, 7)
    hkl = np.stack(np.meshgrid(n, n, n, indexing="ij"), -1).reshape(-1, 3)
    g = hkl @ recip
    zolz = (np.abs(g[:, 2]) < 1e-9) & (np.abs(hkl).sum(1) > 0)
    g = g[zolz]
    f = np.abs(np.exp(2j * np.pi * g @ geo.basis.T) @ geo.numbers)
    g = g[f > 1e-6 * geo.numbers.sum()]
    r = np.hypot(g[:, 0], g[:, 1])
    shortest = g[np.abs(r - r.min()) < 1e-6 * r.min()]
    fold = len(shortest)
    angles = np.mod(np.degrees(np.arctan2(shortest[:, 1], shortest[:, 0])), 360.0 / max(fold, 1))
    return {
        "kind": {6: "hex", 4: "square"}.get(fold, "oblique"),
        "spacing_px": float(r.min() * geo.box),
        "orientation_deg": float(angles.min()),
        "disk_radius_px": geo.describe()["disk_radius_px"],
        "symmetry": fold if fold in (4, 6) else 2,
    }


def thickness_map(ms: MultisliceConfig, scan: tuple[int, int], seed: int, period: float) -> np.ndarray:
    """Thickness per scan position in nm, rounded to whole repeats ``period`` (Angstrom), at least one.

    A fixed thickness, or a linear ramp from ``min`` to ``max`` across the scan along a direction
    drawn from ``seed``.
    """
    t = ms.thickness_nm
    rx, ry = scan
    if isinstance(t, int | float):
        nm = np.full((rx, ry), float(t))
    else:
        phi = np.random.default_rng([int(seed), THICKNESS_STREAM]).uniform(0.0, 2 * math.pi)
        x, y = np.meshgrid(np.arange(rx) / max(rx - 1, 1), np.arange(ry) / max(ry - 1, 1), indexing="ij")
        proj = x * math.cos(phi) + y * math.sin(phi)
        span = proj.max() - proj.min()
        u = (proj - proj.min()) / span if span > 0 else np.zeros_like(proj)
        nm = t[0] + (t[1] - t[0]) * u
    repeats = np.maximum(1, np.rint(nm * 10.0 / period))
    return repeats * period / 10.0


def position_seeds(seed: int, scan: tuple[int, int]) -> np.ndarray:
    """Seeds (Rx, Ry, 3) uint32 per position: phonon pool, phonon ensemble, crystal translation."""
    out = np.empty((*scan, 3), dtype=np.uint32)
    for i in range(scan[0]):
        for j in range(scan[1]):
            out[i, j] = np.random.SeedSequence([int(seed), PHONON_STREAM, i, j]).generate_state(3)
    return out


def _configure_abtem() -> None:
    import abtem
    import dask

    # Deterministic FFT plans (FFTW_MEASURE can pick different algorithms, hence different bits, per
    # run), one thread per process (parallelism comes from worker processes), computed immediately.
    abtem.config.set({"dask.lazy": False, "fftw.planning_effort": "FFTW_ESTIMATE", "fftw.threads": 1})
    dask.config.set(scheduler="synchronous")


def _deformed_cell(geo: Geometry, F: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Atoms (numbers, positions) of one repeat along z of the crystal deformed by F, cut to the box."""
    L, h = geo.box, geo.period
    c = np.array([L / 2, L / 2])
    Finv = np.linalg.inv(F)
    corners = np.array([[0, 0], [L, 0], [0, L], [L, L]], dtype=float)
    pre = (corners - c) @ Finv.T - shift[:2]
    lo = np.append(pre.min(0), -shift[2]) - 1e-6
    hi = np.append(pre.max(0), h - shift[2]) + 1e-6
    box8 = np.array([[a, b, z] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    frac = box8 @ np.linalg.inv(geo.cell)
    ranges = [np.arange(math.floor(frac[:, k].min()) - 1, math.ceil(frac[:, k].max()) + 2) for k in range(3)]
    lattice = np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, 3) @ geo.cell
    pos = (lattice[:, None, :] + geo.basis[None, :, :] + shift).reshape(-1, 3)
    num = np.broadcast_to(geo.numbers, (len(lattice), len(geo.numbers))).reshape(-1)
    tol = 1e-7 * h
    keep = (pos[:, 2] >= -tol) & (pos[:, 2] < h - tol)
    pos, num = pos[keep], num[keep]
    xy = c + pos[:, :2] @ F.T
    keep = np.all((xy >= 0) & (xy < L), axis=1)
    out = np.column_stack([xy[keep], np.clip(pos[keep, 2], 0.0, None)])
    return num[keep], out


def simulate_pattern(
    geo: Geometry, F: np.ndarray, repeats: int, seeds: np.ndarray, float64: bool = False
) -> tuple[np.ndarray, float]:
    """One pattern (Q, Q) float32 summing to 1, and the fraction of the probe's intensity it holds.

    ``F`` (2, 2): in-plane deformation; ``repeats``: thickness in repeats along the zone axis;
    ``seeds``: the position's three seeds (:func:`position_seeds`). ``float64``: abTEM in double
    precision and a float64 pattern (for finite differences, :func:`crb`).
    """
    require_physics()
    import abtem
    from ase import Atoms

    _configure_abtem()
    abtem.config.set({"precision": "float64" if float64 else "float32"})
    F = np.asarray(F, dtype=float)
    shift = np.zeros(3)
    if geo.jitter:
        shift = np.random.default_rng(int(seeds[2])).uniform(0.0, 1.0, 3) @ geo.cell
    numbers, positions = _deformed_cell(geo, F, shift)
    unit = Atoms(numbers=numbers, positions=positions, cell=[geo.box, geo.box, geo.period], pbc=True)
    n = geo.gpts
    dz = geo.period / geo.slices_per_repeat
    with warnings_quiet():
        if geo.frozen_phonons > 0:
            pool = abtem.FrozenPhonons(unit, num_configs=geo.phonon_pool, sigmas=geo.sigma, seed=int(seeds[0]))
            cell_pot = abtem.Potential(pool, gpts=n, slice_thickness=dz, projection="infinite")
            potential = abtem.CrystalPotential(
                cell_pot, (1, 1, int(repeats)), num_frozen_phonons=geo.frozen_phonons, seeds=int(seeds[1])
            )
        else:
            cell_pot = abtem.Potential(unit, gpts=n, slice_thickness=dz, projection="infinite")
            potential = abtem.CrystalPotential(cell_pot, (1, 1, int(repeats)))
        probe = abtem.Probe(semiangle_cutoff=geo.semiangle_mrad, energy=geo.energy_kev * 1e3, extent=geo.box, gpts=n)
        waves = probe.multislice(potential, scan=np.array([[geo.box / 2, geo.box / 2]]), lazy=False)
    psi = np.asarray(waves.array, dtype=np.complex128).reshape(-1, n, n)
    intensity = (np.abs(np.fft.fftshift(np.fft.fft2(psi), axes=(-2, -1))) ** 2).mean(axis=0)
    q = geo.size
    if q % 2:
        lo = n // 2 - (q - 1) // 2
        crop = intensity[lo : lo + q, lo : lo + q]
    else:
        # The pattern's centre falls between pixels, at (Q - 1) / 2: each detector pixel averages
        # the 2 x 2 nearest reciprocal-space samples (a one-sample box blur; disks are not moved).
        lo = n // 2 - q // 2
        c = intensity[lo : lo + q + 1, lo : lo + q + 1]
        crop = 0.25 * (c[:-1, :-1] + c[1:, :-1] + c[:-1, 1:] + c[1:, 1:])
    total = float(intensity.sum())
    detected = float(crop.sum())
    return (crop / detected).astype(np.float64 if float64 else np.float32), detected / total


@contextlib.contextmanager
def warnings_quiet() -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def reduce_mantissa(x: np.ndarray, bits: int, quantum_log2: int | None = None) -> np.ndarray:
    """float32 ``x`` rounded to ``bits`` mantissa bits (round half up on the magnitude; 23 = unchanged).

    ``quantum_log2``: where it is coarser, round to multiples of ``2 ** quantum_log2`` instead (an
    absolute step for the dim pixels, so they compress; values below half of it become 0).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    drop = 23 - int(bits)
    r = x
    if drop > 0:
        u = x.view(np.uint32)
        u = (u + np.uint32(1 << (drop - 1))) & np.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
        r = u.view(np.float32)
    if quantum_log2 is not None:
        q = np.float32(2.0**quantum_log2)
        dim = np.abs(x) < np.float32(2.0 ** (quantum_log2 + bits))
        r = np.where(dim, np.round(x / q) * q, r).astype(np.float32)
    return r


def _cache_key(cfg: Config) -> str:
    """Hash of everything that changes a noiseless pattern (not noise, storage, or kinematic settings)."""
    sim = cfg.simulate
    ms = sim.multislice.model_dump(mode="json", exclude={"mantissa_bits", "quantum_log2", "gzip"})
    key = {
        "engine": SIMULATOR,
        "seed": int(cfg.seed),
        "scan": list(sim.scan),
        "size": sim.size,
        "specimen": sim.specimen.model_dump(mode="json"),
        "multislice": ms,
        "crystal_file": _file_digest(sim.multislice.crystal),
        "versions": _versions(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _file_digest(name: str) -> str | None:
    p = Path(name)
    return hashlib.sha256(p.read_bytes()).hexdigest() if name not in PRESETS and p.is_file() else None


def _versions() -> dict[str, str]:
    import abtem
    import ase

    return {"abtem": abtem.__version__, "ase": ase.__version__}


def cache_dir(cfg: Config, out: str | os.PathLike[str]) -> Path:
    """The per-pattern cache of ``cfg`` for output ``out``: ``.<name>.cache-<config hash>`` beside it."""
    out = Path(out)
    return out.parent / f".{out.name}.cache-{_cache_key(cfg)}"


def _cache_file(folder: Path, i: int, j: int) -> Path:
    return folder / f"r{i:05d}_{j:05d}.npz"


def _job(args: tuple[Geometry, np.ndarray, int, np.ndarray, str, int, int]) -> tuple[int, int]:
    """Simulate one position into its cache file (atomically); runs in a worker process or inline."""
    from edgestem.atomic import atomic_path

    geo, F, repeats, seeds, folder, i, j = args
    pattern, detected = simulate_pattern(geo, F, repeats, seeds)
    with atomic_path(_cache_file(Path(folder), i, j)) as tmp, open(tmp, "wb") as fp:
        np.savez(fp, pattern=pattern, detected=np.float64(detected))
    return i, j


def _worker_init() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"
    # A killed run must not leave workers behind: exit when the parent is gone (finished patterns
    # are already in the cache; the one in progress is lost, its file never appears).
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _run_jobs(jobs: list[Any], workers: int, progress: Callable[[int], None] | None) -> None:
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _job(job)
            if progress is not None:
                progress(1)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: forking a process that has started dask or FFTW threads can deadlock.
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as ex:
        futures = [ex.submit(_job, job) for job in jobs]
        try:
            for fut in as_completed(futures):
                fut.result()
                if progress is not None:
                    progress(1)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def file_attrs(cfg: Config, geo: Geometry, lattice: dict[str, Any], phonon_seed: int) -> dict[str, Any]:
    """Root attributes: the kinematic engine's keys plus the engine, versions and every parameter."""
    from edgestem.data.simulate import units_attr

    clean = "normalised intensity (sum 1 per pattern over the detector crop)"
    ms = cfg.simulate.multislice
    return {
        "config": dump_config(cfg),
        "seed": int(cfg.seed),
        "noise": json.dumps(cfg.noise.model_dump(mode="json")),
        "lattice": json.dumps(lattice),
        "specimen": json.dumps(cfg.simulate.specimen.model_dump(mode="json")),
        "simulator": SIMULATOR,
        "engine": "abtem",
        "versions": json.dumps(_versions()),
        "multislice": json.dumps(
            {
                **ms.model_dump(mode="json"),
                "zone_axis": list(load_crystal(ms).zone_axis),
                "phonon_sigma": geo.sigma,
                "phonon_seed": int(phonon_seed),
                **geo.describe(),
                "parametrization": "lobato",
                "projection": "infinite",
            }
        ),
        "units": units_attr(cfg, clean),
    }


def simulate_to_file(
    cfg: Config,
    out: str | os.PathLike[str],
    progress: Callable[[int], None] | None = None,
    workers: int = 1,
    keep_cache: bool = False,
) -> Path:
    """Simulate ``cfg`` with abTEM into an edgestem HDF5 file at ``out`` (atomic).

    Patterns already in the cache (:func:`cache_dir`) are not recomputed; ``progress(n)`` is called
    per pattern (cached ones first). The cache is removed after the file is written unless
    ``keep_cache``.
    """
    import shutil

    from edgestem.data import noise as noise_mod
    from edgestem.data.io import hdf5_writer
    from edgestem.data.simulate import specimen_labels, specimen_rng

    require_physics()
    sim, ms = cfg.simulate, cfg.simulate.multislice
    rx, ry = sim.scan
    q = sim.size
    geo = geometry(ms, q)
    lattice = zolz_lattice(geo)
    labels = specimen_labels(sim, specimen_rng(cfg.seed))
    F = strain.deformation_gradient(labels["exx"], labels["eyy"], labels["exy"], labels["theta"])
    phonon_seed = int(ms.phonon_seed if ms.phonon_seed is not None else cfg.seed)
    thick = thickness_map(ms, (rx, ry), phonon_seed, geo.period)
    repeats = np.rint(thick * 10.0 / geo.period).astype(int)
    seeds = position_seeds(phonon_seed, (rx, ry))

    folder = cache_dir(cfg, out)
    folder.mkdir(parents=True, exist_ok=True)
    todo, done = [], 0
    for i in range(rx):
        for j in range(ry):
            if _cache_file(folder, i, j).is_file():
                done += 1
            else:
                todo.append((geo, F[i, j], int(repeats[i, j]), seeds[i, j], str(folder), i, j))
    if progress is not None and done:
        progress(done)
    _run_jobs(todo, workers, progress)

    data = np.empty((rx, ry, q, q), dtype=np.float32)
    detected = np.empty((rx, ry))
    for i in range(rx):
        for j in range(ry):
            try:
                with np.load(_cache_file(folder, i, j)) as z:
                    data[i, j] = z["pattern"]
                    detected[i, j] = float(z["detected"])
            except (OSError, ValueError, KeyError) as exc:
                _cache_file(folder, i, j).unlink(missing_ok=True)
                raise DataError(
                    f"{folder}: cached pattern ({i}, {j}) is unreadable ({exc}); it was removed, run again"
                ) from None
    data = reduce_mantissa(data, ms.mantissa_bits, ms.quantum_log2)
    if noise_mod.is_active(cfg.noise):
        hot = noise_mod.hot_pixel_mask(q, cfg.noise.hot_pixels, cfg.seed) if cfg.noise.hot_pixels > 0 else None
        for r in range(rx):
            data[r] = noise_mod.apply_noise(data[r], cfg.noise, noise_mod.noise_rng(cfg.seed, r), hot)
    with hdf5_writer(out, (rx, ry, q, q), attrs=file_attrs(cfg, geo, lattice, phonon_seed), gzip=ms.gzip) as w:
        w.write(slice(None), data)
        w.set_labels(labels)
        w.set_array("specimen/thickness_nm", thick, {"units": "nm", "about": "realised thickness per position"})
        w.set_array(
            "specimen/detected_fraction",
            detected,
            {"about": "fraction of the probe's intensity (inside the antialiasing aperture) in the detector crop"},
        )
        w.set_array(
            "specimen/seeds",
            seeds,
            {"about": "per position: phonon pool, phonon ensemble, crystal translation", "phonon_seed": phonon_seed},
        )
    if not keep_cache:
        shutil.rmtree(folder, ignore_errors=True)
    return Path(out)
