"""Figures: calibrated axes, the reference outlined, theta apart from strain, no saturated panels."""

from __future__ import annotations

import numpy as np
import pytest

from edgestem import report


@pytest.fixture
def captured(monkeypatch):
    figs = []

    def keep(fig, path):
        figs.append(fig)
        return path

    monkeypatch.setattr(report, "save_figure", keep)
    return figs


def _maps(scale=1.0):
    r = np.random.default_rng(0)
    return {k: r.normal(0, 0.01 * scale, (6, 8)) for k in ("exx", "eyy", "exy", "theta")}


def test_maps_in_calibrated_units_with_the_reference_outlined(captured, tmp_path):
    cal = [{"name": n, "scale": 0.5, "units": "nm"} for n in ("Rx", "Ry", "Qx", "Qy")]
    ref = np.zeros((6, 8), bool)
    ref[:3, :4] = True
    report.plot_maps(_maps(), tmp_path / "m.png", reference=ref, calibration=cal)
    (fig,) = captured
    axes = [ax for ax in fig.axes if ax.images]
    assert [ax.get_xlabel() for ax in axes] == ["Ry (nm)"] * 4 and axes[0].get_ylabel() == "Rx (nm)"
    assert axes[0].images[0].get_extent() == [-0.25, 3.75, 2.75, -0.25]
    assert all(ax.collections for ax in axes)  # the outline
    assert [ax.images[0].get_cmap().name for ax in axes] == ["RdBu_r", "RdBu_r", "RdBu_r", "PuOr_r"]


def test_comparison_scale_covers_prediction_and_label(captured, tmp_path):
    truth, pred = _maps(), _maps(scale=3.0)  # a prediction three times wider than the label
    report.plot_comparison(pred, truth, tmp_path / "c.png")
    (fig,) = captured
    images = [ax.images[0] for ax in fig.axes if ax.images]
    vmax = images[0].get_clim()[1]  # exx prediction
    p = (pred["exx"] - pred["exx"].mean()) * 100
    assert vmax >= np.percentile(np.abs(p), 99) - 1e-12


def test_patterns_have_a_colour_bar(captured, tmp_path):
    img = np.random.default_rng(0).random((16, 16))
    report.plot_patterns(img, {"(0, 0)": img}, tmp_path / "p.png")
    (fig,) = captured
    assert len(fig.axes) == 4  # two images and two colour bars
