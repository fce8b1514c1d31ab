"""The cycle-consistent spatial-transforming autoencoder around the encoder (docs/science.md, "The model").

Host side only: the bounded parameter head, the dictionary of canonical patterns, the spatial
transformer (``affine_grid`` + ``grid_sample``, never on the FPGA) and the cycle-consistent loss.
The deformation convention comes from :mod:`edgestem.strain`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgestem.config import HeadConfig, LossConfig, ModelConfig
from edgestem.model.encoder import LayerFactory, build_encoder
from edgestem.strain import symmetry_period, to_grid_sample


class ParameterHead(nn.Module):
    """Bounded affine parameters from the encoder's 4 raw outputs.

    ``sx = 1 + a tanh(o0)``, ``sy = 1 + a tanh(o1)``, ``sh = b tanh(o2)``, ``rot = c tanh(o3)``
    (degrees); ``A = Rot(rot) @ [[sx, sh], [sh, sy]]``.
    """

    def __init__(self, cfg: HeadConfig, symmetry: str | None) -> None:
        super().__init__()
        self.a = cfg.scale_gain
        self.b = cfg.shear_gain
        self.c = cfg.rotation_gain_deg or symmetry_period(symmetry) / 2
        if symmetry is None and cfg.rotation_gain_deg is None:
            self.c = 30.0  # no symmetry known: +-30 deg, the hex half-period, is a safe range

    def params(self, o: torch.Tensor) -> dict[str, torch.Tensor]:
        t = torch.tanh(o)
        return {
            "sx": 1 + self.a * t[:, 0],
            "sy": 1 + self.a * t[:, 1],
            "sh": self.b * t[:, 2],
            "rot": self.c * t[:, 3],
        }

    def raw_from_params(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`params` (targets for supervised pre-training); clipped inside the bounds."""
        lim = 1 - 1e-6
        return torch.stack(
            [
                torch.atanh(((p["sx"] - 1) / self.a).clamp(-lim, lim)),
                torch.atanh(((p["sy"] - 1) / self.a).clamp(-lim, lim)),
                torch.atanh((p["sh"] / self.b).clamp(-lim, lim)),
                torch.atanh((p["rot"] / self.c).clamp(-lim, lim)),
            ],
            dim=1,
        )

    def forward(self, o: torch.Tensor) -> torch.Tensor:
        p = self.params(o)
        return affine_from_params(p["sx"], p["sy"], p["sh"], p["rot"])


def affine_from_params(sx: torch.Tensor, sy: torch.Tensor, sh: torch.Tensor, rot_deg: torch.Tensor) -> torch.Tensor:
    """Torch twin of :func:`edgestem.strain.affine_from_params` (tested equal): ``(N, 2, 2)``."""
    r = rot_deg * (math.pi / 180)
    c, s = torch.cos(r), torch.sin(r)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    sym = torch.stack([torch.stack([sx, sh], -1), torch.stack([sh, sy], -1)], -2)
    return rot @ sym


def warp(img: torch.Tensor, A: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``img`` (N, C, H, W) at ``A k`` about the pattern centre (see :mod:`edgestem.strain`).

    Warping a deformed pattern by its ``A`` gives back the undeformed one.
    """
    n = img.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=img.dtype, device=img.device)
    theta[:, :, :2] = to_grid_sample(A.to(img.dtype))
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    return F.grid_sample(img, grid, mode=mode, padding_mode="zeros", align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) images (identity for sigma = 0), zero padding."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)
    return F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)


def fit_intensity(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``a * pred + b`` with the per-pattern gain and offset that best match ``target`` under ``weight``.

    Closed-form weighted least squares per pattern (differentiable). Makes the cycle loss blind to
    what the affine map cannot explain: disk contrast falls as (1 - w) under the background-noise
    model and the background adds an offset, so without it one dictionary cannot serve patterns of
    several noise levels and the mismatch leaks into the scale parameters.
    """
    dims = (1, 2, 3)
    wsum = weight.sum(dim=dims, keepdim=True).clamp_min(1e-12)
    mp = (weight * pred).sum(dim=dims, keepdim=True) / wsum
    mt = (weight * target).sum(dim=dims, keepdim=True) / wsum
    cov = (weight * (pred - mp) * (target - mt)).sum(dim=dims, keepdim=True)
    var = (weight * (pred - mp) ** 2).sum(dim=dims, keepdim=True).clamp_min(1e-12)
    a = cov / var
    return a * (pred - mp) + mt


def disk_mask(mean_pattern: np.ndarray, margin_px: float = 1.5, exclude_center: bool = True) -> np.ndarray:
    """Mask of the Bragg disks, found from the data's mean pattern (no hand-typed coordinates).

    The smooth background (e.g. the Lorentzian of the background-noise model) is removed with a
    morphological white top-hat; pixels above a fraction of the brightest diffracted disk are
    kept, dilated by ``margin_px`` to cover the disks' spread under strain; the central beam
    (the connected blob at the pattern centre) is excluded: it does not move with strain.
    Returns a float32 ``(H, W)`` array of 0/1.
    """
    from scipy import ndimage

    m = np.asarray(mean_pattern, dtype=np.float64)
    h, w = m.shape
    m = ndimage.gaussian_filter(m, 0.7)
    # Background: grey opening with a footprint wider than a disk.
    footprint = _disk_footprint(max(3.0, min(h, w) / 10))
    tophat = m - ndimage.grey_opening(m, footprint=footprint)
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
    # The central beam: the above-half-maximum blob containing the centre.
    labels, _ = ndimage.label(tophat > 0.5 * tophat[r <= 2].max())
    central_ids = set(np.unique(labels[r <= 1.5])) - {0}
    central = np.isin(labels, list(central_ids))
    outside = tophat[~ndimage.binary_dilation(central, iterations=2)]
    peak = outside.max() if outside.size else 0.0
    if peak <= 0:
        raise ValueError("no diffracted disks found in the mean pattern")
    mask = tophat > 0.15 * peak
    mask = ndimage.binary_dilation(mask, structure=_disk_footprint(margin_px)) if margin_px > 0 else mask
    if exclude_center:
        mask &= ~ndimage.binary_dilation(central, structure=_disk_footprint(margin_px + 0.5))
    return mask.astype(np.float32)


def _disk_footprint(radius: float) -> np.ndarray:
    r = int(math.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy**2 + xx**2) <= radius**2 + 1e-9


@dataclass
class Output:
    """Everything one forward pass produces."""

    raw: torch.Tensor  # (N, 4) encoder outputs
    A: torch.Tensor  # (N, 2, 2) affine maps
    aligned: torch.Tensor  # warp(x, A): should match the dictionary
    recon: torch.Tensor  # warp(D, A^-1): should match x
    assignment: torch.Tensor  # (N,) index of the dictionary pattern used
    target: torch.Tensor  # the (smoothed) input the loss compares with


class CCSTAE(nn.Module):
    """Encoder + bounded head + dictionary + spatial transformer, with the cycle-consistent loss."""

    def __init__(
        self,
        cfg: ModelConfig,
        size: int,
        symmetry: str | None,
        init_patterns: np.ndarray,
        mask: np.ndarray,
        layers: LayerFactory | None = None,
        smooth_px: float = 0.0,
    ) -> None:
        super().__init__()
        self.size = size
        self.smooth_px = smooth_px
        self.symmetry = symmetry
        self.encoder = build_encoder(cfg.encoder, size, layers)
        self.head = ParameterHead(cfg.head, symmetry)
        self.mode = cfg.interpolation
        init = np.asarray(init_patterns, dtype=np.float32).reshape(-1, 1, size, size)
        if init.shape[0] != cfg.dictionaries:
            raise ValueError(f"{init.shape[0]} initial dictionary patterns for {cfg.dictionaries} dictionaries")
        self.dictionary = nn.Parameter(torch.from_numpy(init.copy()))
        self.register_buffer("mask", torch.from_numpy(np.asarray(mask, dtype=np.float32)).reshape(1, 1, size, size))

    def dict_patterns(self) -> torch.Tensor:
        """The non-negative dictionary (K, 1, H, W)."""
        return self.dictionary.clamp_min(0)

    def affine(self, x: torch.Tensor) -> torch.Tensor:
        """Affine maps (N, 2, 2) of a batch of pre-processed patterns (N, 1, H, W)."""
        return self.head(self.encoder(x))

    def forward(self, x: torch.Tensor) -> Output:
        raw = self.encoder(x)
        A = self.head(raw)
        target = gaussian_blur(x, self.smooth_px)
        aligned = warp(target, A, self.mode)
        D = self.dict_patterns()
        if D.shape[0] == 1:
            k = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        else:
            # Host-side assignment: the dictionary pattern the aligned pattern matches best.
            err = ((aligned[:, None] - D[None]) ** 2 * self.mask).sum(dim=(2, 3, 4))
            k = err.argmin(dim=1)
        recon = warp(D[k], torch.linalg.inv(A), self.mode)
        return Output(raw, A, aligned, recon, k, target)

    def loss(self, x: torch.Tensor, out: Output, cfg: LossConfig) -> dict[str, torch.Tensor]:
        """Masked MSE forward + backward (1:1), scale/shear penalties beyond their free range, L1 on D."""
        m = self.mask
        norm = m.sum() * x.shape[0]
        D = self.dict_patterns()[out.assignment]
        # Only pixels whose source lies inside the detector: a rotated pattern's corners sample
        # outside it (zeros), which would bias the rotation depending on the grain's orientation.
        inside = warp(torch.ones_like(x[:, :1]), out.A, "bilinear").detach() > 0.999
        m_fwd = m * inside
        aligned = fit_intensity(out.aligned, D, m_fwd) if cfg.intensity_fit else out.aligned
        fwd = (((aligned - D) ** 2) * m_fwd).sum() / norm
        # The backward term compares in x's frame: the mask there is the warped mask.
        # Clamped: bicubic overshoot would make mask weights negative, which the optimiser exploits.
        m_back = warp(m.expand(x.shape[0], -1, -1, -1), torch.linalg.inv(out.A), self.mode).clamp(0, 1).detach()
        x = out.target
        recon = fit_intensity(out.recon, x, m_back) if cfg.intensity_fit else out.recon
        if cfg.backward == "poisson":
            rate = recon.clamp_min(1e-6)
            bwd = ((rate - x * torch.log(rate)) * m_back).sum() / norm
        else:
            bwd = (((recon - x) ** 2) * m_back).sum() / norm
        p = self.head.params(out.raw)
        pen = (
            F.relu((p["sx"] - 1).abs() - cfg.scale_free).pow(2).mean()
            + F.relu((p["sy"] - 1).abs() - cfg.scale_free).pow(2).mean()
            + F.relu(p["sh"].abs() - cfg.shear_free).pow(2).mean()
        )
        l1 = D.abs().mean()
        total = cfg.forward_weight * fwd + cfg.backward_weight * bwd + cfg.penalty_weight * pen + cfg.l1_weight * l1
        return {"total": total, "forward": fwd, "backward": bwd, "penalty": pen, "l1": l1}


PARAMS = ("sx", "sy", "sh", "rot")


def target_params(A: np.ndarray) -> np.ndarray:
    """Head parameters ``(sx, sy, sh, rot)`` (N, 4) of affine maps (N, 2, 2): regression targets."""
    from edgestem.strain import params_from_affine

    p = params_from_affine(np.asarray(A, dtype=np.float64).reshape(-1, 2, 2))
    return np.stack([p[k] for k in PARAMS], axis=1)


def regression_scale(unit: float) -> np.ndarray:
    """Scale of each head parameter's residual in the regression: ``unit`` for sx, sy, sh (a fraction)
    and the same angle for rot (``unit`` radians, in degrees), so every component is weighed in the
    same physical unit (1e-3: 0.1 % strain, 0.057 deg)."""
    return np.array([unit, unit, unit, np.rad2deg(unit)])


def param_regression(
    head: ParameterHead, raw: torch.Tensor, target: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Weighted mean squared error of the head parameters against targets (N, 4), each parameter
    divided by its ``scale`` (:func:`regression_scale`)."""
    p = head.params(raw)
    pred = torch.stack([p[k] for k in PARAMS], dim=1)
    err = ((pred - target) / scale).pow(2).mean(dim=1)
    return (err * weight).sum() / weight.sum().clamp_min(1.0)
