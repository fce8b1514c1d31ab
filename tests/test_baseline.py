"""Classical Bragg-disk strain mapping: known strains come back, on hex and square lattices, rotated
grains, noisy data, blank frames and bad input."""

import numpy as np
import pytest

from edgestem import strain as S
from edgestem.baseline import classical_strain
from edgestem.config import load_config
from edgestem.data.io import open_4dstem
from edgestem.data.simulate import render_patterns, simulate
from edgestem.errors import DataError
from edgestem.evaluate import label_maps, strain_mae

TRUE = {"exx": 0.005, "eyy": -0.003, "exy": 0.002, "theta": 2.0}


def _simulated(overrides: dict) -> tuple[np.ndarray, dict]:
    """An in-memory scan (Rx, Ry, Q, Q) and its labels from the built-in simulator."""
    labels, blocks = simulate(load_config(None, overrides))
    return np.concatenate([b for _, b in blocks]), labels


def _uniform_scan(kind: str = "hex", descan: bool = False) -> np.ndarray:
    """A clean 4 x 4 scan: rows 0-1 unstrained, rows 2-3 strained by TRUE.

    ``descan``: the patterns of odd columns shifted by (2, -1) px (a non-smooth descan).
    """
    lat = load_config(None, {"simulate.lattice.kind": kind}).simulate.lattice
    rows = np.repeat([0.0, 0.0, 1.0, 1.0], 4)
    F = S.deformation_gradient(*(rows * TRUE[k] for k in ("exx", "eyy", "exy", "theta")))
    big = render_patterns(F, lat, 72).reshape(4, 4, 72, 72)
    out = big[..., 4:68, 4:68].copy()
    if descan:
        out[:, 1::2] = big[:, 1::2, 2:66, 5:69]
    return out


@pytest.fixture(scope="module")
def uniform_hex():
    return classical_strain(_uniform_scan("hex"), reference="0:2,:")


def test_recovers_a_known_uniform_strain(uniform_hex):
    res = uniform_hex
    assert res.failed == 0 and res.symmetry == 6  # the symmetry is inferred from the data alone
    for k, v in TRUE.items():
        scale = 1.0 if k == "theta" else 100.0  # compare strain in %, theta in degrees
        np.testing.assert_allclose(res.maps[k][2:] * scale, v * scale, atol=0.05, err_msg=k)
        np.testing.assert_allclose(res.maps[k][:2] * scale, 0.0, atol=0.05, err_msg=k)
    # The affine maps follow the convention g' = A g with A = F^-T (not F, whose strain has the other sign).
    F = S.deformation_gradient(TRUE["exx"], TRUE["eyy"], TRUE["exy"], TRUE["theta"])
    a_rel = res.A[3, 3] @ np.linalg.inv(res.A[0, 0])
    np.testing.assert_allclose(a_rel, S.affine_from_deformation(F), atol=5e-4)
    # The tolerances above would catch the wrong convention: maps of A = F are off by about 1 %.
    wrong = S.strain_from_affine(np.stack([np.eye(2), F])[None], reference="0:1,0:1")
    assert abs(wrong["exx"][0, 1] - TRUE["exx"]) > 0.005 and abs(wrong["exy"][0, 1] - TRUE["exy"]) > 0.003


@pytest.mark.parametrize("options", [{"refine": "centroid"}, {"origin": "pattern", "descan": True}])
def test_options_recover_the_uniform_strain(options):
    """Centroid refinement, and per-pattern origins under a non-smooth descan (2 px jumps)."""
    options = dict(options)
    data = _uniform_scan("hex", descan=options.pop("descan", False))
    res = classical_strain(data, reference="0:2,:", **options)
    for k, v in TRUE.items():
        scale = 1.0 if k == "theta" else 100.0
        np.testing.assert_allclose(res.maps[k][2:] * scale, v * scale, atol=0.05, err_msg=k)
    if "origin" in options:
        np.testing.assert_allclose(
            res.origin[:, 1::2] - res.origin[:, ::2], np.broadcast_to([2, -1], (4, 2, 2)), atol=0.01
        )


def test_square_lattice_uniform_strain():
    res = classical_strain(_uniform_scan("square"), reference="0:2,:")
    assert res.symmetry == 4
    for k, v in TRUE.items():
        scale = 1.0 if k == "theta" else 100.0
        np.testing.assert_allclose(res.maps[k][2:] * scale, v * scale, atol=0.05, err_msg=k)


@pytest.mark.parametrize("kind", ["hex", "square"])
def test_polycrystal_with_rotated_grains(kind):
    """Grains rotated by up to +-20 degrees are indexed against the reference lattice correctly."""
    data, labels = _simulated({"simulate.scan": 10, "simulate.lattice.kind": kind, "seed": 4})
    assert np.ptp(labels["theta"]) > 15  # the grains really are rotated far apart
    res = classical_strain(data)
    assert res.failed == 0 and res.symmetry == (6 if kind == "hex" else 4)
    mae = strain_mae(res.maps, label_maps(labels, None, kind))
    assert mae["theta"] < 0.03, mae
    assert max(mae["exx"], mae["eyy"], mae["exy"]) < 0.03, mae


def test_noisy_data_still_accurate():
    data, labels = _simulated(
        {"simulate.scan": 12, "simulate.specimen.kind": "random", "noise.model": "background", "noise.w": 0.25}
    )
    res = classical_strain(data, symmetry="hex")
    mae = strain_mae(res.maps, label_maps(labels, None, "hex"))
    # Measured about 0.03 % / 0.01 deg at 1e5 counts; the bound leaves a wide margin.
    assert max(mae["exx"], mae["eyy"], mae["exy"]) < 0.2 and mae["theta"] < 0.1, mae


def test_reads_an_edgestem_file_with_progress(tiny_h5):
    rows = []
    with open_4dstem(tiny_h5) as ds:
        res = classical_strain(ds, progress=rows.append)
        truth = label_maps(ds.labels, None, "hex")
    assert sum(rows) == 8 and res.A.shape == (8, 8, 2, 2) and res.n_disks.min() >= 10
    mae = strain_mae(res.maps, truth)
    assert max(mae.values()) < 0.05, mae


def test_blank_pattern_fails_alone(uniform_hex):
    data = _uniform_scan("hex")
    data[3, 1] = 0.0
    res = classical_strain(data, reference="0:2,:")
    assert res.failed == 1 and res.n_disks[3, 1] == 0
    assert np.isnan(res.A[3, 1]).all() and all(np.isnan(m[3, 1]) for m in res.maps.values())
    ok = np.ones((4, 4), bool)
    ok[3, 1] = False
    for k in TRUE:
        np.testing.assert_allclose(res.maps[k][ok], uniform_hex.maps[k][ok], atol=1e-6, err_msg=k)


def test_nan_input_is_a_data_error():
    data = _uniform_scan("hex")
    data[1, 2, 5, 5] = np.nan
    with pytest.raises(DataError, match=r"NaN.*\(1, 2\)") as exc:
        classical_strain(data)
    assert "\n" not in str(exc.value)


def test_bad_arguments():
    with pytest.raises(DataError):
        classical_strain(np.zeros((4, 64, 64)))
    with pytest.raises(ValueError, match="symmetry"):
        classical_strain(_uniform_scan("hex"), symmetry="cubic")
