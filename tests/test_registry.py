"""One registry helper: names without imports, one-line errors, the three registries of the package."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgestem.config import load_config
from edgestem.errors import ConfigError
from edgestem.registry import EMULATORS, EXPORT_FORMATS, FIRMWARE, Registry


def test_names_keep_their_order_and_unknown_names_list_the_choices():
    r = Registry("widget", {"b": "json:dumps", "a": "json:loads"})
    assert r.names() == ["b", "a"] and "a" in r and "c" not in r and r.choices() == "b or a"
    assert r.get("a") is __import__("json").loads
    with pytest.raises(ConfigError, match="^--kind: unknown widget 'c': choose one of b, a$"):
        r.get("c", "--kind")
    with pytest.raises(ValueError, match="registered twice"):
        r.register("a", "json:dumps")
    with pytest.raises(ValueError, match="module:attribute"):
        r.register("d", "json.dumps")


def test_a_registered_module_that_is_missing_is_a_one_line_error():
    r = Registry("widget", {"gone": "edgestem.no_such_module:Thing"})
    with pytest.raises(ConfigError, match="not part of this edgestem installation"):
        r.get("gone")


def test_every_registered_target_exists():
    import importlib

    for registry in (EMULATORS, FIRMWARE, EXPORT_FORMATS):
        for name in registry.names():
            module, _, attr = registry.target(name).partition(":")
            assert hasattr(importlib.import_module(module), attr), (registry.kind, name)


def test_the_names_are_known_without_importing_torch():
    code = (
        "import sys, edgestem.registry as r\n"
        "print(r.FIRMWARE.names(), r.EMULATORS.names(), r.EXPORT_FORMATS.names(), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'rtl'" in out and "'verilator'" in out and "'qcdq'" in out and out.strip().endswith("False")


def test_config_accepts_every_registered_backend_and_nothing_else():
    cfg = load_config(None, {"pipeline.firmware": FIRMWARE.names(), "pipeline.emulate": EMULATORS.names()})
    assert "rtl" in cfg.pipeline.firmware and "verilator" in cfg.pipeline.emulate
    with pytest.raises(ConfigError, match="pipeline.firmware.*unknown firmware backend 'vivado': choose one of"):
        load_config(None, {"pipeline.firmware": ["vivado"]})
    with pytest.raises(ConfigError, match="pipeline.emulate.*unknown emulation backend 'verilog'"):
        load_config(None, {"pipeline.emulate": ["verilog"]})
