"""The CC-ST-AE pieces: encoder shape and layers, bounded head, warp convention, automatic masks."""

import numpy as np
import pytest
import torch
from torch import nn

from edgestem import strain as S
from edgestem.config import EncoderConfig, HeadConfig, load_config
from edgestem.data.simulate import reciprocal_lattice, render_patterns
from edgestem.model.ccstae import ParameterHead, affine_from_params, disk_mask, warp
from edgestem.model.encoder import build_encoder, count_macs, count_parameters

LAT = load_config().simulate.lattice


def test_default_encoder_fits_an_fpga_and_uses_only_portable_layers():
    enc = build_encoder(EncoderConfig(), 64)
    assert 10_000 <= count_parameters(enc) <= 50_000
    allowed = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear, nn.Identity, nn.Sequential)
    assert all(isinstance(m, allowed) for m in enc.modules())
    assert enc(torch.zeros(3, 1, 64, 64)).shape == (3, 4)
    assert count_macs(enc, 64) > count_parameters(enc)
    names = [n for n, _ in enc.named_children()]
    assert names[:5] == ["input", "conv1", "bn1", "relu1", "pool1"] and names[-2:] == ["fc2", "output"]


def test_encoder_size_must_survive_the_pools():
    with pytest.raises(ValueError, match="divisible"):
        build_encoder(EncoderConfig(channels=[4, 4, 4, 4]), 40)


def test_head_is_bounded_and_invertible():
    head = ParameterHead(HeadConfig(), "hex")
    o = torch.tensor([[50.0, -50.0, 50.0, -50.0], [0.1, -0.2, 0.3, -0.4]])
    p = head.params(o)
    assert float(p["sx"][0]) == pytest.approx(1.05) and float(p["sy"][0]) == pytest.approx(0.95)
    assert float(p["sh"][0]) == pytest.approx(0.1) and float(p["rot"][0]) == pytest.approx(-30.0)
    back = head.raw_from_params({k: v[1:] for k, v in p.items()})
    np.testing.assert_allclose(back.numpy(), o[1:].numpy(), rtol=1e-5)
    assert ParameterHead(HeadConfig(), "square").c == 45.0


def test_torch_affine_equals_strain_module():
    rng = np.random.default_rng(0)
    sx, sy = rng.uniform(0.97, 1.03, 5), rng.uniform(0.97, 1.03, 5)
    sh, rot = rng.uniform(-0.02, 0.02, 5), rng.uniform(-20, 20, 5)
    t = affine_from_params(*(torch.tensor(v) for v in (sx, sy, sh, rot))).numpy()
    np.testing.assert_allclose(t, S.affine_from_params(sx, sy, sh, rot), atol=1e-12)


def _rel(a, b):
    return float(((a - b) ** 2).sum() / (b**2).sum())


def test_warp_by_A_undoes_the_deformation_and_the_wrong_sign_does_not():
    F = S.deformation_gradient(0.02, -0.015, 0.01, 6.0)
    x = render_patterns(np.stack([F, np.eye(2)]), LAT, 64)
    deformed, ref = torch.tensor(x[:1, None]), torch.tensor(x[1:, None])
    A = torch.tensor(S.affine_from_deformation(F)[None], dtype=torch.float32)
    good = _rel(warp(deformed, A), ref)
    wrong = _rel(warp(deformed, torch.tensor(F[None], dtype=torch.float32)), ref)
    assert good < 0.02 and wrong > 4 * good
    # Warping forward then backward returns the pattern (up to interpolation blur).
    back = warp(warp(ref, A), torch.linalg.inv(A))
    assert _rel(back, ref) < 0.05


def test_masks_cover_the_disks_and_exclude_the_central_beam():
    x = render_patterns(np.eye(2)[None], LAT, 64)[0]
    mask = disk_mask(x)
    c = (64 - 1) / 2
    g = reciprocal_lattice(LAT, 64)
    inside = [(c + gx, c + gy) for gx, gy in g if 0 <= c + gx <= 63 and 0 <= c + gy <= 63 and np.hypot(gx, gy) < 25]
    assert len(inside) >= 6
    for px, py in inside:
        assert mask[int(round(px)), int(round(py))] == 1
    assert mask[int(c), int(c)] == 0 and mask[int(c) + 1, int(c) + 1] == 0
    assert 0.05 < mask.mean() < 0.8


def test_masks_found_under_background_noise():
    from edgestem.config import NoiseConfig
    from edgestem.data.noise import apply_noise

    x = render_patterns(np.eye(2)[None], LAT, 64)
    noisy = apply_noise(np.repeat(x, 64, 0), NoiseConfig(model="background", w=0.5), np.random.default_rng(0)).mean(0)
    assert (disk_mask(noisy) * disk_mask(x[0])).sum() > 0.8 * disk_mask(x[0]).sum()


def test_intensity_fit_removes_gain_and_offset_only():
    from edgestem.model.ccstae import fit_intensity

    rng = np.random.default_rng(0)
    target = torch.tensor(rng.random((3, 1, 16, 16)), dtype=torch.float32)
    weight = torch.ones_like(target)
    pred = 0.3 * target + 2.0  # contrast and background changed, positions not
    np.testing.assert_allclose(fit_intensity(pred, target, weight).numpy(), target.numpy(), atol=1e-5)
    shifted = torch.roll(target, 2, dims=-1)  # a real misalignment is not absorbed
    assert float(((fit_intensity(shifted, target, weight) - target) ** 2).mean()) > 0.01
