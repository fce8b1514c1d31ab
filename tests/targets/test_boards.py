"""Board presets: data-sheet numbers, how --board resolves, one-line errors, packaging of the YAML."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgestem.errors import ConfigError
from edgestem.targets.boards import BOARDS, DEFAULT_CLOCK_NS, board_for_part, load_board, preset_names

REPO = Path(__file__).resolve().parents[2]


def test_presets_carry_the_data_sheet_numbers():
    assert preset_names() == ["pynq-z2", "u250", "zcu104"]
    z = load_board("zcu104")
    assert (z.part, z.clock_ns, z.finn_board) == ("xczu7ev-ffvc1156-2-e", 5.0, "ZCU104")
    assert z.resources.model_dump() == {"lut": 230400, "ff": 460800, "dsp": 1728, "bram18": 624, "uram": 96}
    u = load_board("u250")
    assert u.part == "xcu250-figd2104-2L-e" and u.finn_board == "U250"
    assert u.resources.model_dump() == {"lut": 1728000, "ff": 3456000, "dsp": 12288, "bram18": 5376, "uram": 1280}
    p = load_board("pynq-z2")
    assert (p.part, p.clock_ns) == ("xc7z020clg400-1", 10.0)
    assert p.resources.model_dump() == {"lut": 53200, "ff": 106400, "dsp": 220, "bram18": 280, "uram": 0}
    for name in preset_names():
        assert load_board(name).source  # every preset says where its numbers come from


def test_board_spec_forms(tmp_path):
    assert load_board("ZCU104").name == "zcu104"
    # A preset's part gets the preset; another part gets the default clock and no resources.
    assert load_board("XC7Z020CLG400-1").name == "pynq-z2"
    other = load_board("xcvu9p-flga2104-2L-e")
    assert (other.part, other.clock_ns, other.resources) == ("xcvu9p-flga2104-2L-e", DEFAULT_CLOCK_NS, None)
    assert board_for_part("xcu250-figd2104-2l-e").name == "u250" and board_for_part("xc7a35t-1") is None
    f = tmp_path / "myboard.yaml"
    f.write_text("part: xc7a35tcpg236-1\nclock_ns: 8\nresources: {lut: 20800, ff: 41600, dsp: 90, bram18: 100}\n")
    b = load_board(str(f))
    assert (b.name, b.clock_ns, b.resources.uram) == ("myboard", 8.0, 0)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("part: xc7a35t-1\nclock_ns: 8\ncolour: red\n", "colour: unknown key"),
        ("part: xc7a35t-1\n", "clock_ns"),
        ("part: xc7a35t-1\nclock_ns: -2\n", "clock_ns"),
        ("part: [xc7a35t-1\n", "not readable YAML"),
    ],
)
def test_bad_board_files(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle) as err:
        load_board(str(f))
    assert "\n" not in str(err.value)


def test_unknown_board_lists_the_presets():
    with pytest.raises(ConfigError) as err:
        load_board("zcu102")
    msg = str(err.value)
    assert "zcu102" in msg and "pynq-z2, u250, zcu104" in msg and "part number" in msg


def test_checkout_configs_link_to_the_packaged_presets():
    linked = REPO / "configs" / "boards"
    for name in preset_names():
        assert (linked / f"{name}.yaml").read_text() == (BOARDS / f"{name}.yaml").read_text()
    assert (REPO / "configs" / "detectors.yaml").read_text() == (BOARDS.parent / "detectors.yaml").read_text()


def _boards_cli(*args, cwd=None):
    cmd = [sys.executable, "-m", "edgestem.targets.boards", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)


def test_module_cli_for_the_shell_scripts(tmp_path):
    out = tmp_path / "hw" / "board.json"
    r = _boards_cli("zcu104", "--write", out)
    assert r.returncode == 0 and r.stdout.split() == ["xczu7ev-ffvc1156-2-e", "5", "zcu104"]
    assert json.loads(out.read_text())["resources"]["dsp"] == 1728
    stamp = out.stat().st_mtime_ns
    assert _boards_cli("zcu104", "--write", out).returncode == 0
    assert out.stat().st_mtime_ns == stamp  # unchanged board: make sees no change
    r = _boards_cli(out, "--clock-ns", "4", "--write", out)  # reads its own JSON back
    assert r.stdout.split() == ["xczu7ev-ffvc1156-2-e", "4", "zcu104"]
    assert json.loads(out.read_text())["clock_ns"] == 4.0
    for bad in (["zcu102"], ["zcu104", "--clock-ns", "fast"], ["zcu104", "--clock-ns", "0"]):
        r = _boards_cli(*bad)
        assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr


def test_wheel_ships_the_presets(tmp_path):
    """The YAML must reach an installed (non-editable) package, not only this checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "edgestem", src / "edgestem", ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."]
    r = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("edgestem-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"edgestem/presets/boards/{n}.yaml" for n in preset_names()} | {"edgestem/presets/detectors.yaml"}
    assert expected <= names
