"""2-D lattice basis reduction."""

import numpy as np

from edgestem.lattice import reduce_basis


def test_reduction_finds_the_short_basis_of_the_same_lattice():
    a = np.array([11.0, 0.0])
    b = np.array([5.5, 11.0 * np.sqrt(3) / 2])  # hexagonal, 60 degrees
    g1, g2 = reduce_basis(a + 3 * b, 2 * a + 7 * b)  # a skewed basis of the same lattice
    assert np.isclose(np.linalg.norm(g1), 11.0) and np.isclose(np.linalg.norm(g2), 11.0)
    assert abs(g1 @ g2) <= 0.5 * (g1 @ g1) + 1e-9
    # Same lattice: the old vectors have integer coordinates in the new basis, and vice versa.
    coords = np.linalg.solve(np.stack([g1, g2], 1), np.stack([a + 3 * b, 2 * a + 7 * b], 1))
    np.testing.assert_allclose(coords, np.rint(coords), atol=1e-9)
    assert abs(round(np.linalg.det(coords))) == 1
