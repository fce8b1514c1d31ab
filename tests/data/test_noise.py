"""Tests of the noise models: Poisson statistics, background mixing, read noise, hot pixels, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgestem.config import LatticeConfig, NoiseConfig
from edgestem.data.io import open_4dstem, write_4dstem
from edgestem.data.noise import (
    HOT_PIXEL_FACTOR,
    add_noise_to_file,
    apply_noise,
    describe,
    hot_pixel_mask,
    lorentzian_background,
    noise_rng,
)
from edgestem.data.simulate import render_patterns
from edgestem.errors import ConfigError, DataError

Q = 32


@pytest.fixture(scope="module")
def dp() -> np.ndarray:
    """One clean pattern (Q x Q, sum 1) with disks and dark space between them."""
    return render_patterns(np.eye(2)[None], LatticeConfig(spacing_px=14.0), Q)[0].astype(np.float64)


def test_lorentzian_background() -> None:
    b = lorentzian_background(Q, 2.0)
    assert b.shape == (Q, Q) and b.sum() == pytest.approx(1.0)
    c = (Q - 1) / 2
    # Half maximum at q = hwhm (on the centre's symmetric grid: compare two radii analytically).
    i = np.arange(Q) - c
    q2 = i[:, None] ** 2 + i[None, :] ** 2
    assert np.allclose(b / b.max(), (1 + q2.min() / 4) / (1 + q2 / 4))
    assert np.allclose(b, b[::-1, ::-1]) and np.allclose(b, b.T)


def test_dose_poisson_statistics(dp: np.ndarray) -> None:
    dose, n = 2000.0, 4000
    x = apply_noise(np.broadcast_to(dp, (n, Q, Q)), NoiseConfig(model="dose", dose=dose), np.random.default_rng(0))
    assert x.dtype == np.float32 and np.all(x == np.round(x))
    lam = dose * dp
    mean, var = x.mean(axis=0), x.var(axis=0, ddof=1)
    z = (mean - lam) / np.sqrt(np.maximum(lam, 1e-12) / n)
    bright = lam > 1.0
    assert np.abs(z[bright]).max() < 5.5
    assert np.all(mean[lam == 0] == 0)
    assert np.median(var[bright] / lam[bright]) == pytest.approx(1.0, abs=0.05)
    assert x.sum(axis=(1, 2)).mean() == pytest.approx(dose, rel=0.01)


def test_background_expectation(dp: np.ndarray) -> None:
    w, counts, n = 0.4, 1e5, 400
    noise = NoiseConfig(model="background", w=w, counts_per_probe=counts, background_hwhm_px=2.0)
    x = apply_noise(np.broadcast_to(dp, (n, Q, Q)), noise, np.random.default_rng(1)).astype(np.float64)
    expected = (1 - w) * dp + w * lorentzian_background(Q, 2.0)
    z = (x.mean(axis=0) - expected) / np.sqrt(expected / counts / n)
    assert np.abs(z).max() < 5.5
    assert x.sum(axis=(1, 2)).mean() == pytest.approx(1.0, abs=1e-3)


def test_background_fraction_outside_disks_grows_with_w(dp: np.ndarray) -> None:
    outside = dp < 1e-9 * dp.max()
    assert outside.sum() > 0.2 * dp.size
    b_out = lorentzian_background(Q, 2.0)[outside].sum()
    fractions = []
    for w in (0.0, 0.1, 0.3, 0.6):
        noise = NoiseConfig(model="background", w=w, counts_per_probe=1e5)
        x = apply_noise(np.broadcast_to(dp, (50, Q, Q)), noise, np.random.default_rng(2)).astype(np.float64)
        frac = (x[:, outside].sum(axis=1) / x.sum(axis=(1, 2))).mean()
        assert frac == pytest.approx(w * b_out, abs=2e-4)
        fractions.append(frac)
    assert np.all(np.diff(fractions) > 0)


def test_w0_is_pure_poisson(dp: np.ndarray) -> None:
    counts = 1e4
    x = apply_noise(dp * 7.0, NoiseConfig(model="background", w=0.0, counts_per_probe=counts), noise_rng(3, 0))
    ref = noise_rng(3, 0).poisson(dp * counts) / counts  # input scale does not matter: normalised first
    assert np.array_equal(x, ref.astype(np.float32))


def test_read_noise(dp: np.ndarray) -> None:
    n = 200
    stack = np.broadcast_to(dp, (n, Q, Q))
    for model, kw, unit in (("dose", {"dose": 1e6}, 1.0), ("background", {"counts_per_probe": 1e6}, 1e-6)):
        clean = apply_noise(stack, NoiseConfig(model=model, **kw), np.random.default_rng(4)).astype(np.float64)
        noisy = apply_noise(stack, NoiseConfig(model=model, read_noise=3.0, **kw), np.random.default_rng(4))
        # Same seed: the Poisson draws are identical and the difference is the read noise alone.
        bright = clean.min(axis=0) > 20 * 3.0 * unit  # far from the clip at zero
        diff = (noisy.astype(np.float64) - clean)[:, bright] / unit
        assert diff.std() == pytest.approx(3.0, rel=0.05) and abs(diff.mean()) < 0.1
        assert noisy.min() >= 0  # clipped: processed frames are non-negative
    low = apply_noise(stack[:5], NoiseConfig(model="dose", dose=100.0, read_noise=2.0), np.random.default_rng(0))
    assert low.min() == 0.0


def test_hot_pixels_fixed(dp: np.ndarray) -> None:
    mask = hot_pixel_mask(Q, 0.01, seed=7)
    assert mask.shape == (Q, Q) and mask.sum() == round(0.01 * Q * Q)
    assert np.array_equal(mask, hot_pixel_mask(Q, 0.01, seed=7))
    assert not np.array_equal(mask, hot_pixel_mask(Q, 0.01, seed=8))
    assert hot_pixel_mask((Q, 20), 0.01, seed=7).shape == (Q, 20)
    dose = 1e3
    noise = NoiseConfig(model="dose", dose=dose, hot_pixels=0.01)
    a = apply_noise(np.broadcast_to(dp, (6, Q, Q)), noise, noise_rng(0, 0), mask)
    b = apply_noise(np.broadcast_to(dp, (6, Q, Q)), noise, noise_rng(0, 1), mask)
    hot = HOT_PIXEL_FACTOR * dose / (Q * Q)
    assert np.all(a[:, mask] == np.float32(hot)) and np.all(b[:, mask] == np.float32(hot))
    assert not np.array_equal(a[:, ~mask], b[:, ~mask])
    bg = apply_noise(dp, NoiseConfig(model="background", hot_pixels=0.01), noise_rng(0, 0), mask)
    assert np.all(bg[mask] == np.float32(HOT_PIXEL_FACTOR / (Q * Q)))


def test_determinism(dp: np.ndarray) -> None:
    noise = NoiseConfig(model="background", w=0.25, read_noise=1.0)
    a = apply_noise(np.broadcast_to(dp, (4, Q, Q)), noise, noise_rng(11, 3))
    b = apply_noise(np.broadcast_to(dp, (4, Q, Q)), noise, noise_rng(11, 3))
    c = apply_noise(np.broadcast_to(dp, (4, Q, Q)), noise, noise_rng(11, 4))
    d = apply_noise(np.broadcast_to(dp, (4, Q, Q)), noise, noise_rng(12, 3))
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, d)


def test_none_is_identity(dp: np.ndarray) -> None:
    x = apply_noise(dp, NoiseConfig(), np.random.default_rng(0))
    assert x.dtype == np.float32 and np.array_equal(x, dp.astype(np.float32))
    # Read noise alone (model none) treats the input as counts.
    y = apply_noise(dp * 1e4, NoiseConfig(read_noise=1.0), np.random.default_rng(0))
    assert 0.5 < np.std(y - (dp * 1e4).astype(np.float32)) < 1.5


def test_describe() -> None:
    assert describe(NoiseConfig()) == "none"
    assert describe(NoiseConfig(model="background", w=0.25)) == "background w=0.25, 1e5 counts"
    assert describe(NoiseConfig(model="dose", dose=1e3)) == "dose 1e3 e-/pattern"
    assert describe(NoiseConfig(model="dose", dose=2.5e4, read_noise=2)) == "dose 2.5e4 e-/pattern, read noise 2 counts"
    assert describe(NoiseConfig(read_noise=1.5)) == "read noise 1.5 counts"


def _source(tmp_path: Path) -> tuple[Path, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, (5, 3, 16, 12)).astype(np.float32)
    labels = {k: rng.normal(size=(5, 3)) for k in ("exx", "eyy", "exy", "theta")}
    attrs = {"lattice": json.dumps({"kind": "hex"}), "seed": 9, "units": json.dumps({"theta": "degree"})}
    path = write_4dstem(tmp_path / "src.h5", data, labels=labels, attrs=attrs)
    return path, data, labels


def test_add_noise_to_file(tmp_path: Path) -> None:
    src, data, labels = _source(tmp_path)
    noise = NoiseConfig(model="dose", dose=500.0, hot_pixels=0.02)
    rows: list[int] = []
    out = add_noise_to_file(src, tmp_path / "noisy.h5", noise, seed=5, progress=rows.append)
    assert sum(rows) == 5
    with open_4dstem(out) as ds:
        assert ds.shape == data.shape and ds.dtype == np.float32
        got = ds[()]
        assert all(np.array_equal(ds.labels[k], labels[k]) for k in labels)
        attrs = ds.attrs
    assert json.loads(attrs["noise"])["dose"] == 500.0 and attrs["noise_seed"] == 5 and attrs["source"] == "src.h5"
    assert json.loads(attrs["lattice"]) == {"kind": "hex"} and attrs["seed"] == 9
    units = json.loads(attrs["units"])
    assert units["theta"] == "degree" and units["data"] == "electron counts"
    mask = hot_pixel_mask((16, 12), 0.02, 5)
    assert got[..., ~mask].sum(axis=-1).mean() == pytest.approx(500.0 * (~mask).mean(), rel=0.1)
    # Row r is noised by noise_rng(seed, r), whatever the chunking.
    assert np.array_equal(got[2], apply_noise(data[2], noise, noise_rng(5, 2), mask))
    # Noising a noisy file keeps the first noise as source_noise.
    again = add_noise_to_file(out, tmp_path / "again.h5", NoiseConfig(model="background", w=0.1), seed=1)
    with open_4dstem(again) as ds:
        assert json.loads(ds.attrs["source_noise"])["model"] == "dose"
        assert json.loads(ds.attrs["noise"])["model"] == "background"


def test_add_noise_refuses_same_path(tmp_path: Path) -> None:
    src, _, _ = _source(tmp_path)
    with pytest.raises(DataError, match="different path"):
        add_noise_to_file(src, tmp_path / "." / "src.h5", NoiseConfig(model="dose"), seed=0)


def test_one_noise_model_per_level() -> None:
    from edgestem.data.noise import noise_at

    assert noise_at("w", 0.25) == NoiseConfig(model="background", w=0.25)
    assert noise_at("background", 0.25) == noise_at("w", 0.25)
    assert noise_at("w", 0.0) == NoiseConfig(model="none")  # an evaluation table's clean column
    assert noise_at("background", 0.0, 1e4) == NoiseConfig(model="background", w=0.0, counts_per_probe=1e4)
    assert noise_at("dose", 1e3) == NoiseConfig(model="dose", dose=1e3)
    with pytest.raises(ConfigError, match="noise axis 'snr'"):
        noise_at("snr", 1.0)


def test_levels_typed_on_the_command_line() -> None:
    from edgestem.data.noise import parse_levels

    assert parse_levels(None, None) is None
    levels = parse_levels("0, 0.25", None)
    assert [label for label, _ in levels] == ["w=0", "w=0.25"] and levels[0][1].model == "none"
    assert [n.dose for _, n in parse_levels(None, "1e4,1e3")] == [1e4, 1e3]
    for w, d, message in [
        ("0.1", "1e3", "not both"),
        ("a,b", None, "numbers separated by commas"),
        ("1.5", None, r"w must lie in \[0, 1\)"),
        (None, "0", "doses must be > 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_levels(w, d)
