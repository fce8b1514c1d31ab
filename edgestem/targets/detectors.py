"""Fast 4D-STEM detectors and their frame rates (``edgestem/presets/detectors.yaml``), or a rate in Hz."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgestem.errors import ConfigError
from edgestem.targets.presets import PRESETS, load_yaml, validation_message

DETECTORS = PRESETS / "detectors.yaml"
_RATE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmg]?)(?:hz)?\s*$", re.IGNORECASE)
_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


class Detector(BaseModel):
    """A detector's pattern rate and where the number comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Key in detectors.yaml, or the rate as given.")
    description: str = Field("", description="What the detector is.")
    frame_rate_hz: float = Field(gt=0, description="Patterns per second the encoder must take.")
    pattern: tuple[int, int] | None = Field(None, description="Pattern size in pixels (rows, columns).")
    mode: str = Field("", description="Readout mode the rate belongs to.")
    kind: Literal["frame", "event"] = Field("frame", description="Frame-based or event-driven readout.")
    certainty: Literal["paper", "vendor", "estimate", "given"] = Field(
        "estimate", description="How far to trust the rate (see detectors.yaml)."
    )
    source: str = Field("", description="Citation for the rate.")
    url: str | None = Field(None, description="Where to check it.")
    note: str | None = Field(None, description="Caveats.")

    @property
    def frame_time_us(self) -> float:
        return 1e6 / self.frame_rate_hz


def load_detectors() -> dict[str, Detector]:
    """Every detector of the shipped table, by name."""
    data = load_yaml(DETECTORS, "detector table")
    out = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"detector table {DETECTORS}: {name}: expected a mapping")
        try:
            out[name] = Detector(name=name, **entry)
        except ValidationError as exc:
            raise ConfigError(f"detector table {DETECTORS}: {name}.{validation_message(exc)}") from None
    return out


def parse_rate(text: str) -> float | None:
    """``87000``, ``87e3``, ``87k``, ``87 kHz``, ``1MHz`` -> Hz; None when ``text`` is not a rate."""
    m = _RATE_RE.match(text)
    if not m:
        return None
    return float(m.group(1)) * _PREFIX[m.group(2).lower()]


def resolve_detector(spec: str) -> Detector:
    """A detector from its name in the table (case-insensitive) or a rate such as ``87000`` or ``87kHz``."""
    table = load_detectors()
    key = spec.strip().lower()
    if key in table:
        return table[key]
    rate = parse_rate(spec)
    if rate is not None:
        if rate <= 0:
            raise ConfigError(f"detector rate {spec!r}: must be positive")
        return Detector(name=f"{rate:g} Hz", frame_rate_hz=rate, certainty="given", source="given on the command line")
    raise ConfigError(
        f"unknown detector {spec!r}: give one of {', '.join(table)} or a rate in Hz (e.g. 87000 or 87kHz)"
    )
