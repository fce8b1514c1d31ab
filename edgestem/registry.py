"""Named implementations chosen at run time: emulation backends, firmware backends, export formats.

A :class:`Registry` maps a name to a ``"module:attribute"`` string, so it knows every name without
importing anything heavy (``edgestem --help`` and config validation stay free of torch and the FPGA
tool packages); the module is imported only when the name is used. Config validation
(:mod:`edgestem.config`), the CLI's help texts and the stages all ask the registries below for the
names, so a name is written once. Adding a backend or a format is its module and one line here.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from edgestem.errors import ConfigError


class Registry:
    """Names -> ``"module:attribute"`` of one kind of implementation (in the order given)."""

    def __init__(self, kind: str, entries: dict[str, str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, str] = {}
        for name, target in (entries or {}).items():
            self.register(name, target)

    def register(self, name: str, target: str) -> None:
        """Add ``name`` -> ``"package.module:attribute"`` (a name is registered once)."""
        module, sep, attr = target.partition(":")
        if not sep or not module or not attr.isidentifier():
            raise ValueError(f"{self.kind} {name!r}: target {target!r} must look like 'package.module:attribute'")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = target

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Any:
        return iter(self._entries)

    def choices(self, last: str = "or") -> str:
        """The names for a help text: ``a, b or c``."""
        names = self.names()
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"

    def unknown(self, name: str) -> str:
        """The message for a name that is not registered."""
        return f"unknown {self.kind} {name!r}: choose one of {', '.join(self._entries)}"

    def check(self, name: str, option: str | None = None) -> str:
        """``name`` if it is registered, else a one-line :class:`ConfigError` listing the names."""
        if name not in self._entries:
            raise ConfigError(f"{option}: {self.unknown(name)}" if option else self.unknown(name))
        return name

    def target(self, name: str) -> str:
        """The ``"module:attribute"`` of ``name`` (checked)."""
        return self._entries[self.check(name)]

    def get(self, name: str, option: str | None = None) -> Any:
        """Import and return what ``name`` stands for (a class or a function)."""
        module, _, attr = self._entries[self.check(name, option)].partition(":")
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{self.kind} {name!r} is not part of this edgestem installation; reinstall edgestem")
        return getattr(importlib.import_module(module), attr)


# Ways of running the encoder (edgestem emulate): each module defines a ``Backend`` class.
EMULATORS = Registry(
    "emulation backend",
    {
        "torch": "edgestem.emulate.float_torch:Backend",  # the float model (RUN/checkpoint.pt)
        "brevitas": "edgestem.emulate.brevitas_qat:Backend",  # the quantized model in PyTorch: the reference
        "qonnx": "edgestem.emulate.qonnx_exec:Backend",  # the exported QONNX graph, qonnx's executor
        "onnxruntime": "edgestem.emulate.ort:Backend",  # the QCDQ export under ONNX Runtime
        "hls4ml": "edgestem.emulate.hls4ml_cpp:Backend",  # the compiled hls4ml firmware C++
        "finn": "edgestem.emulate.finn_exec:Backend",  # FINN's own execution, in its environment
        "verilator": "edgestem.emulate.verilator_sim:Backend",  # the generated RTL under Verilator
    },
)

# Firmware flows (edgestem firmware --backend): a build function taking a FirmwareRequest.
FIRMWARE = Registry(
    "firmware backend",
    {
        "hls4ml": "edgestem.firmware.hls4ml:build",
        "finn": "edgestem.firmware.finn:build",
        "rtl": "edgestem.firmware.rtl:build",
    },
)

# Exported model files (edgestem export --format): a writer taking an edgestem.export.qonnx.ExportJob.
EXPORT_FORMATS = Registry(
    "export format",
    {
        "qonnx": "edgestem.export.qonnx:write_qonnx",  # firmware (hls4ml, FINN, RTL)
        "qcdq": "edgestem.export.qcdq:write_qcdq",  # ONNX Runtime on CPUs
    },
)

__all__ = ["EMULATORS", "EXPORT_FORMATS", "FIRMWARE", "Registry"]
