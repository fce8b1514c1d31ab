"""The one home of the deformation convention: F <-> affine map <-> (exx, eyy, exy, theta).

Everything in edgestem that talks about strain (the simulator's labels, the model's parameter head,
the classical baseline, the metrics) goes through this module, so they cannot disagree about axes
or signs. It imports nothing of edgestem and needs only numpy.

Conventions (stated once, tested by round trips in ``tests/test_strain.py``):

* Arrays are ``(Rx, Ry, Qx, Qy)``. In a pattern, axis ``-2`` is ``kx`` ("x") and axis ``-1`` is
  ``ky`` ("y"); a pixel ``(i, j)`` has coordinates ``k = (i - c, j - c)`` with the pattern centre
  ``c = (Q - 1) / 2``. The same holds for the scan axes (Rx is x).
* ``eps = [[exx, exy], [exy, eyy]]`` is the symmetric small-strain tensor (tensor shear, as a
  fraction); ``theta`` is the in-plane rotation in degrees, counter-clockwise from x towards y.
* The real-space deformation gradient is ``F = R(theta) @ (I + eps)``.
* Reciprocal-lattice vectors (Bragg-disk positions) move as ``g' = F^-T g = A g`` with
  ``A = R(theta) @ inv(I + eps)``. ``A`` is the affine map of the network's parameter head:
  ``A = Rot(rot) @ [[sx, sh], [sh, sy]]``, so ``rot = theta`` and ``S = inv(I + eps)``.
* Warping a pattern ``x`` by ``A`` means sampling it at ``A k``; that takes the deformed pattern
  back to the undeformed one. ``torch.nn.functional.affine_grid`` indexes the LAST axis as its x,
  so its theta is ``P A P`` with ``P = [[0, 1], [1, 0]]`` (:func:`to_grid_sample`).
* From predictions: ``M = inv(A) = F^T``; ``T = inv(M_ref) @ M`` with ``M_ref`` the median over a
  reference region (the fixed point of ``median(inv(M_ref) @ M) = I``, :func:`reference_matrix`);
  the left polar decomposition ``T = P U`` gives ``eps = P - I`` and ``theta = -angle(U)``.
  ``T`` is the transpose of the relative deformation
  ``F @ inv(F_ref)`` from the reference lattice to the lattice at each position, so the strain is
  expressed in the detector's (x, y) frame relative to the reference lattice, as in py4DSTEM.
  Ordering the product this way (the usual formulation writes ``M @ inv(M_ref)``; the two agree when the
  reference is undeformed) makes the maps independent of the learned dictionary: a dictionary
  that is the true lattice distorted by any ``C`` gives ``A = A_true @ C``, hence
  ``M = inv(C) @ M_true``, and ``C`` cancels in ``inv(M_ref) @ M`` (with ``M @ inv(M_ref)`` it
  would conjugate the strain tensor, mixing components at first order in the dictionary's
  rotation). Tested in ``test_maps_do_not_depend_on_the_dictionary_frame``.
* A lattice with n-fold symmetry cannot tell ``A`` from ``A @ R(360/n)``. Rotations are therefore
  wrapped into ``(-180/n, 180/n]`` relative to the reference, in the matrix algebra (no per-dataset
  angle offsets).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "rotation_matrix",
    "deformation_gradient",
    "affine_from_deformation",
    "deformation_from_affine",
    "affine_from_params",
    "params_from_affine",
    "strain_from_deformation",
    "polar_left",
    "polar_right",
    "strain_from_affine",
    "wrap_angle",
    "symmetry_period",
    "reference_mask",
    "reference_matrix",
    "reference_orientations",
    "grain_mask",
    "resolve_reference",
    "to_grid_sample",
]

_SYMMETRY_FOLD = {"hex": 6, "square": 4, None: 1}


def symmetry_period(symmetry: int | str | None) -> float:
    """Rotation period in degrees of an n-fold lattice (``"hex"`` = 6, ``"square"`` = 4, None = 360)."""
    n = _SYMMETRY_FOLD[symmetry] if isinstance(symmetry, str) or symmetry is None else int(symmetry)
    if n < 1:
        raise ValueError(f"symmetry fold must be >= 1, got {n}")
    return 360.0 / n


def wrap_angle(theta_deg: Any, symmetry: int | str | None = None) -> np.ndarray:
    """Wrap angles (degrees) into ``(-p/2, p/2]`` where ``p`` is the lattice's rotation period."""
    p = symmetry_period(symmetry)
    t = np.asarray(theta_deg, dtype=float)
    return p / 2 - np.mod(p / 2 - t, p)


def rotation_matrix(theta_deg: Any) -> np.ndarray:
    """``R(theta)`` with shape ``(..., 2, 2)``, counter-clockwise from x towards y."""
    t = np.deg2rad(np.asarray(theta_deg, dtype=float))
    c, s = np.cos(t), np.sin(t)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def _sym(exx: Any, eyy: Any, exy: Any) -> np.ndarray:
    exx, eyy, exy = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (exx, eyy, exy)))
    return np.stack([np.stack([exx, exy], -1), np.stack([exy, eyy], -1)], -2)


def deformation_gradient(exx: Any, eyy: Any, exy: Any, theta_deg: Any) -> np.ndarray:
    """``F = R(theta) @ (I + eps)`` with shape ``(..., 2, 2)``; inputs broadcast."""
    eps = _sym(exx, eyy, exy)
    return rotation_matrix(theta_deg) @ (np.eye(2) + eps)


def affine_from_deformation(F: np.ndarray) -> np.ndarray:
    """Affine map of the diffraction pattern, ``A = F^-T`` (where Bragg disks move: ``g' = A g``)."""
    return np.swapaxes(np.linalg.inv(np.asarray(F, dtype=float)), -1, -2)


def deformation_from_affine(A: np.ndarray) -> np.ndarray:
    """Inverse of :func:`affine_from_deformation`: ``F = A^-T``."""
    return np.swapaxes(np.linalg.inv(np.asarray(A, dtype=float)), -1, -2)


def affine_from_params(sx: Any, sy: Any, sh: Any, rot_deg: Any) -> np.ndarray:
    """The parameter head's map ``A = Rot(rot) @ [[sx, sh], [sh, sy]]``."""
    return rotation_matrix(rot_deg) @ _sym(sx, sy, sh)


def params_from_affine(A: np.ndarray) -> dict[str, np.ndarray]:
    """Inverse of :func:`affine_from_params` (right polar decomposition ``A = Rot @ S``).

    Returns ``sx, sy, sh, rot`` (degrees), e.g. the targets a supervised encoder should learn.
    """
    U, S = polar_right(A)
    return {
        "sx": S[..., 0, 0],
        "sy": S[..., 1, 1],
        "sh": 0.5 * (S[..., 0, 1] + S[..., 1, 0]),
        "rot": np.rad2deg(np.arctan2(U[..., 1, 0], U[..., 0, 0])),
    }


def _polar_angle(T: np.ndarray) -> np.ndarray:
    """Angle (radians) of the rotation factor of a 2x2 matrix with positive determinant."""
    return np.arctan2(T[..., 1, 0] - T[..., 0, 1], T[..., 0, 0] + T[..., 1, 1])


def polar_right(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``T = U @ P`` with ``U`` a rotation and ``P`` symmetric positive definite (vectorised, 2x2)."""
    T = np.asarray(T, dtype=float)
    _check_orientation(T)
    U = rotation_matrix(np.rad2deg(_polar_angle(T)))
    P = np.swapaxes(U, -1, -2) @ T
    return U, 0.5 * (P + np.swapaxes(P, -1, -2))


def polar_left(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``T = P @ U`` with ``P`` symmetric positive definite and ``U`` a rotation (vectorised, 2x2).

    Equal to ``scipy.linalg.polar(T, side="left")`` for 2x2 matrices with positive determinant,
    in closed form so a 256 x 256 scan takes milliseconds.
    """
    T = np.asarray(T, dtype=float)
    _check_orientation(T)
    U = rotation_matrix(np.rad2deg(_polar_angle(T)))
    P = T @ np.swapaxes(U, -1, -2)
    return 0.5 * (P + np.swapaxes(P, -1, -2)), U


def _check_orientation(T: np.ndarray) -> None:
    det = np.linalg.det(T)
    if np.any(~np.isfinite(det)):
        raise ValueError("deformation contains NaN or infinite values")
    if np.any(det <= 0):
        raise ValueError("deformation with non-positive determinant (a reflection or a collapse): not a strain")


def strain_from_deformation(F: np.ndarray) -> dict[str, np.ndarray]:
    """Decompose ``F = R(theta) @ (I + eps)``: returns ``exx, eyy, exy`` (fractions) and ``theta`` (deg)."""
    U, P = polar_right(F)
    eps = P - np.eye(2)
    return {
        "exx": eps[..., 0, 0],
        "eyy": eps[..., 1, 1],
        "exy": eps[..., 0, 1],
        "theta": np.rad2deg(np.arctan2(U[..., 1, 0], U[..., 0, 0])),
    }


def reference_mask(scan_shape: tuple[int, int], region: str | np.ndarray | None = None) -> np.ndarray:
    """Boolean ``(Rx, Ry)`` mask of the reference region.

    ``region`` is None (the whole scan), a boolean array of the scan's shape, a string
    ``"x0:x1,y0:y1"`` (Python slice bounds along Rx and Ry; either side may be empty), or
    ``"grain:x,y"``: the grain around scan position (x, y), found from the orientations by
    :func:`grain_mask` inside :func:`strain_from_affine`; here (no orientations) only that position.
    """
    if region is None:
        return np.ones(scan_shape, dtype=bool)
    if isinstance(region, str) and region.replace(" ", "").startswith("grain:"):
        x, y = _grain_seed(region)
        if not (0 <= x < scan_shape[0] and 0 <= y < scan_shape[1]):
            raise ValueError(f"reference {region!r}: position ({x}, {y}) lies outside the {tuple(scan_shape)} scan")
        mask = np.zeros(scan_shape, dtype=bool)
        mask[x, y] = True
        return mask
    if isinstance(region, np.ndarray):
        if region.shape != tuple(scan_shape) or region.dtype != bool:
            raise ValueError(f"reference mask must be a boolean array of shape {tuple(scan_shape)}")
        if not region.any():
            raise ValueError("reference mask selects no position")
        return region
    parts = str(region).replace(" ", "").split(",")
    if len(parts) != 2 or any(p.count(":") != 1 for p in parts):
        raise ValueError(f"reference region {region!r} must look like 'x0:x1,y0:y1' (e.g. '0:8,0:8')")
    slices = []
    for p in parts:
        lo, hi = p.split(":")
        try:
            slices.append(slice(int(lo) if lo else None, int(hi) if hi else None))
        except ValueError:
            raise ValueError(f"reference region {region!r}: bounds must be integers") from None
    mask = np.zeros(scan_shape, dtype=bool)
    mask[slices[0], slices[1]] = True
    if not mask.any():
        raise ValueError(f"reference region {region!r} selects no position of the {tuple(scan_shape)} scan")
    return mask


def _grain_seed(region: str) -> tuple[int, int]:
    text = region.replace(" ", "").removeprefix("grain:")
    try:
        x, y = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(
            f"reference {region!r} must look like 'grain:x,y' (a scan position, e.g. 'grain:4,4')"
        ) from None
    return x, y


def _orientation(M: np.ndarray) -> np.ndarray:
    """Lattice orientation (degrees) of each ``M = inv(A)``: the rotation of its polar factor."""
    return -np.rad2deg(_polar_angle(M))


def _relative(theta: np.ndarray, to: float, period: float) -> np.ndarray:
    """``theta - to`` on the n-fold circle: in ``(-period/2, period/2]``."""
    d = np.asarray(theta) - to
    return d - period * np.round(d / period)


def grain_mask(
    theta_deg: np.ndarray,
    seed: tuple[int, int],
    period: float = 360.0,
    step_deg: float = 1.5,
    tol_deg: float = 6.0,
) -> np.ndarray:
    """The grain around ``seed``, grown over 4-neighbours: a neighbour joins when its orientation
    differs by at most ``step_deg`` from the position it is reached from and by at most ``tol_deg``
    from the seed's (on the n-fold circle of ``period`` degrees). Slow in-grain rotation is
    followed; the jump at a grain boundary (several degrees per scan step) stops the growth."""
    seed = (int(seed[0]), int(seed[1]))
    rel = _relative(theta_deg, float(theta_deg[seed]), period)
    mask = np.zeros(theta_deg.shape, dtype=bool)
    mask[seed] = True
    stack = [seed]
    while stack:
        i, j = stack.pop()
        for a, b in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
            if 0 <= a < mask.shape[0] and 0 <= b < mask.shape[1] and not mask[a, b]:
                if abs(rel[a, b]) <= tol_deg and abs(_relative(rel[a, b], rel[i, j], period)) <= step_deg:
                    mask[a, b] = True
                    stack.append((a, b))
    return mask


def reference_orientations(
    A: np.ndarray,
    reference: str | np.ndarray | None = None,
    symmetry: int | str | None = None,
    gap_deg: float = 1.5,
    min_fraction: float = 0.1,
) -> list[dict[str, Any]]:
    """Orientation groups inside the reference region of affine maps ``A`` (Rx, Ry, 2, 2).

    The region's orientations (on the symmetry's circle) are sorted and split where two neighbours
    differ by more than ``gap_deg``; groups under ``min_fraction`` of the region (grain boundaries)
    are dropped. One group: the region lies in one grain. Several: the reference mixes grains and
    its median lattice belongs to none. Each group: ``theta`` (mean orientation, degrees, relative to
    the region's circular mean), ``fraction`` of the region, ``at`` (a scan position inside it).
    """
    A = np.asarray(A, dtype=float)
    period = symmetry_period(symmetry)
    M = np.linalg.inv(A)
    theta = _orientation(M)
    mask = _resolve_mask(A.shape[:-2], reference, theta, period)
    z = np.exp(1j * np.deg2rad(theta[mask]) * 360.0 / period).mean()
    rel = _relative(theta, np.rad2deg(np.angle(z)) * period / 360.0, period)
    idx = np.argwhere(mask)
    values = rel[mask]
    order = np.argsort(values)
    cuts = np.flatnonzero(np.diff(values[order]) > gap_deg) + 1
    groups = []
    for part in np.split(order, cuts):
        if len(part) < min_fraction * len(values):
            continue
        centre = idx[part].mean(axis=0)
        at = idx[part][np.argmin(np.abs(idx[part] - centre).sum(axis=1))]
        groups.append(
            {"theta": float(values[part].mean()), "fraction": len(part) / len(values), "at": tuple(int(v) for v in at)}
        )
    return groups


def resolve_reference(
    A: np.ndarray, reference: str | np.ndarray | None, symmetry: int | str | None = None
) -> str | np.ndarray | None:
    """``reference`` with ``"grain:x,y"`` turned into the boolean mask of that grain in ``A`` (Rx, Ry, 2, 2)."""
    if not (isinstance(reference, str) and reference.replace(" ", "").startswith("grain:")):
        return reference
    A = np.asarray(A, dtype=float)
    theta = _orientation(np.linalg.inv(A))
    return _resolve_mask(A.shape[:-2], reference, theta, symmetry_period(symmetry))


def _resolve_mask(shape: tuple[int, ...], reference: Any, theta: np.ndarray, period: float) -> np.ndarray:
    """Reference mask; ``"grain:x,y"`` resolved from the orientations ``theta``."""
    if isinstance(reference, str) and reference.replace(" ", "").startswith("grain:"):
        reference_mask(shape, reference)  # validates the position
        return grain_mask(theta, _grain_seed(reference), period)
    return reference_mask(shape, reference)


def strain_from_affine(
    A: np.ndarray,
    reference: str | np.ndarray | None = None,
    symmetry: int | str | None = None,
) -> dict[str, np.ndarray]:
    """Strain maps from predicted affine maps ``A`` of shape ``(Rx, Ry, 2, 2)`` (or ``(N, 2, 2)``).

    ``M = inv(A) = F^T`` per position; rotations are brought onto the symmetry branch nearest the
    reference orientation; ``M_ref`` is the median of ``M`` over the reference region
    (:func:`reference_matrix`);
    the left polar decomposition of ``inv(M_ref) @ M`` gives ``exx, eyy, exy`` and ``theta`` relative
    to the reference lattice, in the detector frame (see the module docstring for why this order).
    ``symmetry``: ``"hex"``, ``"square"``, an integer fold, or None (no wrap). ``reference``
    ``"grain:x,y"`` takes the grain around that scan position (:func:`grain_mask`).
    """
    A = np.asarray(A, dtype=float)
    if A.shape[-2:] != (2, 2) or A.ndim < 3:
        raise ValueError(f"affine maps must have shape (..., 2, 2), got {A.shape}")
    M = np.linalg.inv(A)
    period = symmetry_period(symmetry)
    theta = -np.rad2deg(_polar_angle(M))
    mask = _resolve_mask(A.shape[:-2], reference, theta, period) if A.ndim == 4 else _flat_mask(A.shape[:-2], reference)
    if period < 360.0:
        # Reference orientation: circular mean on the n-fold circle, robust to the branch cut.
        z = np.exp(1j * np.deg2rad(theta[mask]) * 360.0 / period).mean()
        theta_ref = np.rad2deg(np.angle(z)) * period / 360.0
        k = np.round((theta - theta_ref) / period)
        # R(k p) @ M describes the same pattern with rotation theta - k p.
        M = rotation_matrix(k * period) @ M
    M_ref = reference_matrix(M[mask])
    T = np.linalg.inv(M_ref) @ M
    P, U = polar_left(T)
    eps = P - np.eye(2)
    return {
        "exx": eps[..., 0, 0],
        "eyy": eps[..., 1, 1],
        "exy": eps[..., 0, 1],
        "theta": wrap_angle(-np.rad2deg(_polar_angle(U)), symmetry) if period < 360.0 else -np.rad2deg(_polar_angle(U)),
    }


def reference_matrix(M: np.ndarray, tol: float = 1e-13, max_iter: int = 50) -> np.ndarray:
    """The reference ``M_ref`` of a set of ``M`` (n, 2, 2): the fixed point of
    ``median(inv(M_ref) @ M) = I`` (element-wise median).

    Starts from the element-wise median and iterates ``M_ref <- M_ref @ median(inv(M_ref) @ M)``.
    Unlike the plain element-wise median this is equivariant (``inv(C) @ M`` gives
    ``inv(C) @ M_ref`` exactly), so a learned dictionary's frame cannot leak into the maps; after
    referencing, the reference region's median relative deformation is exactly the identity.
    """
    M_ref = np.median(M, axis=0)
    for _ in range(max_iter):
        step = np.median(np.linalg.inv(M_ref) @ M, axis=0)
        M_ref = M_ref @ step
        if np.abs(step - np.eye(2)).max() < tol:
            break
    return M_ref


def _flat_mask(shape: tuple[int, ...], reference: str | np.ndarray | None) -> np.ndarray:
    if reference is None:
        return np.ones(shape, dtype=bool)
    if isinstance(reference, np.ndarray) and reference.shape == shape and reference.dtype == bool:
        return reference
    raise ValueError("for a flat (N, 2, 2) batch the reference must be None or a boolean mask of shape (N,)")


def to_grid_sample(A: Any) -> Any:
    """``P A P`` (swap rows and columns): the theta that ``torch.nn.functional.affine_grid`` needs.

    Works on numpy arrays and torch tensors of shape ``(..., 2, 2)``.
    """
    if isinstance(A, np.ndarray):
        return A[..., ::-1, ::-1]
    return A.flip((-2, -1))
