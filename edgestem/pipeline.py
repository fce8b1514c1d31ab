"""``edgestem run CONFIG``: the pipeline as a list of named steps, skipping the ones that are up to date.

simulate -> noise -> train -> [distill] -> qat -> [prune] -> export -> firmware -> emulate -> report

The output folder is itself the run directory (``config.yaml``, ``checkpoint.pt``, ``qat/``,
``prune/``, ``export/``, ``firmware/``, ``emulate/``, ``report/``), with the data in ``data/``, so
every single-stage command takes ``--run OUT`` too. ``pipeline.json`` records, per step, a key: the
hash of the config sections the step reads and of the keys of the steps before it. A step whose key
and outputs are unchanged is skipped; a step whose config changed is refused (choose another
``--out`` or ``--force``), because its old outputs would no longer match the rest; an interrupted
training step resumes from its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgestem.config import Config, save_config
from edgestem.errors import EdgestemError
from edgestem.rundir import (
    CHECKPOINT,
    CONFIG,
    DISTILL_DIR,
    EMULATE_DIR,
    EXPORT_DIR,
    FIRMWARE_DIR,
    PRUNE_DIR,
    QAT_DIR,
    REPORT_DIR,
    TRAIN_REPORT,
    emulate_path,
    has_checkpoint,
)

RECORD = "pipeline.json"


@dataclass(frozen=True)
class Step:
    name: str
    sections: tuple[str, ...]  # config sections whose values decide the step's outputs
    outputs: tuple[str, ...]  # paths (relative to OUT) that exist once the step is done
    run: Callable[[Config, Path, dict[str, Any]], dict[str, Any]]
    enabled: Callable[[Config], bool] = lambda cfg: True


def _clean(out: Path) -> Path:
    return out / "data" / "clean.h5"


def _train_data(out: Path) -> Path:
    return out / "data" / "train.h5"


def _simulate(cfg: Config, out: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    from edgestem.config import NoiseConfig
    from edgestem.data.simulate import simulate_to_file

    _clean(out).parent.mkdir(parents=True, exist_ok=True)
    # The clean scan: the config's noise is the next step's (simulate_to_file would apply it here too).
    simulate_to_file(cfg.model_copy(update={"noise": NoiseConfig(model="none")}), _clean(out))
    return {"clean_data": str(_clean(out))}


def _noise(cfg: Config, out: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    from edgestem.data.noise import add_noise_to_file, is_active

    if is_active(cfg.noise):
        add_noise_to_file(_clean(out), _train_data(out), cfg.noise, seed=cfg.seed)
    else:
        shutil.copyfile(_clean(out), _train_data(out))
    return {"train_data": str(_train_data(out))}


def _train(cfg: Config, out: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    from edgestem.train import train

    resume = has_checkpoint(out)
    rep = train(cfg, _train_data(out), out, resume=resume, progress=ctx.get("progress"))
    return {"epochs": rep["epochs"], "seconds": rep["seconds"]}


def _distill(cfg: Config, out: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    from edgestem.distill import distill_run

    resume = (out / DISTILL_DIR).is_dir()
    rep = distill_run(out, cfg.distill, data=_train_data(out), resume=resume, progress=ctx.get("progress"))
    return {"teacher": cfg.distill.teacher, "seconds": rep["metrics"]["seconds"]}


def _qat(cfg: Config, out: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    from edgestem.compress.quantize import qat_run

    resume = has_checkpoint(out / QAT_DIR)
    # QAT starts from the distilled encoder when the pipeline distils.
    source = out / DISTILL_DIR if cfg.pipeline.distill else out
    res = qat_run(source, cfg.qat, out=out / QAT_DIR, resume=resume, progress=ctx.get("progress"))
    return {"bits": cfg.qat.bits, "seconds": res["train_seconds"]}


def _prune(cfg: Config, out: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    from edgestem.compress.prune import prune_run

    resume = has_checkpoint(out / PRUNE_DIR)
    rep = prune_run(out, cfg, source="qat", resume=resume, progress=ctx.get("progress"))
    return {"sparsity": cfg.prune.sparsity, "structured": cfg.prune.structured, "report": bool(rep)}


def _export(cfg: Config, out: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    from edgestem.export.qonnx import export_run

    res = export_run(out)
    return {"verification": res["metrics"].get("verification", {})}


def _firmware(cfg: Config, out: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    from edgestem.firmware.registry import build_firmware

    p = cfg.pipeline
    done = {}
    for backend in p.firmware:
        done[backend] = build_firmware(
            backend,
            out,
            board=p.board,
            clock_ns=p.clock_ns,
            io=p.io,
            reuse=p.reuse,
            strategy=p.strategy,
        ).get("backend", backend)
    return {"backends": list(done)}


def _emulate(cfg: Config, out: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    from edgestem.emulate import emulate

    done = {}
    (out / EMULATE_DIR).mkdir(exist_ok=True)
    for backend in cfg.pipeline.emulate:
        res = emulate(out, backend, _train_data(out), emulate_path(out, backend), check=True)
        done[backend] = res.get("check", {})
    return {"checks": done}


def _report(cfg: Config, out: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    from edgestem.data.noise import noise_levels
    from edgestem.degradation import degradation, write_report

    p = cfg.pipeline
    levels = noise_levels(p.report_noise_w, "w") + noise_levels(p.report_dose, "dose")
    res = degradation(out, _clean(out), levels, check_patterns=p.check_patterns, baseline=p.baseline)
    write_report(out, res, out / REPORT_DIR, data=str(_clean(out)))
    return {"stages": res["stages"]}


STEPS: list[Step] = [
    Step("simulate", ("seed", "simulate"), ("data/clean.h5",), _simulate),
    Step("noise", ("noise",), ("data/train.h5",), _noise),
    Step("train", ("preprocess", "model", "loss", "train"), (CHECKPOINT, TRAIN_REPORT), _train),
    Step(
        "distill",
        ("distill",),
        (f"{DISTILL_DIR}/{CHECKPOINT}", f"{DISTILL_DIR}/distill.json"),
        _distill,
        lambda c: c.pipeline.distill,
    ),
    Step("qat", ("qat", "pipeline.distill"), (f"{QAT_DIR}/{CHECKPOINT}", f"{QAT_DIR}/qat.json"), _qat),
    Step(
        "prune",
        ("prune",),
        (f"{PRUNE_DIR}/{CHECKPOINT}", f"{PRUNE_DIR}/prune.json"),
        _prune,
        lambda c: c.pipeline.prune,
    ),
    Step(
        "export", (), (f"{EXPORT_DIR}/encoder.onnx", f"{EXPORT_DIR}/export.json"), _export, lambda c: c.pipeline.export
    ),
    Step(
        "firmware",
        (
            "pipeline.firmware",
            "pipeline.board",
            "pipeline.clock_ns",
            "pipeline.io",
            "pipeline.reuse",
            "pipeline.strategy",
        ),
        (),
        _firmware,
        lambda c: bool(c.pipeline.firmware),
    ),
    Step("emulate", ("pipeline.emulate",), (), _emulate, lambda c: bool(c.pipeline.emulate)),
    Step(
        "report",
        ("pipeline.report_noise_w", "pipeline.report_dose", "pipeline.check_patterns", "pipeline.baseline"),
        (f"{REPORT_DIR}/report.json",),
        _report,
    ),
]


def _section(cfg: Config, dotted: str) -> Any:
    node: Any = cfg.model_dump(mode="json")
    for part in dotted.split("."):
        node = node[part]
    return node


def step_key(cfg: Config, step: Step, upstream: str) -> str:
    """Hash of what decides a step's outputs: its config sections and the key of the step before it."""
    h = hashlib.sha256(upstream.encode())
    h.update(step.name.encode())
    h.update(json.dumps({s: _section(cfg, s) for s in step.sections}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _read_record(out: Path) -> dict[str, Any]:
    path = out / RECORD
    if not path.is_file():
        return {"steps": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise EdgestemError(
            f"{path} is damaged; remove it (the steps will be re-checked) or use another --out"
        ) from None


def run_pipeline(
    cfg: Config,
    out: str | Path,
    *,
    force: bool = False,
    only: list[str] | None = None,
    echo: Callable[[str], None] = print,
    progress: Any = None,
) -> dict[str, Any]:
    """Walk :data:`STEPS` in order; returns the record written to ``OUT/pipeline.json``."""
    from edgestem.atomic import write_json
    from edgestem.runinfo import machine, versions

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = _read_record(out)
    names = [s.name for s in STEPS]
    for name in only or []:
        if name not in names:
            raise EdgestemError(f"unknown step {name!r}; the steps are {', '.join(names)}")
    save_config(cfg, out / "pipeline-config.yaml")
    upstream = ""
    ctx = {"progress": progress}
    for step in STEPS:
        key = step_key(cfg, step, upstream)
        upstream = key
        if not step.enabled(cfg) or (only and step.name not in only):
            continue
        previous = record["steps"].get(step.name, {})
        have_outputs = all((out / o).exists() for o in step.outputs)
        if previous.get("key") == key and previous.get("done") and have_outputs:
            echo(f"{step.name}: up to date")
            continue
        if previous.get("key") not in (None, key) and not force:
            raise EdgestemError(
                f"{out}: the config of step '{step.name}' changed since its outputs were made; "
                "use another --out, or --force to redo it and every step after it"
            )
        if previous.get("key") not in (None, key) or (force and previous):
            _remove_outputs(out, step)
        t0 = time.perf_counter()
        echo(f"{step.name}: running")
        record["steps"][step.name] = {"key": key, "done": False}
        write_json(out / RECORD, record)
        info = step.run(cfg, out, ctx)
        record["steps"][step.name] = {"key": key, "done": True, "seconds": round(time.perf_counter() - t0, 1), **info}
        record.update({k: v for k, v in info.items() if k in ("clean_data", "train_data")})
        record.update({"versions": versions(), "machine": machine()})
        write_json(out / RECORD, record)
        echo(f"{step.name}: done in {time.perf_counter() - t0:.0f} s")
    return record


_STEP_DIRS = {
    "train": (CHECKPOINT, TRAIN_REPORT, CONFIG),
    "distill": (DISTILL_DIR,),
    "qat": (QAT_DIR,),
    "prune": (PRUNE_DIR,),
    "export": (EXPORT_DIR,),
    "firmware": (FIRMWARE_DIR,),
    "emulate": (EMULATE_DIR,),
    "report": (REPORT_DIR,),
}


def _remove_outputs(out: Path, step: Step) -> None:
    """Remove a stale step's outputs (only edgestem's own files inside OUT)."""
    for rel in _STEP_DIRS.get(step.name, step.outputs):
        p = out / rel
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


__all__ = ["STEPS", "Step", "run_pipeline", "step_key"]
