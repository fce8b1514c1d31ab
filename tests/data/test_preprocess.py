"""The one pre-processing function: crop, bin, scale, normalise; bad input rejected."""

import numpy as np
import pytest

from edgestem.config import PreprocessConfig
from edgestem.data.preprocess import geometry, preprocess
from edgestem.errors import DataError


def test_identity_size_keeps_pattern_up_to_normalisation():
    x = np.random.default_rng(0).random((3, 2, 64, 64))
    y = preprocess(x, PreprocessConfig(size=64))
    assert y.shape == (3, 2, 64, 64) and y.dtype == np.float32
    np.testing.assert_allclose(y.mean(axis=(-2, -1)), 1, rtol=1e-6)
    np.testing.assert_allclose(y, x / x.mean(axis=(-2, -1), keepdims=True), rtol=1e-5)


def test_binning_sums_blocks_and_keeps_centre():
    x = np.zeros((128, 128))
    x[63:65, 63:65] = 1.0  # a spot straddling the centre (63.5, 63.5)
    y = preprocess(x, PreprocessConfig(size=64, normalize="none"))
    assert y.shape == (64, 64)
    assert y[31, 31] == 1 and y[32, 32] == 1 and y.sum() == 4  # centre (31.5, 31.5) after 2x2 bins
    g = geometry((130, 130), PreprocessConfig(size=64))
    assert (g.x0, g.x1, g.bin) == (1, 129, 2)


def test_explicit_crop_and_bin():
    x = np.arange(100 * 100, dtype=float).reshape(100, 100)
    cfg = PreprocessConfig(size=16, crop=(10, 42, 20, 52), bin=2, normalize="none")
    y = preprocess(x, cfg)
    assert y.shape == (16, 16)
    assert y[0, 0] == x[10:12, 20:22].sum()
    with pytest.raises(DataError, match="size \\* bin"):
        preprocess(x, PreprocessConfig(size=16, crop=(10, 40, 20, 52)))
    with pytest.raises(DataError, match="outside"):
        preprocess(x, PreprocessConfig(size=16, crop=(90, 122, 0, 32)))


def test_scales():
    x = np.random.default_rng(1).random((4, 32, 32)) * 10
    s = preprocess(x, PreprocessConfig(size=32, scale="sqrt", normalize="none"))
    np.testing.assert_allclose(s, np.sqrt(x), rtol=1e-6)
    lg = preprocess(x, PreprocessConfig(size=32, scale="log", normalize="none"))
    assert np.all(np.diff(np.sort(lg.ravel())) >= 0)  # monotonic
    assert preprocess(np.zeros((32, 32)), PreprocessConfig(size=32, scale="log", normalize="none")).max() == 0
    m = preprocess(x, PreprocessConfig(size=32, normalize="max"))
    np.testing.assert_allclose(m.max(axis=(-2, -1)), 1, rtol=1e-6)


def test_zero_pattern_stays_zero_without_nan():
    y = preprocess(np.zeros((2, 64, 64)), PreprocessConfig(size=64))
    assert np.all(y == 0)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.full((64, 64), np.nan), "NaN"),
        (-np.ones((64, 64)), "negative"),
        (np.ones((32, 32)), "smaller than"),
        (np.ones(64), "at least 2"),
        (np.ones((64, 64), dtype=complex), "real"),
    ],
)
def test_bad_input(bad, match):
    with pytest.raises(DataError, match=match):
        preprocess(bad, PreprocessConfig(size=64))


def test_radial_background_removes_the_lorentzian_and_the_contrast_change():
    from edgestem.config import load_config
    from edgestem.data.noise import lorentzian_background
    from edgestem.data.simulate import render_patterns
    from edgestem.strain import deformation_gradient

    lat = load_config(None).simulate.lattice
    dp = render_patterns(deformation_gradient(0.01, -0.005, 0.002, 1.0)[None], lat, 64)
    dp = dp / dp.sum()
    noisy = 0.5 * dp + 0.5 * lorentzian_background(64, 2.0)  # w = 0.5, no shot noise
    plain, radial = load_config(None).preprocess, load_config(None, {"preprocess.background": "radial"}).preprocess
    inner = (slice(None), slice(8, 56), slice(8, 56))
    off_plain = np.abs(preprocess(noisy, plain) - preprocess(dp, plain))[inner].mean()
    off_radial = np.abs(preprocess(noisy, radial) - preprocess(dp, radial))[inner].mean()
    assert off_radial < 0.2 * off_plain  # measured 0.12 vs 1.03
    assert preprocess(noisy, radial).min() == 0.0
