"""Emulation backends behind one interface; --check proves bit-exactness or names the first difference."""

import json
import subprocess
import sys

import numpy as np
import pytest

from edgestem.data.dataset import load_data
from edgestem.data.noise import noise_at
from edgestem.emulate import (
    EmulationMismatch,
    check_against_reference,
    emulate,
    first_mismatch,
    get_backend,
    quantized_dir,
)
from edgestem.errors import EdgestemError
from edgestem.registry import EMULATORS
from edgestem.rundir import load_run_config


def _x(run, tiny_h5, n=16):
    return load_data(tiny_h5, load_run_config(run)).x[:n]


def test_registry_lists_every_backend_and_rejects_unknown(tiny_qat_run):
    assert {"torch", "brevitas", "qonnx", "onnxruntime", "hls4ml", "finn", "verilator"} <= set(EMULATORS.names())
    with pytest.raises(EdgestemError, match="unknown emulation backend 'verilog': choose one of torch, brevitas"):
        get_backend("verilog", tiny_qat_run)


def test_brevitas_backend_reads_the_quantized_model(tiny_qat_run, tiny_h5):
    assert quantized_dir(tiny_qat_run).name == "qat"
    x = _x(tiny_qat_run, tiny_h5)
    be = get_backend("brevitas", tiny_qat_run)
    q = be.predict(x)
    f = get_backend("torch", tiny_qat_run).predict(x)
    assert q.shape == f.shape == (len(x), 4)
    assert not np.array_equal(q, f) and np.abs(q - f).max() < 1.0  # quantized: close, not equal
    # The outputs lie on the output quantizer's power-of-two grid.
    lsb = float(be.model.encoder.output.act_quant.scale())
    assert np.log2(lsb) == round(np.log2(lsb)) and np.array_equal(q / lsb, np.round(q / lsb))


def test_check_names_the_first_mismatch_of_an_exact_backend(tiny_qat_run, tiny_h5):
    x = _x(tiny_qat_run, tiny_h5)
    be = get_backend("brevitas", tiny_qat_run)
    ref = be.predict(x)
    assert check_against_reference(be, tiny_qat_run, x, ref)["mismatching_patterns"] == 0
    bad = ref.copy()
    bad[5, 2] += 2.0**-14
    assert first_mismatch(bad, ref) == (5, 2)
    with pytest.raises(EmulationMismatch, match="pattern 5, output 2"):
        check_against_reference(be, tiny_qat_run, x, bad)
    # A backend that need not be exact reports its differences instead.
    res = check_against_reference(get_backend("torch", tiny_qat_run), tiny_qat_run, x, bad)
    assert res["mismatching_patterns"] == 1 and not res["exact_required"]


def test_emulate_writes_maps_and_metrics_like_strain(tiny_qat_run, tiny_h5, tmp_path):
    out = tmp_path / "b.h5"
    res = emulate(tiny_qat_run, "brevitas", tiny_h5, out, noise=noise_at("w", 0.25), check=True)
    assert res["check"]["mismatching_patterns"] == 0 and res["patterns"] == 64
    assert set(res["mae"]["brevitas"]) == {"exx", "eyy", "exy", "theta"}
    saved = json.loads((tmp_path / "b.h5.json").read_text())
    assert saved["stage"] == "emulate" and saved["metrics"]["noise"]["w"] == 0.25
    # The same noise draw every time: the same numbers.
    again = emulate(tiny_qat_run, "brevitas", tiny_h5, tmp_path / "c.h5", noise=noise_at("w", 0.25))
    assert again["mae"] == res["mae"]


def test_cli_emulate_without_qat_is_a_one_line_error(tmp_path, tiny_h5):
    from edgestem.config import load_config
    from edgestem.train import train

    cfg = load_config(
        None,
        {
            "preprocess.size": 32,
            "model.encoder.channels": [4],
            "model.encoder.hidden": 4,
            "train.epochs": 1,
            "train.batch_size": 16,
        },
    )
    train(cfg, tiny_h5, tmp_path / "run")
    r = subprocess.run(
        [sys.executable, "-m", "edgestem.cli", "emulate", "--run", str(tmp_path / "run"), "--backend", "brevitas"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "run edgestem qat" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_tiny_model_to_bit_exact_firmware_emulation(tiny_qat_run, tiny_h5, tmp_path):
    """The CI proof: tiny model -> QAT -> QONNX -> hls4ml C++ -> emulate --check, bit-exact, every run."""
    import shutil

    from edgestem.export.qonnx import export_run
    from edgestem.firmware.registry import build_firmware

    run = tmp_path / "run"
    shutil.copytree(tiny_qat_run, run)
    export_run(run, patterns=8, data=tiny_h5)
    build_firmware("hls4ml", run, patterns=8, data=tiny_h5)
    for backend in ("qonnx", "hls4ml"):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgestem.cli",
                "emulate",
                "--run",
                str(run),
                "--backend",
                backend,
                "--data",
                str(tiny_h5),
                "--noise-w",
                "0.25",
                "--check",
                "--out",
                str(tmp_path / f"{backend}.h5"),
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        saved = json.loads((tmp_path / f"{backend}.h5.json").read_text())["metrics"]
        assert saved["check"]["patterns"] == 64 and saved["check"]["mismatching_patterns"] == 0, backend
    # The firmware's maps are the Brevitas model's maps: same outputs, same strain.
    ref = emulate(run, "brevitas", tiny_h5, tmp_path / "b.h5", noise=noise_at("w", 0.25))
    assert json.loads((tmp_path / "hls4ml.h5.json").read_text())["metrics"]["mae"]["hls4ml"] == ref["mae"]["brevitas"]
