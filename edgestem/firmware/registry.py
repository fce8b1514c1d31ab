"""Firmware backends by name (``edgestem firmware --backend NAME``): one module per backend.

A backend is a module with a build function, named in :data:`edgestem.registry.FIRMWARE`
(``"hls4ml": "edgestem.firmware.hls4ml:build"``); it is imported only when asked for, so
``edgestem --help`` and the other backends never load its toolchain. A build function takes a
:class:`FirmwareRequest`, writes ``RUN/firmware/<name>/`` with a ``firmware.json`` written last (a
project without it is incomplete, see :func:`write_firmware_report`), and returns that report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgestem.errors import ConfigError, EdgestemError
from edgestem.registry import FIRMWARE
from edgestem.rundir import firmware_dir

REPORT_FILE = "firmware.json"
IO_TYPES = ("stream", "parallel")
STRATEGIES = ("latency", "resource")
HLS_TOOLS = ("vitis", "vivado")


class FirmwareMismatch(EdgestemError):
    """The firmware's emulation differs from the Brevitas model (exit code 1); the project is kept to inspect."""

    exit_code = 1


@dataclass(frozen=True)
class FirmwareRequest:
    """What to build: the run, the target and the implementation choices (backends use what applies)."""

    run: Path
    board: Any  # edgestem.targets.boards.Board
    clock_ns: float
    io: str = "stream"  # stream (FIFOs between layers) or parallel (fully partitioned arrays)
    reuse: int = 1  # multipliers shared by this many multiplications (hls4ml ReuseFactor)
    strategy: str = "latency"  # hls4ml Strategy
    hls: str = "vitis"  # HLS tool the project is written for
    patterns: int = 200  # patterns for the bit-exact check against Brevitas
    data: Path | None = None  # data for that check; None: the run's own
    target_fps: float | str | None = None  # FINN: frames/s to fold for (a number, "87k" or a detector name)

    def __post_init__(self) -> None:
        checks = (
            (self.io in IO_TYPES, f"--io {self.io!r}: choose {' or '.join(IO_TYPES)}"),
            (self.strategy in STRATEGIES, f"--strategy {self.strategy!r}: choose {' or '.join(STRATEGIES)}"),
            (self.hls in HLS_TOOLS, f"--hls {self.hls!r}: choose {' or '.join(HLS_TOOLS)}"),
            (self.reuse >= 1, f"--reuse {self.reuse}: must be >= 1"),
            (self.clock_ns > 0, f"--clock-ns {self.clock_ns:g}: must be positive"),
            (self.patterns >= 1, f"--patterns {self.patterns}: check at least 1 pattern"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def out_dir(self, backend: str) -> Path:
        return firmware_dir(self.run, backend)


def clear_project(out: Path) -> None:
    """Remove an earlier project: its firmware.json first, so an interruption never leaves a trusted one."""
    import shutil

    (out / REPORT_FILE).unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def write_firmware_report(
    req: FirmwareRequest, out: Path, onnx_path: Path, q: Any, metrics: dict[str, Any], started: float
) -> dict[str, Any]:
    """Write ``out/firmware.json`` (the stage report every backend writes last) and return it."""
    from edgestem.atomic import write_json
    from edgestem.runinfo import stage_report

    report = stage_report(
        "firmware",
        inputs={"run": req.run, "onnx": onnx_path, "data": str(req.data or q.state["data"]["path"])},
        outputs={"project": out, "firmware": out / REPORT_FILE},
        config=q.cfg,
        metrics=metrics,
        started=started,
    )
    write_json(out / REPORT_FILE, report)
    return report


Builder = Callable[[FirmwareRequest], dict[str, Any]]


def names() -> list[str]:
    """Every firmware backend (the names of :data:`edgestem.registry.FIRMWARE`; nothing is imported)."""
    return FIRMWARE.names()


def get(name: str) -> Builder:
    """The build function of backend ``name``; an unknown name is a one-line error listing the others."""
    return FIRMWARE.get(name, "--backend")


def build_firmware(
    backend: str,
    run: str | Path,
    *,
    board: str | Any = "zcu104",
    clock_ns: float | None = None,
    io: str = "stream",
    reuse: int = 1,
    strategy: str = "latency",
    hls: str = "vitis",
    patterns: int = 200,
    data: str | Path | None = None,
    target_fps: float | str | None = None,
) -> dict[str, Any]:
    """Build firmware for ``run`` with backend ``backend``; returns its ``firmware.json`` report.

    ``board`` is a preset name, a board YAML file or a part number (or a loaded Board);
    ``clock_ns`` defaults to the board's clock.
    """
    builder = get(backend)
    request = make_request(
        run,
        board=board,
        clock_ns=clock_ns,
        io=io,
        reuse=reuse,
        strategy=strategy,
        hls=hls,
        patterns=patterns,
        data=data,
        target_fps=target_fps,
    )
    return builder(request)


def make_request(
    run: str | Path, *, board: str | Any, clock_ns: float | None, data: str | Path | None, **options: Any
) -> FirmwareRequest:
    """A :class:`FirmwareRequest` from user-level options: the board loaded by name (or taken as a
    loaded Board), the clock defaulting to the board's, paths as :class:`Path`."""
    from edgestem.targets.boards import load_board

    target = load_board(board) if isinstance(board, str) else board
    return FirmwareRequest(
        run=Path(run),
        board=target,
        clock_ns=target.clock_ns if clock_ns is None else clock_ns,
        data=None if data is None else Path(data),
        **options,
    )


__all__ = [
    "FirmwareMismatch",
    "FirmwareRequest",
    "build_firmware",
    "get",
    "make_request",
    "names",
    "write_firmware_report",
]
