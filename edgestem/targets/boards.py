"""FPGA board presets (part, default clock, resources): ``--board`` takes a preset, a YAML file or a part.

Presets are YAML files in ``edgestem/presets/boards/`` (``configs/boards/`` in a checkout links there).
Run as ``python -m edgestem.targets.boards BOARD [--write FILE]`` it prints ``part clock_ns`` for the
shell scripts in ``scripts/`` and ``hw/``.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgestem.errors import ConfigError
from edgestem.targets.presets import PRESETS, load_yaml, validation_message

BOARDS = PRESETS / "boards"
# AMD/Xilinx part numbers: xc (commercial), xa (automotive) or xq (defence), then family, package, grade.
PART_RE = re.compile(r"^x[acq][a-z0-9]+(-[a-z0-9]+)+$", re.IGNORECASE)
# hls4ml's default clock; used for a bare part number that matches no preset.
DEFAULT_CLOCK_NS = 5.0


class Resources(BaseModel):
    """Resource counts of the device (data-sheet numbers; Vivado's "Available")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lut: int = Field(gt=0, description="Look-up tables (CLB / slice LUTs).")
    ff: int = Field(gt=0, description="Flip-flops (CLB / slice registers).")
    dsp: int = Field(ge=0, description="DSP slices (DSP48E1/E2, DSP58).")
    bram18: int = Field(ge=0, description="Block RAMs counted in 18 Kb halves (2 per 36 Kb block RAM tile).")
    uram: int = Field(0, ge=0, description="UltraRAM blocks (288 Kb); 0 on 7-series.")


class Board(BaseModel):
    """One target: the part to synthesise for, the default clock, and what the device holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Preset name (the file's stem) or the part number.")
    description: str = Field("", description="What the board is.")
    part: str = Field(description="AMD part number, e.g. xczu7ev-ffvc1156-2-e.")
    clock_ns: float = Field(gt=0, description="Default clock period in ns.")
    finn_board: str | None = Field(None, description="FINN's name for the board (build_dataflow_config.board).")
    platform: str | None = Field(None, description="Vitis platform (shell) of an Alveo card.")
    resources: Resources | None = Field(None, description="Device resources; unknown for a bare part number.")
    source: str = Field("", description="Where the numbers come from.")

    @property
    def clock_mhz(self) -> float:
        return 1000.0 / self.clock_ns


def preset_names() -> list[str]:
    """Names of the shipped board presets, sorted."""
    return sorted(p.stem for p in BOARDS.glob("*.yaml"))


def _from_file(path: Path, name: str) -> Board:
    data = load_yaml(path, "board file")
    data.setdefault("name", name)
    try:
        return Board(**data)
    except ValidationError as exc:
        raise ConfigError(f"board file {path}: {validation_message(exc)}") from None


def load_board(spec: str) -> Board:
    """A board from a preset name (case-insensitive), a board YAML/JSON file, or a bare AMD part number.

    A part number that belongs to a preset gets that preset's clock and resources; any other part
    gets the default clock (5 ns) and unknown resources.
    """
    spec = spec.strip()
    names = preset_names()
    if spec.lower() in names:
        return _from_file(BOARDS / f"{spec.lower()}.yaml", spec.lower())
    path = Path(spec)
    if path.suffix in (".yaml", ".yml", ".json"):  # JSON: what --write (RUN/hw/board.json) wrote
        return _from_file(path, path.stem)
    if PART_RE.match(spec):
        for name in names:
            board = _from_file(BOARDS / f"{name}.yaml", name)
            if board.part.lower() == spec.lower():
                return board
        return Board(name=spec, part=spec, clock_ns=DEFAULT_CLOCK_NS, source="part number given on the command line")
    raise ConfigError(
        f"unknown board {spec!r}: give a preset ({', '.join(names)}), a board YAML file, "
        "or an AMD part number such as xczu7ev-ffvc1156-2-e"
    )


def board_for_part(part: str | None) -> Board | None:
    """The preset whose part is ``part`` (case-insensitive), if any."""
    if not part:
        return None
    for name in preset_names():
        board = _from_file(BOARDS / f"{name}.yaml", name)
        if board.part.lower() == part.lower():
            return board
    return None


def _main(argv: list[str]) -> int:
    """``python -m edgestem.targets.boards BOARD [--clock-ns NS] [--write FILE]`` for the shell scripts."""
    import argparse

    from edgestem.atomic import write_json

    ap = argparse.ArgumentParser(prog="python -m edgestem.targets.boards", description=_main.__doc__)
    ap.add_argument("board")
    ap.add_argument("--clock-ns", default=None, help="Override the board's default clock.")
    ap.add_argument("--write", type=Path, default=None, help="Also write the board as JSON (only if it changed).")
    args = ap.parse_args(argv)
    try:
        board = load_board(args.board)
        if args.clock_ns is not None:
            try:
                clock = float(args.clock_ns)
            except ValueError:
                clock = float("nan")
            if not (math.isfinite(clock) and clock > 0):
                raise ConfigError(f"--clock-ns {args.clock_ns}: give a positive clock period in ns")
            board = board.model_copy(update={"clock_ns": clock})
        if args.write is not None:
            import json

            text = json.dumps(board.model_dump(mode="json"), indent=2) + "\n"
            # Keep the file's time stamp when nothing changed: make decides what to rebuild from it.
            if not args.write.is_file() or args.write.read_text() != text:
                write_json(args.write, board.model_dump(mode="json"))
    except ConfigError as exc:
        print(f"edgestem: error: {exc}", file=sys.stderr)
        return 2
    print(board.part, f"{board.clock_ns:g}", board.name)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
