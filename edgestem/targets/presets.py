"""Where the shipped YAML presets live (package data, so installed copies find them) and how they load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgestem.errors import ConfigError

# Package data: edgestem/presets/ ships in the wheel; configs/boards and configs/detectors.yaml in a
# source checkout are links to it, so there is one copy of every number.
PRESETS = Path(__file__).resolve().parent.parent / "presets"


def load_yaml(path: Path, what: str) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors naming the file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: no such file") from None
    except (OSError, yaml.YAMLError) as exc:
        reason = str(exc).replace("\n", " ")
        raise ConfigError(f"{what} {path}: not readable YAML ({reason})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected a mapping of keys to values")
    return data


def validation_message(exc: Any) -> str:
    """The first problem of a pydantic ValidationError, as ``key.path: message``."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    return f"{where}: {msg}"
