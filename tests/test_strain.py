"""The deformation convention: labels, affine maps and strain maps round-trip exactly."""

import numpy as np
import pytest
import scipy.linalg

from edgestem import strain as S


@pytest.fixture
def draws():
    rng = np.random.default_rng(1)
    n = 200
    return {
        "exx": rng.uniform(-0.03, 0.03, n),
        "eyy": rng.uniform(-0.03, 0.03, n),
        "exy": rng.uniform(-0.03, 0.03, n),
        "theta": rng.uniform(-29, 29, n),
    }


def test_deformation_round_trip(draws):
    F = S.deformation_gradient(draws["exx"], draws["eyy"], draws["exy"], draws["theta"])
    back = S.strain_from_deformation(S.deformation_from_affine(S.affine_from_deformation(F)))
    for k in draws:
        np.testing.assert_allclose(back[k], draws[k], atol=1e-9, rtol=0)


def test_affine_moves_lattice_vectors_as_f_minus_t():
    """Bragg vectors move as g' = F^-T g: real-space lattice vectors a' = F a keep a'.g' = a.g."""
    F = S.deformation_gradient(0.02, -0.01, 0.005, 7.0)
    A = S.affine_from_deformation(F)
    a = np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2]])  # real-space hex basis (rows)
    g = np.linalg.inv(a).T  # reciprocal basis (rows): a_i . g_j = delta_ij
    np.testing.assert_allclose((F @ a.T).T @ (A @ g.T), np.eye(2), atol=1e-12)
    # A pure expansion of real space (exx > 0) shrinks reciprocal space along x.
    A = S.affine_from_deformation(S.deformation_gradient(0.02, 0, 0, 0))
    assert A[0, 0] < 1 and np.isclose(A[1, 1], 1)
    # A positive rotation of the crystal rotates the pattern the same way (counter-clockwise, x -> y).
    A = S.affine_from_deformation(S.deformation_gradient(0, 0, 0, 10))
    gx = A @ np.array([1.0, 0.0])
    assert gx[1] > 0 and np.isclose(np.rad2deg(np.arctan2(gx[1], gx[0])), 10)


def test_params_round_trip(draws):
    F = S.deformation_gradient(draws["exx"], draws["eyy"], draws["exy"], draws["theta"])
    A = S.affine_from_deformation(F)
    p = S.params_from_affine(A)
    np.testing.assert_allclose(S.affine_from_params(p["sx"], p["sy"], p["sh"], p["rot"]), A, atol=1e-12)
    np.testing.assert_allclose(p["rot"], draws["theta"], atol=1e-9)
    # S = inv(I + eps)
    eps = np.stack([np.stack([draws["exx"], draws["exy"]], -1), np.stack([draws["exy"], draws["eyy"]], -1)], -2)
    np.testing.assert_allclose(p["sx"], np.linalg.inv(np.eye(2) + eps)[:, 0, 0], atol=1e-12)


@pytest.mark.parametrize("symmetry", [None, "hex", "square"])
def test_strain_from_affine_with_identity_reference(draws, symmetry):
    theta = draws["theta"] if symmetry != "square" else draws["theta"] * 44 / 29
    F = S.deformation_gradient(draws["exx"], draws["eyy"], draws["exy"], theta)
    A = np.concatenate([S.affine_from_deformation(F), np.eye(2)[None]])
    ref = np.zeros(len(A), dtype=bool)
    ref[-1] = True
    out = S.strain_from_affine(A, reference=ref, symmetry=symmetry)
    for k, v in (("exx", draws["exx"]), ("eyy", draws["eyy"]), ("exy", draws["exy"]), ("theta", theta)):
        np.testing.assert_allclose(out[k][:-1], v, atol=1e-9, rtol=0)


@pytest.mark.parametrize("symmetry,fold", [("hex", 6), ("square", 4)])
def test_symmetry_branches_are_equivalent(draws, symmetry, fold):
    """A @ R(k 360/n) is the same pattern: the strain maps must not change (no angle offsets)."""
    F = S.deformation_gradient(draws["exx"], draws["eyy"], draws["exy"], draws["theta"] * 0.5)
    A = np.concatenate([S.affine_from_deformation(F), np.eye(2)[None]])
    ref = np.zeros(len(A), dtype=bool)
    ref[-1] = True
    k = np.random.default_rng(2).integers(-3, 4, len(A))
    A_alt = A @ S.rotation_matrix(k * 360 / fold)
    a = S.strain_from_affine(A, ref, symmetry)
    b = S.strain_from_affine(A_alt, ref, symmetry)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-9)
    # Without the symmetry the branches disagree: the test above can fail.
    c = S.strain_from_affine(A_alt, ref, None)
    assert np.abs(c["theta"] - a["theta"]).max() > 10


def test_wrap_across_branch_cut_relative_to_reference():
    """Grains at +28 and -28 deg on a hex lattice are 4 deg apart, not 56."""
    A = S.affine_from_deformation(S.deformation_gradient(0, 0, 0, np.array([28.0, -28.0, 28.0])))
    out = S.strain_from_affine(A, reference=np.array([True, False, False]), symmetry="hex")
    np.testing.assert_allclose(out["theta"], [0, 4, 0], atol=1e-9)


def test_reference_median_subtracts_uniform_offset():
    rng = np.random.default_rng(3)
    exx = rng.uniform(-0.01, 0.01, (8, 8))
    F = S.deformation_gradient(exx + 0.02, 0.01, 0.0, 3.0)
    out = S.strain_from_affine(S.affine_from_deformation(F), reference="0:8,0:8", symmetry="hex")
    # Relative to the median: the offsets 0.02, 0.01 and 3 deg are gone.
    assert abs(np.median(out["exx"])) < 1e-9 and abs(np.median(out["eyy"])) < 1e-9
    assert np.abs(out["theta"]).max() < 0.05
    np.testing.assert_allclose(out["exx"] - np.median(out["exx"]), exx - np.median(exx), atol=5e-4)


def test_polar_left_matches_scipy(draws):
    F = S.deformation_gradient(draws["exx"], draws["eyy"], draws["exy"], draws["theta"])
    P, U = S.polar_left(F)
    for i in range(0, len(F), 20):
        u, p = scipy.linalg.polar(F[i], side="left")
        np.testing.assert_allclose(P[i], p, atol=1e-12)
        np.testing.assert_allclose(U[i], u, atol=1e-12)


def test_reflection_is_rejected():
    with pytest.raises(ValueError, match="determinant"):
        S.strain_from_deformation(np.diag([1.0, -1.0]))


def test_wrap_angle():
    np.testing.assert_allclose(S.wrap_angle([31, -31, 30, 89, 45], "hex"), [-29, 29, 30, 29, -15])
    np.testing.assert_allclose(S.wrap_angle([46, -44], "square"), [-44, -44])
    assert S.wrap_angle(190.0) == pytest.approx(-170)


def test_reference_mask_parsing():
    m = S.reference_mask((10, 12), "2:4,:3")
    assert m.sum() == 6 and m[2, 0] and m[3, 2] and not m[4, 0]
    assert S.reference_mask((3, 3)).all()
    with pytest.raises(ValueError, match="x0:x1,y0:y1"):
        S.reference_mask((4, 4), "1:2")
    with pytest.raises(ValueError, match="selects no position"):
        S.reference_mask((4, 4), "5:9,0:2")


def test_to_grid_sample_swaps_axes():
    A = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(S.to_grid_sample(A), [[4.0, 3.0], [2.0, 1.0]])
    import torch

    np.testing.assert_array_equal(S.to_grid_sample(torch.tensor(A)).numpy(), [[4.0, 3.0], [2.0, 1.0]])


def test_maps_do_not_depend_on_the_dictionary_frame(draws):
    """A dictionary distorted by C (rotated, strained) gives A = A_true @ C: the maps must not change."""
    F = S.deformation_gradient(draws["exx"], draws["eyy"], draws["exy"], draws["theta"] * 0.5)
    A = S.affine_from_deformation(F)
    C = S.affine_from_deformation(S.deformation_gradient(0.015, -0.01, 0.008, 4.0))
    ref = np.zeros(len(A), dtype=bool)
    ref[7] = True
    a = S.strain_from_affine(A, ref, "hex")
    b = S.strain_from_affine(A @ C, ref, "hex")
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-9)
    # With the whole scan as reference too (the fixed-point median is equivariant).
    a = S.strain_from_affine(A, None, "hex")
    b = S.strain_from_affine(A @ C, None, "hex")
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-9)
    # ...while the plain element-wise median would leave an offset of about 0.1 %.
    M = np.linalg.inv(A @ C)
    P, _ = S.polar_left(np.linalg.inv(np.median(M, axis=0)) @ M)
    assert np.abs(P[:, 0, 0] - 1 - a["exx"]).max() > 5e-4
    # The other product order would mix components by the dictionary's 4-degree rotation.
    M, M_ref = np.linalg.inv(A @ C), np.linalg.inv(A @ C)[7]
    P, _ = S.polar_left(M @ np.linalg.inv(M_ref))
    assert np.abs(P[:, 0, 0] - 1 - S.strain_from_affine(A, ref, "hex")["exx"]).max() > 1e-3


def _polycrystal_affine(scan=16, seed=0):
    from edgestem.config import load_config
    from edgestem.data.simulate import specimen_labels, specimen_rng

    labels = specimen_labels(load_config(None, {"simulate.scan": scan}).simulate, specimen_rng(seed))
    F = S.deformation_gradient(labels["exx"], labels["eyy"], labels["exy"], labels["theta"])
    return S.affine_from_deformation(F), labels


def test_reference_orientations_finds_the_grains_a_region_spans():
    """The README's example region on its example polycrystal spans several grains; one grain is one group."""
    A, labels = _polycrystal_affine()
    groups = S.reference_orientations(A, "0:8,0:8", "hex")
    assert len(groups) >= 3
    assert abs(sum(g["fraction"] for g in groups) - 1) < 0.2
    (one,) = S.reference_orientations(A, "grain:4,5", "hex")
    assert one["fraction"] == 1.0 and abs(one["theta"]) < 0.01


def test_grain_reference_reads_zero_inside_the_grain():
    A, labels = _polycrystal_affine()
    mask = S.resolve_reference(A, "grain:4,5", "hex")
    assert mask.dtype == bool and 20 < mask.sum() < 200 and mask[4, 5]
    assert np.ptp(labels["theta"][mask]) < 6.5  # one grain (in-grain rotation, smoothed edge)
    maps = S.strain_from_affine(A, "grain:4,5", "hex")
    assert abs(np.median(maps["theta"][mask])) < 1e-9
    mixed = S.strain_from_affine(A, "0:8,0:8", "hex")
    assert abs(np.median(mixed["theta"][mask])) > 1.0  # the mixed reference offsets that grain


def test_grain_reference_is_validated():
    with pytest.raises(ValueError, match="outside"):
        S.reference_mask((8, 8), "grain:9,1")
    with pytest.raises(ValueError, match="grain:x,y"):
        S.reference_mask((8, 8), "grain:1")
    assert S.reference_mask((8, 8), "grain:2,3").sum() == 1
