"""Configuration: one pydantic model per section, YAML in, unknown keys rejected, resolved copy saved.

Every field is documented where it is declared; defaults run on a laptop. ``edgestem config``
prints the defaults as YAML.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgestem.errors import ConfigError
from edgestem.registry import EMULATORS, FIRMWARE, Registry


def _allows_bool(ann: Any) -> bool:
    import typing

    return ann is bool or ann is Any or any(_allows_bool(a) for a in typing.get_args(ann))


class Section(BaseModel):
    """Base of every config section: unknown keys, wrong types, inf and NaN are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads `epochs: true` as 1; a yes/no where a number belongs is a mistake
        if isinstance(v, bool) and info.field_name is not None:
            ann = cls.model_fields[info.field_name].annotation
            if not _allows_bool(ann):
                raise ValueError(f"expected {_type_name(ann).replace('`', '')}, got {str(v).lower()}")
        return v


class LatticeConfig(Section):
    """The crystal's reciprocal lattice as it appears on the detector (undeformed)."""

    kind: Literal["hex", "square"] = Field(
        "hex", description="hex: six-fold (like WS2); square: four-fold (like SrTiO3 [001])."
    )
    spacing_px: float = Field(11.0, gt=2, description="|g| of the first-order reflections on the detector, in pixels.")
    orientation_deg: float = Field(0.0, description="Orientation of the undeformed lattice (the reference), degrees.")
    disk_radius_px: float = Field(
        2.5, gt=0, description="Bragg disk radius in pixels (set by the probe aperture; never strained)."
    )
    disk_edge_px: float = Field(0.5, gt=0, description="Width of the soft disk edge (probe profile), pixels.")
    central_beam: float = Field(
        2.0,
        gt=0,
        description="Peak intensity of the central (000) disk relative to the brightest diffracted disk.",
    )
    falloff_px: float = Field(22.0, gt=0, description="Diffracted intensities fall as exp(-|g|^2 / (2 falloff^2)).")
    intensity_variation: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Relative amplitude of intensity variation inside disks (0 = flat disks).",
    )


class SpecimenConfig(Section):
    """How deformation varies across the scan."""

    kind: Literal["polycrystal", "smooth", "random"] = Field(
        "polycrystal",
        description="polycrystal: Voronoi grains; smooth: slowly varying field; random: independent draws.",
    )
    strain_max: float = Field(0.02, ge=0, lt=0.5, description="Largest |strain| component (fraction) drawn or imposed.")
    rotation_max_deg: float = Field(3.0, ge=0, description="Largest in-grain/field/random rotation, degrees.")
    n_grains: int = Field(6, ge=1, description="polycrystal: number of Voronoi grains.")
    grain_rotation_deg: float = Field(
        20.0, ge=0, description="polycrystal: grain orientations drawn in +- this, degrees."
    )
    strain_states: int = Field(
        4, ge=1, description="polycrystal: number of discrete strain states shared among grains."
    )
    boundary_px: float = Field(
        0.7, ge=0, description="polycrystal: Gaussian smoothing of grain boundaries, scan pixels (0 = sharp)."
    )
    field: Literal["gradient", "bump", "sinusoid"] = Field("bump", description="smooth: shape of the strain field.")


class NoiseConfig(Section):
    """Noise models (docs/science.md, "Noise models"); all draws are seeded."""

    model: Literal["none", "background", "dose"] = Field(
        "none", description="background: Lorentzian background weight w + Poisson; dose: Poisson at a dose."
    )
    w: float = Field(
        0.0, ge=0, le=1, description="background: weight of the Lorentzian background, I = (1-w) DP + w B."
    )
    counts_per_probe: float = Field(
        1e5, gt=0, le=1e15, description="background: electrons per pattern for the Poisson draw."
    )
    background_hwhm_px: float = Field(
        2.0, gt=0, description="background: half width at half maximum of the Lorentzian, pixels."
    )
    dose: float = Field(1e4, gt=0, le=1e15, description="dose: electrons per pattern.")
    read_noise: float = Field(
        0.0, ge=0, description="Gaussian detector read noise, standard deviation in counts (after Poisson)."
    )
    hot_pixels: float = Field(
        0.0, ge=0, lt=1, description="Fraction of detector pixels that are hot (fixed positions, saturated)."
    )


class MultisliceConfig(Section):
    """The abTEM multislice engine (``simulate.engine: abtem``; needs ``pip install 'edgestem[physics]'``)."""

    crystal: str = Field(
        "Si", description="Preset (Si, GaN, Au) or a structure file read by ase (CIF, ...), one unit cell."
    )
    zone_axis: tuple[int, int, int] | None = Field(
        None,
        description="Zone axis [uvw] in the cell's vectors (hexagonal [0001] = [0, 0, 1]); None = the preset's "
        "(Si [001], GaN [0001], Au [111]; [001] for a file).",
    )
    thickness_nm: float | tuple[float, float] = Field(
        20.0,
        description="Specimen thickness, nm: one value, or [min, max] for a linear ramp across the scan "
        "(seeded direction); rounded to whole repeats of the crystal along the zone axis.",
    )
    energy_kev: float = Field(200.0, gt=0, description="Beam energy, keV.")
    semiangle_mrad: float = Field(3.0, gt=0, description="Probe convergence semi-angle, mrad (sets the disk radius).")
    reciprocal_pixel: float = Field(
        0.025,
        gt=0,
        description="Detector pixel in reciprocal space, 1/Angstrom; the periodic box is 1 / reciprocal_pixel wide.",
    )
    gpts: int | None = Field(
        None,
        ge=8,
        description="Real-space grid of the box (None = the smallest even >= 1.5 x size + 3, so the "
        "antialiasing aperture reaches the detector edge).",
    )
    slices_per_repeat: int = Field(
        2, ge=1, description="Multislice slices per repeat of the crystal along the zone axis."
    )
    frozen_phonons: int = Field(4, ge=0, description="Frozen-phonon configurations averaged per pattern (0 = static).")
    phonon_pool: int = Field(4, ge=1, description="Displaced repeats drawn per configuration (abTEM CrystalPotential).")
    phonon_sigma: float | None = Field(
        None,
        ge=0,
        description="RMS thermal displacement per direction, Angstrom (None = the preset's, 0.08 for a file).",
    )
    phonon_seed: int | None = Field(None, description="Seed of the phonons and probe offsets (None = the config seed).")
    jitter: bool = Field(
        True, description="Shift the crystal by a random fraction of a cell per position (probe lands anywhere)."
    )
    mantissa_bits: int = Field(
        23, ge=1, le=23, description="float32 mantissa bits kept in the stored patterns (fewer compress better)."
    )
    quantum_log2: int | None = Field(
        None,
        le=0,
        description="Also round stored values to multiples of 2**quantum_log2 where that is coarser than the "
        "mantissa (an absolute step for dim pixels; patterns sum to 1); None = off.",
    )
    gzip: int | None = Field(None, ge=0, le=9, description="gzip level of /data (with shuffle); None = uncompressed.")

    @field_validator("thickness_nm")
    @classmethod
    def _thickness(cls, v: Any) -> Any:
        values = (v,) if isinstance(v, int | float) else tuple(v)
        if min(values) <= 0 or (len(values) == 2 and values[0] > values[1]):
            raise ValueError("thickness_nm must be > 0, and a range must be [min, max]")
        return v


class SimulateConfig(Section):
    """The 4D-STEM simulator: built-in kinematic disks, or abTEM multislice."""

    engine: Literal["kinematic", "abtem"] = Field(
        "kinematic", description="kinematic: disks of one shape (fast); abtem: multislice (the physics extra)."
    )
    scan: tuple[int, int] = Field((32, 32), description="Scan shape (Rx, Ry).")
    size: int = Field(64, ge=8, description="Pattern size Q (patterns are Q x Q).")
    lattice: LatticeConfig = Field(default_factory=LatticeConfig)
    specimen: SpecimenConfig = Field(default_factory=SpecimenConfig)
    multislice: MultisliceConfig = Field(default_factory=MultisliceConfig)

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
        None,
        description="Explicit crop (x0, x1, y0, y1) in detector pixels; None = centred crop to a multiple of size.",
    )
    bin: int | None = Field(None, ge=1, description="Binning factor; None = whatever brings the crop to size.")
    scale: Literal["linear", "sqrt", "log"] = Field("linear", description="Intensity scaling applied after binning.")
    normalize: Literal["mean", "max", "none"] = Field(
        "mean", description="Per-pattern normalisation: mean -> 1, max -> 1, or none."
    )
    log_offset: float = Field(
        1e-3, gt=0, description="log scaling: log(x / mean + offset) - log(offset), keeps zero at zero."
    )
    background: Literal["none", "radial"] = Field(
        "none",
        description="radial: subtract each pattern's radial background (a low percentile of every 1-px ring about "
        "the centre) before scaling, so the Lorentzian background and the (1 - w) contrast drop out.",
    )
    background_percentile: float = Field(
        30.0, ge=0, le=100, description="radial: percentile of a ring taken as its background (disks cover < half)."
    )

    @model_validator(mode="after")
    def _crop_order(self) -> PreprocessConfig:
        if self.crop is not None:
            x0, x1, y0, y1 = self.crop
            if not (0 <= x0 < x1 and 0 <= y0 < y1):
                raise ValueError("crop must be (x0, x1, y0, y1) with 0 <= x0 < x1 and 0 <= y0 < y1")
        return self


class EncoderConfig(Section):
    """The FPGA-shaped encoder: blocks of Conv3x3-BN-ReLU-MaxPool2, then Linear-ReLU-Linear."""

    channels: list[int] = Field([8, 16, 32, 32], min_length=1, description="Output channels of each conv block.")
    kernel: int = Field(3, ge=1, description="Conv kernel size (odd; 'same' padding).")
    batchnorm: bool = Field(True, description="BatchNorm after each conv (folded before quantized export).")
    hidden: int = Field(32, ge=1, description="Width of the hidden Linear layer (0 = none).")

    @field_validator("kernel")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("kernel must be odd")
        return v


class HeadConfig(Section):
    """Host-side bounded head: sx = 1 + a tanh(o), sy = 1 + a tanh(o), sh = b tanh(o), rot = c tanh(o)."""

    scale_gain: float = Field(0.05, gt=0, lt=1, description="a: largest |sx - 1|, |sy - 1|.")
    shear_gain: float = Field(0.1, gt=0, lt=1, description="b: largest |sh|.")
    rotation_gain_deg: float | None = Field(
        None, gt=0, description="c: largest |rot| in degrees; None = half the lattice's symmetry angle."
    )


class ModelConfig(Section):
    """The CC-ST-AE: encoder (on the FPGA), bounded head, dictionary and spatial transformer (host)."""

    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    symmetry: Literal["auto", "hex", "square", "none"] = Field(
        "auto",
        description="Lattice symmetry for rotation wrapping; auto = from the data file's attributes, else none.",
    )
    dictionaries: int = Field(1, ge=1, description="K canonical patterns (K > 1: multi-phase data).")
    interpolation: Literal["bilinear", "bicubic"] = Field("bilinear", description="Spatial-transformer interpolation.")


class LossConfig(Section):
    """Cycle-consistent loss: masked forward + backward terms, penalties, dictionary L1."""

    forward_weight: float = Field(
        1.0, ge=0, description="Weight of the forward term |warp(x, A) - D|^2 on the disk mask."
    )
    backward_weight: float = Field(
        1.0, ge=0, description="Weight of the backward term |warp(D, A^-1) - x|^2 on the mask."
    )
    backward: Literal["mse", "poisson"] = Field(
        "mse", description="Backward term: masked MSE or Poisson negative log-likelihood."
    )
    penalty_weight: float = Field(
        100.0, ge=0, description="Weight of the penalty on |s - 1| and |sh| beyond their free range."
    )
    scale_free: float = Field(0.03, ge=0, description="|sx - 1|, |sy - 1| up to this are free of penalty.")
    shear_free: float = Field(0.03, ge=0, description="|sh| up to this is free of penalty.")
    l1_weight: float = Field(1e-6, ge=0, description="L1 weight on the dictionary (mean absolute value).")
    mask_margin_px: float = Field(1.5, ge=0, description="Dilation of the automatic disk mask, pixels.")
    intensity_fit: bool = Field(
        False,
        description="Fit a per-pattern gain and offset before comparing. Off: on a w = 0.25 polycrystal it "
        "shrank exx (MAE 0.23 % vs 0.10 %, slope 0.57); meant for one model over several noise levels.",
    )
    smooth_px: float = Field(
        0.0, ge=0, description="Gaussian sigma (px) applied to the patterns the loss compares (not the encoder input)."
    )


class AugmentConfig(Section):
    """Noise added on the fly to clean training patterns; a level is drawn per batch."""

    model: Literal["none", "background", "dose"] = Field("none", description="Noise model of the augmentation.")
    levels: list[float] = Field([0.0], min_length=1, description="background: w values; dose: electrons per pattern.")
    counts_per_probe: float = Field(1e5, gt=0, description="background: electrons per pattern of the Poisson draw.")


class TrainConfig(Section):
    """The one training loop (float, QAT and fine-tuning after pruning)."""

    epochs: int = Field(30, ge=1, description="Passes over the training patterns.")
    steps: int | None = Field(
        None,
        ge=1,
        description="Training length in optimisation steps; set, it replaces epochs (epochs = steps / batches per "
        "epoch, rounded up), so a 1,024-pattern scan trains as long as a 16,384-pattern one.",
    )
    batch_size: int = Field(64, ge=1, description="Patterns per optimisation step.")
    lr: float = Field(3e-4, gt=0, description="Adam learning rate (1e-3 collapsed at w = 0.5 in the prototype).")
    dictionary_lr: float = Field(
        1e-2,
        gt=0,
        description="Learning rate of the dictionary pixels (O(1-10) values: at lr 3e-4 a polycrystal's loss "
        "still fell linearly after 30 epochs; 1e-2 converged by epoch 10).",
    )
    weight_decay: float = Field(
        0.0,
        ge=0,
        description="L2 regularisation of the encoder weights (Adam weight decay; also used by qat and prune).",
    )
    l1_weight: float = Field(
        0.0, ge=0, description="L1 regularisation of the encoder weights (sum |w|, scaled; also used by qat and prune)."
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="constant, or cosine: a linear warm-up over the first 5 % of the steps, then the learning rate "
        "falls to 0 along a half cosine.",
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Fraction of patterns held out for the validation loss.")
    threads: int | None = Field(None, ge=1, description="torch threads; None = the CPU cores available.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class QatConfig(Section):
    """Quantization-aware training (``edgestem qat``): bit widths of the Brevitas encoder.

    Power-of-two (fixed-point) scales everywhere: the only choice that exports bit-exactly to
    hls4ml and FINN (see docs/quantization.md).
    """

    bits: int = Field(6, ge=2, le=16, description="Weights and ReLU activations, bits (the headline number).")
    input_bits: int = Field(8, ge=2, le=16, description="Unsigned input quantizer in front of conv1, bits.")
    output_bits: int = Field(16, ge=2, le=24, description="Signed quantizer on the 4 encoder outputs, bits.")
    bias_bits: int = Field(16, ge=4, le=32, description="Biases, bits (scale = input scale x weight scale).")
    per_layer: dict[str, int] = Field(
        default_factory=dict,
        description="Bit widths by layer name (conv1, relu1, fc1, relu_fc1, fc2, input, output); override bits.",
    )
    epochs: int = Field(10, ge=1, description="QAT epochs (fine-tuning from the float weights).")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate of QAT.")
    calibration_patterns: int = Field(
        512, ge=1, description="Training patterns used to calibrate the activation scales before training."
    )
    teacher: Literal["none", "float"] = Field(
        "none",
        description="float: the quantized encoder also regresses the float encoder's head parameters (knowledge "
        "distillation from the float model, scaled as in distill, cycle loss weighted by distill.cycle_weight).",
    )


class DistillConfig(Section):
    """Distillation on the user's own scan (``edgestem distill``): no ground-truth label is used.

    A slow estimator that needs no labels (the teacher) maps the training scan; the encoder is then
    fine-tuned to regress the teacher's affine maps, with the cycle-consistent loss kept as a
    regulariser. The encoder's architecture is unchanged, so QAT, export and firmware take it as is.
    """

    teacher: Literal["refine", "classical"] = Field(
        "refine",
        description="refine: per-pattern Poisson likelihood refinement started from the encoder; classical: the "
        "Bragg-disk fit (edgestem baseline).",
    )
    epochs: int = Field(30, ge=1, description="Fine-tuning epochs per round.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the fine-tuning (falls along a half cosine).")
    cycle_weight: float = Field(
        0.1,
        ge=0,
        description="Weight of the cycle-consistent loss (in units of the source model's own cycle loss) next to the "
        "regression term (0 = regression only).",
    )
    unit: float = Field(
        1e-3,
        gt=0,
        description="Regression residuals of the head parameters are measured in this unit (1e-3 = 0.1 % strain; "
        "rotation: the same in radians, 0.057 deg).",
    )
    rounds: int = Field(
        1, ge=1, description="Teacher -> fine-tune rounds; each later round starts the teacher from the last encoder."
    )
    refine_steps: int = Field(12, ge=1, description="refine teacher: Fisher-scoring steps per pattern.")


class PruneConfig(Section):
    """Magnitude pruning (``edgestem prune``) with fine-tuning through the training loop."""

    sparsity: float = Field(0.5, ge=0, lt=1, description="Target fraction of zero weights (or removed channels).")
    structured: bool = Field(False, description="Remove whole conv channels (the layers really shrink).")
    steps: int = Field(3, ge=1, description="Iterative schedule: the target is reached in this many equal steps.")
    epochs: int = Field(6, ge=1, description="Fine-tuning epochs in all (spread evenly over the steps).")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate of the fine-tuning.")
    layers: list[str] | None = Field(
        None, description="Layers to prune (conv1, fc1, ...); None = every conv and linear but the last."
    )


class RobustnessConfig(Section):
    """Train-noise x test-noise grid (``edgestem robustness``, docs/robustness.md)."""

    axis: Literal["background", "dose"] = Field(
        "background", description="Noise axis: background weight w (Poisson at counts_per_probe) or dose (e-/pattern)."
    )
    train_levels: list[float] = Field(
        [0.0, 0.1, 0.25, 0.5], description="One grid row per level: fresh noise at it on every training batch."
    )
    mixed: list[float] = Field(
        [0.0, 0.1, 0.25, 0.5], description="Levels of the mixed-noise row (one drawn per batch); [] = no mixed row."
    )
    test_levels: list[float] = Field(
        [0.0, 0.1, 0.25, 0.5], min_length=1, description="One grid column per level: a seeded noise draw of the scan."
    )
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Training seeds of every row (error bars).")
    counts_per_probe: float = Field(1e5, gt=0, description="background axis: electrons per pattern (Poisson draw).")
    test_scan_seed: int | None = Field(
        None,
        description="None: test on the training scan with independent noise draws (a user maps the data the model "
        "was fitted to); an int: simulate a separate test specimen with this seed.",
    )
    reference: str | None = Field(None, description="Reference region 'x0:x1,y0:y1' of the strain maps; None = all.")

    @model_validator(mode="after")
    def _some_row(self) -> RobustnessConfig:
        if not self.train_levels and not self.mixed:
            raise ValueError("give train_levels or mixed levels: the grid needs at least one training row")
        return self


class SearchParam(Section):
    """One dimension of a sweep's search space."""

    type: Literal["float", "int", "categorical"] = Field("float", description="Optuna distribution.")
    low: float | None = Field(None, description="float/int: lower bound.")
    high: float | None = Field(None, description="float/int: upper bound.")
    log: bool = Field(False, description="float/int: sample on a log scale.")
    choices: list[Any] | None = Field(None, description="categorical: the values (lists allowed, e.g. channels).")

    @model_validator(mode="after")
    def _complete(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs choices")
        elif self.low is None or self.high is None or not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError("a float/int parameter needs low < high (low > 0 with log)")
        return self


def _default_space() -> dict[str, SearchParam]:
    return {
        "train.lr": SearchParam(type="float", low=1e-4, high=2e-3, log=True),
        "train.batch_size": SearchParam(type="categorical", choices=[32, 64, 128]),
        "seed": SearchParam(type="int", low=0, high=99),
        "train.weight_decay": SearchParam(type="float", low=1e-7, high=1e-3, log=True),
        "train.l1_weight": SearchParam(type="float", low=1e-9, high=1e-5, log=True),
        "encoder_width": SearchParam(type="categorical", choices=[0.5, 1.0, 2.0]),
        "encoder_depth": SearchParam(type="int", low=3, high=4),
    }


class SweepConfig(Section):
    """Optuna hyper-parameter search (``edgestem sweep``) on the robustness study's data and noise axis."""

    study_name: str = Field("edgestem-sweep", description="Optuna study name; workers with the same name share it.")
    space: dict[str, SearchParam] = Field(
        default_factory=_default_space,
        description="Search space: dotted config key (or encoder_width, a factor on model.encoder.channels, and "
        "encoder_depth, the number of conv blocks) -> {type, low, high, log, choices}.",
    )
    test_level: float = Field(0.25, ge=0, description="Objective: strain MAE at this test noise (robustness.axis).")
    train_levels: list[float] | None = Field(
        None, description="Training noise levels (one drawn per batch); None = [test_level]."
    )
    metric: Literal["strain", "exx", "eyy", "exy", "theta"] = Field(
        "strain", description="Objective: strain = mean MAE of exx, eyy, exy (%); or one component."
    )
    pruner: Literal["median", "none"] = Field("median", description="Stop trials worse than the median at an epoch.")
    pruner_startup_trials: int = Field(4, ge=0, description="Median pruner: complete trials before pruning starts.")
    pruner_warmup_epochs: int = Field(2, ge=0, description="Median pruner: epochs of a trial before it can be pruned.")


def _registered(registry: Registry, names: list[str]) -> list[str]:
    """Every name must be in ``registry`` (a ValueError, so the error names the config key)."""
    for name in names:
        if name not in registry:
            raise ValueError(registry.unknown(name))
    return names


class PipelineConfig(Section):
    """``edgestem run``: which optional steps run, firmware settings, the report's noise levels."""

    distill: bool = Field(
        False, description="Run the distill step after train (QAT then starts from the distilled encoder)."
    )
    prune: bool = Field(False, description="Run the prune step (on the QAT model) before export.")
    export: bool = Field(True, description="Export the quantized encoder to QONNX (needed by firmware).")
    firmware: list[str] = Field(["hls4ml"], description=f"Firmware backends to build: {FIRMWARE.choices()}.")
    board: str = Field("zcu104", description="Board preset (configs/boards) or an FPGA part number.")
    clock_ns: float | None = Field(None, gt=0, description="Target clock period, ns; None = the board's.")
    io: Literal["stream", "parallel"] = Field("stream", description="hls4ml io_type (io_stream fits 64 x 64 inputs).")
    reuse: int = Field(1, ge=1, description="hls4ml reuse factor.")
    strategy: Literal["latency", "resource"] = Field("latency", description="hls4ml strategy.")
    emulate: list[str] = Field(
        ["hls4ml"],
        description=f"Backends the emulate step runs with --check on the training data: {EMULATORS.choices()}.",
    )
    report_noise_w: list[float] = Field(
        [0.0, 0.1, 0.25, 0.5, 0.7], description="Background levels of the degradation report."
    )
    report_dose: list[float] = Field([], description="Doses (e-/pattern) of the degradation report.")
    check_patterns: int = Field(64, ge=1, description="Patterns per level run through each emulated stage.")
    baseline: bool = Field(True, description="Classical baseline in the report.")

    @field_validator("firmware")
    @classmethod
    def _known_firmware(cls, names: list[str]) -> list[str]:
        return _registered(FIRMWARE, names)

    @field_validator("emulate")
    @classmethod
    def _known_emulators(cls, names: list[str]) -> list[str]:
        return _registered(EMULATORS, names)


class Config(Section):
    """The whole edgestem configuration. Sections are added as pipeline stages land."""

    seed: int = Field(0, ge=0, description="Seed of every random draw (simulation, noise, training).")
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    qat: QatConfig = Field(default_factory=QatConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    robustness: RobustnessConfig = Field(default_factory=RobustnessConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)


def _format_error(exc: ValidationError, source: str, overrides: dict[str, Any] | None = None) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    else:
        msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if key in given:  # a command-line option, not the file (nor the defaults)
        return f"option value {key} = {given[key]!r}: {msg}{more}"
    return f"config error in {source}: {key}: {msg}{more}"


def _parse(data: dict[str, Any], source: str, overrides: dict[str, Any] | None = None) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source, overrides)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def config_diff(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ, as ``"key a -> b"`` (for resume notes)."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict) and v:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    fa, fb = flat(a.model_dump(mode="json")), flat(b.model_dump(mode="json"))
    keys = sorted(set(fa) | set(fb))
    return [f"{k} {fb.get(k)!r} (the run's: {fa.get(k)!r})" for k in keys if fa.get(k) != fb.get(k)]


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
            loaded = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (safe loader)
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {p} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML") from None
        except ConfigError as exc:
            raise ConfigError(f"config file {p}, {exc}; keep one") from None
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
    return _parse(data, source, overrides)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (every field, defaults included)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: Config, path: str | os.PathLike[str]) -> Path:
    """Save the resolved config atomically next to a stage's outputs."""
    from edgestem.atomic import write_text

    return write_text(path, dump_config(cfg))


def _type_name(ann: Any) -> str:
    """Readable type for the reference: Literal -> its choices, tuples -> [a, b], X | None."""
    import types
    import typing

    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is tuple:
        return "`[" + ", ".join(getattr(a, "__name__", str(a)) for a in args) + "]`"
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(parts) + (" \\| `null`" if type(None) in args else "")
    return f"`{getattr(ann, '__name__', str(ann))}`"


def reference_markdown() -> str:
    """Markdown table of every config key, type, default and description (docs/config.md is this)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `edgestem/config.py` by `edgestem config --markdown`; a test keeps it current.",
        "YAML sections below; unknown keys are errors. CLI options override the file.",
        "",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        rows, subs = [], []
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                subs.append((ann, f"{prefix}{name}."))
                continue
            default = f.get_default(call_default_factory=True)
            default = list(default) if isinstance(default, tuple) else default
            desc = (f.description or "").replace("|", "\\|")
            rows.append(f"| `{prefix}{name}` | {_type_name(ann)} | `{default!r}` | {desc} |")
        if rows:
            title = prefix.rstrip(".") or "(top level)"
            lines.extend(
                [
                    f"## `{title}`",
                    "",
                    (model.__doc__ or "").strip().splitlines()[0],
                    "",
                    "| key | type | default | meaning |",
                    "|---|---|---|---|",
                    *rows,
                    "",
                ]
            )
        for sub, p in subs:
            walk(sub, p)

    walk(Config, "")
    return "\n".join(lines)
