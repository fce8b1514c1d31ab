"""Strain maps from a run, metrics and their files."""

import json

import h5py
import numpy as np
import pytest

from edgestem import strain as S
from edgestem.config import load_config
from edgestem.errors import EdgestemError
from edgestem.evaluate import label_maps, maps_from_affine, regression_slope, strain_from_run, strain_mae
from edgestem.train import train

TINY = {"model.encoder.channels": [4, 8, 8], "model.encoder.hidden": 8, "train.batch_size": 16, "seed": 2}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_h5):
    run = tmp_path_factory.mktemp("runs") / "run"
    train(load_config(None, {**TINY, "train.epochs": 2}), tiny_h5, run)
    return run


def test_exact_affine_maps_give_zero_error():
    rng = np.random.default_rng(0)
    labels = {k: rng.uniform(-0.02, 0.02, (6, 5)) for k in ("exx", "eyy", "exy")}
    labels["theta"] = rng.uniform(-20, 20, (6, 5))
    truth = label_maps(labels, None, "hex")
    A = S.affine_from_deformation(S.deformation_gradient(*(labels[k] for k in ("exx", "eyy", "exy", "theta"))))
    pred = maps_from_affine(A.reshape(-1, 2, 2), (6, 5), None, "hex")
    assert max(strain_mae(pred, truth).values()) < 1e-9
    assert all(abs(v - 1) < 1e-9 for v in regression_slope(pred, truth).values())
    # Labels through the math, relative to an unstrained reference, are the labels themselves.
    labels0 = {k: v.copy() for k, v in labels.items()}
    for k in labels0:
        labels0[k][0, 0] = 0.0
    m = label_maps(labels0, "0:1,0:1", "hex")
    for k in ("exx", "eyy", "exy", "theta"):
        np.testing.assert_allclose(m[k], labels0[k], atol=1e-12)


def test_mae_units_and_reference_mean_subtraction():
    z = {k: np.zeros((4, 4)) for k in ("exx", "eyy", "exy", "theta")}
    shifted = {k: v + 0.5 for k, v in z.items()}
    assert max(strain_mae(shifted, z).values()) == 0  # a constant offset is not an error
    bump = {k: v.copy() for k, v in z.items()}
    for k in bump:
        bump[k][0, 0] = 0.016
    mae = strain_mae(bump, z)
    assert mae["exx"] == pytest.approx(100 * 0.016 * (15 / 16) / 16 * 2, rel=1e-9)
    assert mae["theta"] == pytest.approx(0.016 * (15 / 16) / 16 * 2, rel=1e-9)


def test_strain_command_writes_maps_metrics_and_figure(tmp_path, tiny_run, tiny_h5):
    out = tmp_path / "maps.h5"
    res = strain_from_run(tiny_run, tiny_h5, out, reference="0:4,0:4")
    with h5py.File(out) as f:
        assert set(f["maps"]) == {"exx", "eyy", "exy", "theta"} and f["maps/exx"].shape == (8, 8)
        assert f["affine"].shape == (8, 8, 2, 2) and f.attrs["reference"] == "0:4,0:4"
    report = json.loads((tmp_path / "maps.h5.json").read_text())
    assert set(report["metrics"]["mae"]["encoder"]) == {"exx", "eyy", "exy", "theta"}
    assert res["patterns_per_second"]["encoder"] > 0
    assert (tmp_path / "maps.png").stat().st_size > 0


def test_strain_command_rejects_mismatched_data(tmp_path, tiny_run):
    from edgestem.data.io import write_4dstem

    small = write_4dstem(tmp_path / "small.h5", np.ones((2, 2, 32, 32), np.float32))
    with pytest.raises(EdgestemError, match="smaller than"):
        strain_from_run(tiny_run, small, tmp_path / "m.h5")
    with pytest.raises(EdgestemError, match="x0:x1,y0:y1"):
        big = write_4dstem(tmp_path / "big.h5", np.ones((2, 2, 64, 64), np.float32))
        strain_from_run(tiny_run, big, tmp_path / "m.h5", reference="bad")
    assert not (tmp_path / "m.h5").exists()


def test_strain_refine_reports_both_methods(tmp_path, tiny_run, tiny_h5):
    res = strain_from_run(tiny_run, tiny_h5, tmp_path / "maps.h5", refine=True)
    assert set(res["mae"]) == {"encoder", "refined"} and res["patterns_per_second"]["refined"] > 0
    with h5py.File(tmp_path / "maps.h5") as f:
        assert f.attrs["method"] == "refined"
    # On clean data the likelihood fit is far better than a 2-epoch encoder.
    assert res["mae"]["refined"]["exx"] < 0.5 * res["mae"]["encoder"]["exx"]


def test_maps_file_is_also_an_emd_file(tmp_path):
    """Strain maps open in emdfile (py4DSTEM's reader) as Arrays with their units."""
    emdfile = pytest.importorskip("emdfile")
    from edgestem.evaluate import write_maps

    maps = {k: np.full((3, 4), i, dtype=float) for i, k in enumerate(("exx", "eyy", "exy", "theta"))}
    A = np.tile(np.eye(2), (3, 4, 1, 1))
    write_maps(tmp_path / "m.h5", maps, A, {"reference": "all"})
    theta = emdfile.read(tmp_path / "m.h5", emdpath="edgestem/theta")
    np.testing.assert_array_equal(theta.data, maps["theta"])
    assert theta.units == "degree"
    np.testing.assert_array_equal(emdfile.read(tmp_path / "m.h5", emdpath="edgestem/affine").data, A)


def test_maps_carry_the_scan_calibration(tmp_path):
    emdfile = pytest.importorskip("emdfile")
    from edgestem.evaluate import write_maps

    maps = {k: np.zeros((3, 4)) for k in ("exx", "eyy", "exy", "theta")}
    cal = [{"name": n, "scale": s, "units": u} for n, s, u in [("Rx", 2.0, "nm"), ("Ry", 2.0, "nm")] * 2]
    write_maps(tmp_path / "m.h5", maps, np.tile(np.eye(2), (3, 4, 1, 1)), {}, calibration=cal)
    exx = emdfile.read(tmp_path / "m.h5", emdpath="edgestem/exx")
    assert exx.dims[0][1] == 2.0 and tuple(exx.dim_units) == ("nm", "nm")
    affine = emdfile.read(tmp_path / "m.h5", emdpath="edgestem/affine")
    assert tuple(affine.dim_units) == ("nm", "nm", "pixels", "pixels")
    with h5py.File(tmp_path / "m.h5") as f:
        assert json.loads(f.attrs["calibration"])[0]["units"] == "nm"
