"""Run directories laid out the way hls4ml, FINN and hw/ write them, filled from tests/export/fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIX = Path(__file__).parent / "fixtures"


def make_run(root: Path, hls4ml: bool = True, vivado: bool = True, finn: bool = True) -> Path:
    """A run with an hls4ml C synthesis report (in hls4ml's project), Vivado reports (in RUN/hw/hls4ml)
    and FINN estimate reports (in RUN/firmware/finn/report), as asked."""
    run = root / "run"
    h4 = run / "firmware" / "hls4ml"
    if hls4ml:
        report = h4 / "myproject_prj" / "solution1" / "syn" / "report"
        report.mkdir(parents=True)
        shutil.copy(FIX / "myproject_csynth.xml", report)
        shutil.copy(FIX / "project.tcl", h4)
        shutil.copy(FIX / "hls4ml_config.yml", h4)
    if vivado:
        hw = run / "hw" / "hls4ml"
        hw.mkdir(parents=True)
        shutil.copy(FIX / "utilization_impl.rpt", hw)
        shutil.copy(FIX / "timing_impl.rpt", hw)
    if finn:
        shutil.copytree(FIX / "finn-report", run / "firmware" / "finn" / "report", ignore=_no_ooc)
    run.mkdir(parents=True, exist_ok=True)
    return run


def _no_ooc(folder, names):
    return [n for n in names if n.startswith("ooc_")]


@pytest.fixture
def report_run(tmp_path):
    """hls4ml (HLS + Vivado implementation) and FINN (estimates) reports of one run."""
    return make_run(tmp_path)


@pytest.fixture
def run_factory(tmp_path):
    """``run_factory(hls4ml=..., vivado=..., finn=...)``: a run with just those reports."""
    return lambda **kinds: make_run(tmp_path, **kinds)
