"""2-D lattice geometry shared by the classical fit and the likelihood refinement."""

from __future__ import annotations

import numpy as np


def reduce_basis(b1: np.ndarray, b2: np.ndarray, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange-Gauss reduction of a 2-D lattice basis: the shortest, most orthogonal pair.

    Returns ``(g1, g2)`` with ``|g1| <= |g2|`` and ``|g1 . g2| <= |g1|^2 / 2``; the lattice they span
    is unchanged.
    """
    g1, g2 = np.array(b1, dtype=float), np.array(b2, dtype=float)
    for _ in range(max_iter):
        if g1 @ g1 > g2 @ g2:
            g1, g2 = g2, g1
        mu = round(float(g1 @ g2) / float(g1 @ g1))
        if mu == 0:
            break
        g2 = g2 - mu * g1
    return g1, g2
