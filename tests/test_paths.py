"""Output checks shared by every command (edgestem/paths.py)."""

from __future__ import annotations

import os
import shutil

import pytest

from edgestem.errors import EdgestemError
from edgestem.paths import (
    check_maps_file,
    check_memory,
    check_output_dir,
    check_output_file,
    check_space,
    protected_by,
    same_file,
)


def test_same_file_through_links_and_dots(tmp_path):
    a = tmp_path / "a.h5"
    a.write_text("x")
    os.symlink(a, tmp_path / "link.h5")
    (tmp_path / "sub").mkdir()
    assert same_file(tmp_path / "link.h5", a)
    assert same_file(tmp_path / "sub" / ".." / "a.h5", a)
    assert not same_file(tmp_path / "b.h5", a)


def test_run_files_are_protected_but_not_other_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert protected_by(run / "checkpoint.pt", [run]) == run / "checkpoint.pt"
    assert protected_by(run / "old.pt", [run]) is not None
    assert protected_by(run / "config.yaml", [run]) is not None
    assert protected_by(run / "maps.h5", [run]) is None
    assert protected_by(run / "qat" / "checkpoint.pt", [run]) is None  # RUN/qat is qat's own output


def test_output_file_checks(tmp_path):
    data = tmp_path / "d.h5"
    data.write_text("x")
    with pytest.raises(EdgestemError, match="would replace the input"):
        check_output_file(data, [data])
    with pytest.raises(EdgestemError, match="written beside it"):
        check_output_file(tmp_path / "m.h5", [tmp_path / "m.h5.json", data], extra=[tmp_path / "m.h5.json"])
    with pytest.raises(EdgestemError, match="is a directory"):
        check_output_file(tmp_path, [data])
    with pytest.raises(EdgestemError, match="cannot create output directory"):
        check_output_file(data / "x.h5")
    assert check_output_file(tmp_path / "new.h5", [data, None]) == tmp_path / "new.h5"


def test_maps_file_must_be_hdf5_and_not_clobber_its_figure(tmp_path):
    with pytest.raises(EdgestemError, match="HDF5"):
        check_maps_file(tmp_path / "maps.png")
    data = tmp_path / "m.png"
    data.write_text("x")
    with pytest.raises(EdgestemError, match="would replace the input"):
        check_maps_file(tmp_path / "m.h5", [data])


def test_output_dir_checks(tmp_path):
    data = tmp_path / "d.h5"
    data.write_text("x")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(EdgestemError, match="is the input"):
        check_output_dir(data, [data])
    with pytest.raises(EdgestemError, match="is a file, not a directory"):
        check_output_dir(data)
    with pytest.raises(EdgestemError, match="checkpoint.pt"):
        check_output_dir(run, [run], writes=["checkpoint.pt"])
    assert check_output_dir(run / "qat", [run], writes=["checkpoint.pt"]) == run / "qat"


def test_space_and_memory(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 90, 10))
    check_space(tmp_path / "x.h5", 10)
    with pytest.raises(EdgestemError, match="needs about 11 B but only 10 B is free"):
        check_space(tmp_path / "deep" / "er" / "x.h5", 11)
    with pytest.raises(EdgestemError, match="of memory"):
        check_memory(1e20, "a scan", "make it smaller")
