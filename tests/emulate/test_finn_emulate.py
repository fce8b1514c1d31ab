"""Emulation backend ``finn``: FINN's Python execution of the run's FINN build, in .venv-finn, vs Brevitas."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("qonnx")

from edgestem.data.dataset import load_data  # noqa: E402
from edgestem.emulate import check_against_reference, emulate, get_backend  # noqa: E402
from edgestem.errors import EdgestemError, ToolMissingError  # noqa: E402
from edgestem.firmware import finn as finn_build  # noqa: E402
from edgestem.rundir import load_run_config  # noqa: E402

HAVE_FINN = (finn_build.finn_venv() / "bin" / "python").is_file()
needs_finn = pytest.mark.skipif(
    not HAVE_FINN, reason=f"FINN environment {finn_build.finn_venv()} missing: scripts/setup-finn.sh"
)


def test_no_build_and_no_environment_are_one_line_errors(tiny_qat_run, tmp_path, monkeypatch):
    with pytest.raises(EdgestemError, match="no FINN build .*run edgestem firmware --backend finn --run"):
        get_backend("finn", tiny_qat_run)
    out = tmp_path / "firmware" / "finn"
    (out / "report").mkdir(parents=True)
    (out / "firmware.json").write_text("{}")
    (out / "report" / "edgestem_build.json").write_text(json.dumps({"tie_rounding": {"exact": True}}))
    monkeypatch.setenv(finn_build.VENV_VARIABLE, str(tmp_path / "no-venv"))
    with pytest.raises(ToolMissingError, match="run scripts/setup-finn.sh"):
        get_backend("finn", tmp_path)


def _build(root, tiny_qat_run, tie_rounding):
    from edgestem.export.qonnx import export_run

    run = root / "run"
    shutil.copytree(tiny_qat_run, run)
    export_run(run, patterns=4)
    finn_build.build_finn(run, patterns=4, tie_rounding=tie_rounding)
    return run


@pytest.fixture(scope="module")
def finn_run(tmp_path_factory, tiny_qat_run):
    return _build(tmp_path_factory.mktemp("finn-emulate"), tiny_qat_run, "half_even")


@pytest.mark.finn
@needs_finn
def test_finn_execution_equals_brevitas(finn_run, tiny_h5):
    x = load_data(tiny_h5, load_run_config(finn_run)).x
    be = get_backend("finn", finn_run)
    assert be.name == "finn" and be.exact and be.input["datatype"] == "UINT8"
    got = be.predict(x)
    assert got.shape == (len(x), 4) and got.dtype == np.float64
    assert np.array_equal(got, get_backend("brevitas", finn_run).predict(x))


@pytest.mark.finn
@needs_finn
def test_emulate_through_the_interface_with_check(finn_run, tiny_h5, tmp_path):
    res = emulate(finn_run, "finn", tiny_h5, tmp_path / "finn.h5", check=True)
    assert res["check"]["mismatching_patterns"] == 0 and res["check"]["exact_required"] and res["patterns"] == 64


@pytest.mark.finn
@needs_finn
def test_half_up_ties_are_reported_not_hidden(tmp_path, tiny_qat_run, tiny_h5):
    """FINN's own thresholds round ties half up: the backend is then not exact and reports its differences."""
    run = _build(tmp_path, tiny_qat_run, "half_up")
    be = get_backend("finn", run)
    assert not be.exact
    x = load_data(tiny_h5, load_run_config(run)).x
    res = check_against_reference(be, run, x, be.predict(x))
    assert not res["exact_required"] and 0 <= res["mismatching_patterns"] <= len(x)
    print(f"half-up FINN vs Brevitas: {res['mismatching_patterns']} of {len(x)} patterns differ")
