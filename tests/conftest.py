"""Shared fixtures: tiny simulated datasets built once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgestem.config import load_config


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory):
    """A small labelled polycrystal scan (8 x 8 patterns of 64 x 64 px, hex, noise-free)."""
    from edgestem.data.simulate import simulate_to_file

    cfg = load_config(None, {"simulate.scan": 8, "simulate.size": 64, "seed": 3})
    return simulate_to_file(cfg, tmp_path_factory.mktemp("data") / "tiny.h5")


TINY_QAT = {
    "preprocess.size": 32,
    "model.encoder.channels": [4, 8],
    "model.encoder.hidden": 8,
    "train.batch_size": 16,
    "train.lr": 1e-3,
    "train.epochs": 2,
    "qat.bits": 6,
    "qat.epochs": 1,
    "seed": 2,
}


@pytest.fixture(scope="session")
def tiny_qat_run(tmp_path_factory, tiny_h5):
    """A float run and its 6-bit QAT (RUN/qat/) on 32 x 32 inputs, tiny encoder: for export/emulation tests.

    Treat it as read-only: copy it (shutil.copytree) before adding stages to it.
    """
    from edgestem.compress.quantize import qat_run
    from edgestem.train import train

    run = tmp_path_factory.mktemp("tinyqat") / "run"
    cfg = load_config(None, TINY_QAT)
    train(cfg, tiny_h5, run)
    qat_run(run, cfg.qat)
    return run


# --- run directories laid out the way hls4ml, FINN and hw/ write them (tests/firmware/fixtures) ---

REPORT_FIXTURES = Path(__file__).parent / "firmware" / "fixtures"


def make_run(root: Path, hls4ml: bool = True, vivado: bool = True, finn: bool = True) -> Path:
    """A run with an hls4ml C synthesis report (in hls4ml's project), Vivado reports (in RUN/hw/hls4ml)
    and FINN estimate reports (in RUN/firmware/finn/report), as asked."""
    run = root / "run"
    h4 = run / "firmware" / "hls4ml"
    if hls4ml:
        report = h4 / "myproject_prj" / "solution1" / "syn" / "report"
        report.mkdir(parents=True)
        shutil.copy(REPORT_FIXTURES / "myproject_csynth.xml", report)
        shutil.copy(REPORT_FIXTURES / "project.tcl", h4)
        shutil.copy(REPORT_FIXTURES / "hls4ml_config.yml", h4)
    if vivado:
        hw = run / "hw" / "hls4ml"
        hw.mkdir(parents=True)
        shutil.copy(REPORT_FIXTURES / "utilization_impl.rpt", hw)
        shutil.copy(REPORT_FIXTURES / "timing_impl.rpt", hw)
    if finn:
        shutil.copytree(REPORT_FIXTURES / "finn-report", run / "firmware" / "finn" / "report", ignore=_no_ooc)
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
