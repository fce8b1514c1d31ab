"""Shared fixtures: tiny simulated datasets built once per session."""

from __future__ import annotations

import pytest

from edgestem.config import load_config


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory):
    """A small labelled polycrystal scan (8 x 8 patterns of 64 x 64 px, hex, noise-free)."""
    from edgestem.data.simulate import simulate_to_file

    cfg = load_config(None, {"simulate.scan": 8, "simulate.size": 64, "seed": 3})
    return simulate_to_file(cfg, tmp_path_factory.mktemp("data") / "tiny.h5")
