"""Every package directory ships: a folder without __init__.py works in an editable install only."""

from pathlib import Path

import edgestem

ROOT = Path(edgestem.__file__).parent


def test_every_package_folder_has_init():
    for folder in [ROOT, *ROOT.rglob("*")]:
        if folder.is_dir() and folder.name != "__pycache__" and any(folder.glob("*.py")):
            assert (folder / "__init__.py").is_file(), f"{folder} has modules but no __init__.py"


def test_setuptools_finds_every_package():
    from setuptools import find_packages

    found = set(find_packages(str(ROOT.parent), include=["edgestem*"]))
    expected = {
        ".".join(p.relative_to(ROOT.parent).parts)
        for p in [ROOT, *ROOT.rglob("*")]
        if p.is_dir() and (p / "__init__.py").is_file()
    }
    assert expected <= found
