"""Configuration: one pydantic model per section, YAML in, unknown keys rejected, resolved copy saved.

Every field is documented where it is declared; defaults run on a laptop. ``edgestem config``
prints the defaults as YAML.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgestem.errors import ConfigError


class Section(BaseModel):
    """Base of every config section: unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LatticeConfig(Section):
    """The crystal's reciprocal lattice as it appears on the detector (undeformed)."""

    kind: Literal["hex", "square"] = Field("hex", description="hex: six-fold (like WS2); square: four-fold (like SrTiO3 [001]).")
    spacing_px: float = Field(11.0, gt=2, description="|g| of the first-order reflections on the detector, in pixels.")
    orientation_deg: float = Field(0.0, description="Orientation of the undeformed lattice (the reference), degrees.")
    disk_radius_px: float = Field(2.5, gt=0, description="Bragg disk radius in pixels (set by the probe aperture; never strained).")
    disk_edge_px: float = Field(0.5, gt=0, description="Width of the soft disk edge (probe profile), pixels.")
    central_beam: float = Field(2.0, gt=0, description="Peak intensity of the central (000) disk relative to the brightest diffracted disk.")
    falloff_px: float = Field(22.0, gt=0, description="Diffracted intensities fall as exp(-|g|^2 / (2 falloff^2)).")
    intensity_variation: float = Field(0.0, ge=0, le=1, description="Relative amplitude of intensity variation inside disks (0 = flat disks).")


class SpecimenConfig(Section):
    """How deformation varies across the scan."""

    kind: Literal["polycrystal", "smooth", "random"] = Field(
        "polycrystal", description="polycrystal: Voronoi grains; smooth: slowly varying field; random: independent draws."
    )
    strain_max: float = Field(0.02, ge=0, lt=0.5, description="Largest |strain| component (fraction) drawn or imposed.")
    rotation_max_deg: float = Field(3.0, ge=0, description="Largest in-grain/field/random rotation, degrees.")
    n_grains: int = Field(6, ge=1, description="polycrystal: number of Voronoi grains.")
    grain_rotation_deg: float = Field(20.0, ge=0, description="polycrystal: grain orientations drawn in +- this, degrees.")
    strain_states: int = Field(4, ge=1, description="polycrystal: number of discrete strain states shared among grains.")
    boundary_px: float = Field(0.7, ge=0, description="polycrystal: Gaussian smoothing of grain boundaries, scan pixels (0 = sharp).")
    field: Literal["gradient", "bump", "sinusoid"] = Field("bump", description="smooth: shape of the strain field.")


class NoiseConfig(Section):
    """Noise models of SCIENCE.md section 4; all draws are seeded."""

    model: Literal["none", "background", "dose"] = Field(
        "none", description="background: Lorentzian background weight w + Poisson; dose: Poisson at a dose."
    )
    w: float = Field(0.0, ge=0, le=1, description="background: weight of the Lorentzian background, I = (1-w) DP + w B.")
    counts_per_probe: float = Field(1e5, gt=0, description="background: electrons per pattern for the Poisson draw.")
    background_hwhm_px: float = Field(2.0, gt=0, description="background: half width at half maximum of the Lorentzian, pixels.")
    dose: float = Field(1e4, gt=0, description="dose: electrons per pattern.")
    read_noise: float = Field(0.0, ge=0, description="Gaussian detector read noise, standard deviation in counts (after Poisson).")
    hot_pixels: float = Field(0.0, ge=0, lt=1, description="Fraction of detector pixels that are hot (fixed positions, saturated).")


class SimulateConfig(Section):
    """The built-in kinematic 4D-STEM simulator."""

    scan: tuple[int, int] = Field((32, 32), description="Scan shape (Rx, Ry).")
    size: int = Field(64, ge=8, description="Pattern size Q (patterns are Q x Q).")
    lattice: LatticeConfig = Field(default_factory=LatticeConfig)
    specimen: SpecimenConfig = Field(default_factory=SpecimenConfig)

    @field_validator("scan", mode="before")
    @classmethod
    def _square_scan(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) else v

    @field_validator("scan")
    @classmethod
    def _positive_scan(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1:
            raise ValueError("scan dimensions must be >= 1")
        return v


class PreprocessConfig(Section):
    """The one pre-processing of a pattern (crop, bin, scale, normalise), shared by every stage."""

    size: int = Field(64, ge=8, description="Model input size H = W after crop and bin.")
    crop: tuple[int, int, int, int] | None = Field(
        None, description="Explicit crop (x0, x1, y0, y1) in detector pixels; None = centred crop to a multiple of size."
    )
    bin: int | None = Field(None, ge=1, description="Binning factor; None = whatever brings the crop to size.")
    scale: Literal["linear", "sqrt", "log"] = Field("linear", description="Intensity scaling applied after binning.")
    normalize: Literal["mean", "max", "none"] = Field("mean", description="Per-pattern normalisation: mean -> 1, max -> 1, or none.")
    log_offset: float = Field(1e-3, gt=0, description="log scaling: log(x / mean + offset) - log(offset), keeps zero at zero.")

    @model_validator(mode="after")
    def _crop_order(self) -> PreprocessConfig:
        if self.crop is not None:
            x0, x1, y0, y1 = self.crop
            if not (0 <= x0 < x1 and 0 <= y0 < y1):
                raise ValueError("crop must be (x0, x1, y0, y1) with 0 <= x0 < x1 and 0 <= y0 < y1")
        return self


class Config(Section):
    """The whole edgestem configuration. Sections are added as pipeline stages land."""

    seed: int = Field(0, ge=0, description="Seed of every random draw (simulation, noise, training).")
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)


def _format_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    else:
        msg = err["msg"]
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"config error in {source}: {key}: {msg}{more}"


def _parse(data: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None


def load_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config (None = defaults), apply dotted-key overrides, validate.

    ``overrides`` maps dotted keys (``"simulate.scan"``) to values; None values are ignored, so CLI
    options that were not given leave the file's values alone.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found; pass an existing YAML file (see configs/)")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {p} is not valid YAML{where}; fix the syntax") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections (simulate:, noise:, ...)")
        data = loaded
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"config error in {source}: {part} must be a mapping")
            node = nxt
        node[parts[-1]] = value
    return _parse(data, source)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (every field, defaults included)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: Config, path: str | os.PathLike[str]) -> Path:
    """Save the resolved config atomically next to a stage's outputs."""
    from edgestem.atomic import write_text

    return write_text(path, dump_config(cfg))
