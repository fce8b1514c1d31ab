"""scripts/synth.sh + hw/Makefile + hw/*.tcl, run end to end with stand-ins for vitis-run and vivado.

The stand-ins (tests/firmware/fake_vendor.tcl under tclsh) log every vendor command and write fixture
reports, so these tests check what the flow asks of the tools (part, clock, top, order of steps,
which files it adds) and that make re-runs only what changed. They cannot check the tools themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent
REPO = HERE.parents[1]
SYNTH = REPO / "scripts" / "synth.sh"

pytestmark = pytest.mark.skipif(
    not (shutil.which("tclsh") and shutil.which("make") and shutil.which("bash")), reason="needs tclsh, make, bash"
)

FAKE_VITIS_RUN = """#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in --tcl) script="$2"; shift 2;; *) shift;; esac; done
exec tclsh "$FAKE_VENDOR" "$script"
"""
FAKE_VIVADO = """#!/bin/sh
log=vivado.log
while [ $# -gt 0 ]; do case "$1" in -source) script="$2"; shift 2;; -log) log="$2"; shift 2;; *) shift;; esac; done
exec tclsh "$FAKE_VENDOR" "$script" > "$log" 2>&1
"""


def _hls4ml_project(folder: Path) -> None:
    """The files hls4ml's write() leaves that the flow touches (contents do not matter to the stand-ins)."""
    (folder / "firmware" / "weights").mkdir(parents=True)
    (folder / "tb_data").mkdir()
    shutil.copy(HERE / "fixtures" / "project.tcl", folder)
    (folder / "firmware" / "myproject.cpp").write_text("// firmware\n")
    (folder / "myproject_test.cpp").write_text("// testbench\n")
    (folder / "tb_data" / "tb_input_features.dat").write_text("0 1 2\n")


@pytest.fixture
def env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("vitis-run", FAKE_VITIS_RUN), ("vivado", FAKE_VIVADO)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    e = dict(os.environ)
    e.update(
        PATH=f"{bin_dir}:{e['PATH']}",
        FAKE_VENDOR=str(HERE / "fake_vendor.tcl"),
        FAKE_FIXTURES=str(HERE / "fixtures"),
        FAKE_LOG=str(log),
    )
    return e, log


def _synth(run, env, *args):
    return subprocess.run(["bash", str(SYNTH), str(run), *args], capture_output=True, text=True, env=env, timeout=120)


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_hls4ml_flow_end_to_end(tmp_path, env):
    environ, log = env
    run = tmp_path / "run"
    _hls4ml_project(run / "firmware" / "hls4ml")
    r = _synth(run, environ, "--board", "zcu104")
    assert r.returncode == 0, r.stdout + r.stderr
    calls = _calls(log)
    steps = [c.split()[0] for c in calls if c.split()[0].endswith("_design") and c.split()[0] != "synth_design"]
    assert steps[:4] == ["csim_design", "csynth_design", "cosim_design", "export_design"]
    assert "set_part xczu7ev-ffvc1156-2-e" in calls and "create_clock -period 5 -name default" in calls
    assert "set_clock_uncertainty 27% default" in calls
    assert any(c.startswith("add_files -tb myproject_test.cpp -cflags -std=c++0x -DRTL_SIM") for c in calls)
    assert "synth_design -top myproject -part xczu7ev-ffvc1156-2-e -mode out_of_context" in calls
    assert (
        calls.index("route_design")
        > calls.index("place_design")
        > calls.index("open_checkpoint " + str(run / "hw" / "hls4ml" / "post_synth.dcp"))
    )
    out = run / "hw" / "hls4ml"
    assert (out / "csynth.xml").is_file() and (out / "utilization_impl.rpt").is_file()
    assert (out / "cosim.txt").read_text().startswith("PASS")
    assert "create_clock -period 5 -name ap_clk [get_ports ap_clk]" in (out / "clock.xdc").read_text()
    assert json.loads((run / "hw" / "board.json").read_text())["name"] == "zcu104"
    # The summary printed at the end comes from edgestem synth-report.
    assert "Vivado implementation" in r.stdout and "HLS estimate" in r.stdout

    # Nothing changed: make runs no tool again.
    n = len(calls)
    r = _synth(run, environ)
    assert r.returncode == 0, r.stderr
    assert len(_calls(log)) == n

    # Another board: C synthesis and what follows re-run for its part and clock; C simulation does not.
    r = _synth(run, environ, "--board", "pynq-z2")
    assert r.returncode == 0, r.stderr
    new = _calls(log)[n:]
    assert "set_part xc7z020clg400-1" in new and "create_clock -period 10 -name default" in new
    assert "csim_design" not in new and "csynth_design" in new and "route_design" in new


def test_finn_flow(tmp_path, env):
    environ, log = env
    run = tmp_path / "run"
    stitched = run / "firmware" / "finn" / "stitched_ip"
    stitched.mkdir(parents=True)
    (stitched / "finn_vivado_stitch_proj.xpr").write_text("")
    environ["FAKE_PROJECT_PART"] = "xczu7ev-ffvc1156-2-e"
    r = _synth(run, environ, "--board", "zcu104")
    assert r.returncode == 0, r.stdout + r.stderr
    calls = _calls(log)
    assert "open_project " + str(stitched / "finn_vivado_stitch_proj.xpr") in calls
    assert (
        "set_property -name STEPS.SYNTH_DESIGN.ARGS.MORE OPTIONS -value -mode out_of_context -objects synth_1" in calls
    )
    assert "create_clock -period 5 -name ap_clk ap_clk" in calls  # the project had no clock yet
    assert "route_design" in calls and (run / "hw" / "finn" / "timing_impl.rpt").is_file()
    assert "csynth_design" not in calls  # no HLS step for FINN
    assert "Vivado implementation" in r.stdout
    # A project FINN built for another part is not silently re-targeted.
    r = _synth(run, environ, "--board", "pynq-z2")
    assert r.returncode != 0 and "built for xczu7ev-ffvc1156-2-e, not xc7z020clg400-1" in r.stdout + r.stderr


def test_cosim_mismatch_fails(tmp_path, env):
    environ, log = env
    run = tmp_path / "run"
    _hls4ml_project(run / "firmware" / "hls4ml")
    environ["FAKE_COSIM_MISMATCH"] = "1"
    r = _synth(run, environ, "--steps", "csim,csynth,cosim")
    assert r.returncode != 0
    assert "differs from C simulation" in r.stdout + r.stderr
    assert (run / "hw" / "hls4ml" / "cosim.txt").read_text().startswith("FAIL")
    assert not (run / "hw" / "hls4ml" / ".cosim.done").exists()


def test_missing_tools_one_line(tmp_path):
    run = tmp_path / "run"
    _hls4ml_project(run / "firmware" / "hls4ml")
    path = "/usr/bin:/bin"
    if any(shutil.which(t, path=path) for t in ("vivado", "vitis-run", "vitis_hls", "vivado_hls")):
        pytest.skip("Xilinx tools are installed in /usr/bin")
    environ = dict(os.environ, PATH=path)
    r = _synth(run, environ)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "vitis-run" in r.stderr and "settings64.sh" in r.stderr
    (bin_dir := tmp_path / "bin").mkdir()
    (bin_dir / "vitis_hls").write_text("#!/bin/sh\n")
    (bin_dir / "vitis_hls").chmod(0o755)
    r = _synth(run, dict(environ, PATH=f"{bin_dir}:{path}"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "vivado is not on PATH" in r.stderr


@pytest.mark.parametrize(
    "setup,args,needle",
    [
        ("none", [], "no firmware project"),
        ("hls4ml", ["--board", "zcu102"], "unknown board 'zcu102'"),
        ("hls4ml", ["--clock-ns", "fast"], "give a positive clock period"),
        ("hls4ml", ["--flow", "finn"], "no FINN stitched IP"),
        ("hls4ml", ["--steps", "csim,place"], "unknown step 'place'"),
        ("finn", [], "give --board"),
    ],
)
def test_user_errors_one_line(tmp_path, env, setup, args, needle):
    environ, log = env
    run = tmp_path / "run"
    run.mkdir()
    if setup == "hls4ml":
        _hls4ml_project(run / "firmware" / "hls4ml")
    if setup == "finn":
        (run / "firmware" / "finn" / "stitched_ip").mkdir(parents=True)
        (run / "firmware" / "finn" / "stitched_ip" / "finn_vivado_stitch_proj.xpr").write_text("")
    r = _synth(run, environ, *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
    assert _calls(log) == []


def test_hls_tcl_runs_on_a_project_hls4ml_wrote(tmp_path, env):
    """Every file hw/hls.tcl adds exists in a project written by the installed hls4ml."""
    hls4ml = pytest.importorskip("hls4ml")
    torch = pytest.importorskip("torch")
    environ, log = env
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())
    prj = tmp_path / "prj"
    cfg = hls4ml.utils.config_from_pytorch_model(model, input_shape=(8,), granularity="name", backend="Vitis")
    hls_model = hls4ml.converters.convert_from_pytorch_model(
        model, hls_config=cfg, output_dir=str(prj), backend="Vitis", io_type="io_stream", part="xc7z020clg400-1"
    )
    hls_model.write()
    out = tmp_path / "out"
    environ.update(EDGESTEM_PRJ=str(prj), EDGESTEM_STEP="csynth", EDGESTEM_OUT=str(out))
    r = subprocess.run(
        ["tclsh", str(HERE / "fake_vendor.tcl"), str(REPO / "hw" / "hls.tcl")],
        capture_output=True,
        text=True,
        env=environ,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    calls = _calls(log)
    assert "set_part xc7z020clg400-1" in calls  # the part hls4ml wrote into project.tcl
    assert (out / "csynth.xml").is_file()


def test_hls_tcl_rejects_bad_settings(tmp_path, env):
    environ, _ = env
    for extra in ({"EDGESTEM_PRJ": str(tmp_path)}, {"EDGESTEM_PRJ": str(tmp_path), "EDGESTEM_STEP": "csynth"}):
        r = subprocess.run(
            ["tclsh", str(HERE / "fake_vendor.tcl"), str(REPO / "hw" / "hls.tcl")],
            capture_output=True,
            text=True,
            env=dict(environ, **extra),
        )
        assert r.returncode == 1 and "ERROR: [edgestem]" in r.stdout


def test_shell_scripts_parse():
    for script in ("synth.sh", "setup-finn.sh"):
        r = subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_setup_finn_from_nothing(tmp_path):
    """FINN's own environment from nothing (about 60 s and 2.3 GB; needs the package index), then a free re-run."""
    import time

    venv = tmp_path / "finn"
    setup = REPO / "scripts" / "setup-finn.sh"
    r = subprocess.run(["bash", str(setup), str(venv)], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    t0 = time.perf_counter()
    assert subprocess.run(["bash", str(setup), str(venv)], timeout=60).returncode == 0
    assert time.perf_counter() - t0 < 5
    check = (
        f". {venv}/finn-env.sh && {venv}/bin/python -c "
        "'import finn.xsi; finn.xsi.SimEngine = None; import finn.builder.build_dataflow_steps, brevitas; "
        "print(brevitas.__version__)'"
    )
    r = subprocess.run(["bash", "-c", check], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "0.13.0", r.stderr[-2000:]
