"""The command line: lazy imports, --help everywhere, stages end to end, one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from edgestem.cli import app
from edgestem.data.io import write_4dstem

runner = CliRunner()
COMMANDS = ["simulate", "noise", "info", "plot", "config", "train", "strain", "baseline"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_import_is_lazy():
    code = (
        "import sys, edgestem.cli\n"
        "heavy = [m for m in ('torch', 'brevitas', 'qonnx', 'hls4ml', 'h5py', 'matplotlib', 'scipy', 'onnx')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_is_fast_and_complete():
    out = subprocess.run([sys.executable, "-m", "edgestem.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in COMMANDS:
        assert cmd in out.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd):
    r = run(cmd, "--help")
    assert r.exit_code == 0 and "Usage" in r.output


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and r.output.startswith("edgestem ")


def test_simulate_noise_info_plot(tmp_path):
    out = tmp_path / "d.h5"
    r = run(
        "simulate",
        "--out",
        out,
        "--scan",
        6,
        "--size",
        64,
        "--lattice",
        "square",
        "--specimen",
        "smooth",
        "--noise-w",
        0.25,
        "--seed",
        4,
        "-q",
    )
    assert r.exit_code == 0, r.output
    with h5py.File(out) as f:
        assert f["data"].shape == (6, 6, 64, 64) and f["data"].dtype == np.float32
        assert f["data"].chunks == (1, 1, 64, 64)
        assert set(f["labels"]) == {"exx", "eyy", "exy", "theta"}
        assert "config" in f.attrs and "edgestem_version" in f.attrs
    report = json.loads((tmp_path / "d.h5.json").read_text())
    assert report["stage"] == "simulate" and report["config"]["simulate"]["lattice"]["kind"] == "square"
    assert report["config"]["noise"] == report["config"]["noise"] | {"model": "background", "w": 0.25}

    noisy = tmp_path / "n.h5"
    r = run("noise", "--data", out, "--out", noisy, "--dose", 1000, "--seed", 1, "-q")
    assert r.exit_code == 0, r.output
    with h5py.File(noisy) as f, h5py.File(out) as g:
        np.testing.assert_array_equal(f["labels/exx"][()], g["labels/exx"][()])

    r = run("info", noisy, "-q")
    assert r.exit_code == 0 and "(6, 6, 64, 64)" in r.output and "exx" in r.output
    r = run("info", noisy, "--json", "-q")
    assert json.loads(r.output)["shape"] == [6, 6, 64, 64]

    r = run("plot", out, "--out", tmp_path / "plots", "-q")
    assert r.exit_code == 0, r.output
    for name in ("patterns.png", "labels.png", "plot.json"):
        assert (tmp_path / "plots" / name).stat().st_size > 0


def test_config_command(tmp_path):
    r = run("config")
    assert r.exit_code == 0 and "simulate:" in r.output and "counts_per_probe" in r.output


def _one_line_error(r, *needles):
    assert r.exit_code != 0
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    assert "Traceback" not in r.output and "error" in lines[0]
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_file(tmp_path):
    _one_line_error(run("info", tmp_path / "nope.h5"), "no such file")


def test_corrupt_hdf5(tmp_path, tiny_h5):
    bad = tmp_path / "cut.h5"
    bad.write_bytes(tiny_h5.read_bytes()[: tiny_h5.stat().st_size // 2])
    _one_line_error(run("info", bad), "cut.h5")


def test_wrong_rank(tmp_path):
    p = tmp_path / "rank3.h5"
    with h5py.File(p, "w") as f:
        f["data"] = np.ones((4, 8, 8), dtype=np.float32)
    _one_line_error(run("info", p), "rank 3")


@pytest.mark.parametrize("value,needle", [(np.nan, "NaN"), (-1.0, "negative")])
def test_nan_and_negative(tmp_path, value, needle):
    x = np.ones((3, 3, 16, 16), dtype=np.float32)
    x[1, 2, 5, 5] = value
    p = write_4dstem(tmp_path / "bad.h5", x)
    _one_line_error(run("info", p), needle, "(1, 2)")
    out = tmp_path / "noisy.h5"
    _one_line_error(run("noise", "--data", p, "--out", out, "--dose", 100), needle)
    assert not out.exists() and not list(tmp_path.glob(".noisy*"))


def test_unknown_config_key(tmp_path):
    c = tmp_path / "c.yaml"
    c.write_text("simulate:\n  scna: 4\n")
    out = tmp_path / "d.h5"
    _one_line_error(run("simulate", "--config", c, "--out", out), "simulate.scna", "unknown key")
    assert not out.exists()


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _one_line_error(run("simulate", "--out", blocker / "d.h5", "--scan", 2), "cannot create output directory")


def test_noise_and_dose_are_exclusive(tmp_path, tiny_h5):
    _one_line_error(
        run("noise", "--data", tiny_h5, "--out", tmp_path / "x.h5", "--noise-w", 0.1, "--dose", 10), "either"
    )


def test_console_script_exit_code(tmp_path):
    exe = [sys.executable, "-c", "from edgestem.cli import main; main()"]
    r = subprocess.run([*exe, "info", str(tmp_path / "none.h5")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_train_resume_and_strain(tmp_path, tiny_h5):
    c = tmp_path / "tiny.yaml"
    c.write_text("seed: 1\nmodel:\n  encoder: {channels: [4, 8, 8], hidden: 8}\ntrain: {batch_size: 16, epochs: 1}\n")
    rundir = tmp_path / "run"
    r = run("train", "--data", tiny_h5, "--out", rundir, "--config", c, "-q")
    assert r.exit_code == 0, r.output
    assert "trained" in r.output and (rundir / "checkpoint.pt").is_file()
    r = run("train", "--data", tiny_h5, "--out", rundir, "--epochs", 2, "--resume", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads((rundir / "train.json").read_text())["epochs"] == 2
    r = run("train", "--data", tiny_h5, "--out", rundir, "-q")
    _one_line_error(r, "--resume")
    r = run("strain", "--run", rundir, "--data", tiny_h5, "--out", tmp_path / "maps.h5")
    assert r.exit_code == 0, r.output
    assert "MAE exx" in r.output and (tmp_path / "maps.png").is_file()
    _one_line_error(
        run("strain", "--run", tmp_path / "nope", "--data", tiny_h5, "--out", tmp_path / "m.h5"), "checkpoint"
    )


def test_baseline_command(tmp_path, tiny_h5):
    out = tmp_path / "classical.h5"
    r = run("baseline", "--data", tiny_h5, "--out", out, "--ref", "0:4,0:4")
    assert r.exit_code == 0, r.output
    assert "0 failed" in r.output and "classical MAE exx" in r.output
    report = json.loads((tmp_path / "classical.h5.json").read_text())
    assert report["stage"] == "baseline" and report["metrics"]["mae"]["classical"]["exx"] < 0.05
    with h5py.File(out) as f:
        assert f["maps/exx"].shape == (8, 8) and f.attrs["method"] == "classical"
    _one_line_error(run("baseline", "--data", tiny_h5, "--out", out, "--symmetry", "penta"), "penta")
