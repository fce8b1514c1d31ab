"""edgestem run: steps in order, up-to-date steps skipped, changed config refused, interrupted steps resumed."""

import json

import pytest

from edgestem.config import load_config
from edgestem.errors import EdgestemError
from edgestem.pipeline import STEPS, run_pipeline

SMALL = {
    "simulate.scan": 8,
    "simulate.size": 64,
    "preprocess.size": 32,
    "noise.model": "background",
    "noise.w": 0.25,
    "model.encoder.channels": [4, 8],
    "model.encoder.hidden": 8,
    "train.epochs": 1,
    "train.batch_size": 16,
    "qat.epochs": 1,
    "pipeline.export": False,
    "pipeline.firmware": [],
    "pipeline.emulate": [],
    "pipeline.report_noise_w": [0.0, 0.5],
    "pipeline.baseline": False,
}


def test_steps_are_in_pipeline_order():
    assert [s.name for s in STEPS] == [
        "simulate",
        "noise",
        "train",
        "distill",
        "qat",
        "prune",
        "export",
        "firmware",
        "emulate",
        "report",
    ]


def test_pipeline_runs_skips_and_refuses_changed_config(tmp_path):
    cfg = load_config(None, SMALL)
    lines = []
    rec = run_pipeline(cfg, tmp_path / "p", echo=lines.append)
    done = [n for n, s in rec["steps"].items() if s["done"]]
    assert done == ["simulate", "noise", "train", "qat", "report"]
    report = json.loads((tmp_path / "p" / "report" / "report.json").read_text())
    assert {"float", "qat"} <= set(report["metrics"]["stages"])
    assert (tmp_path / "p" / "report" / "report.md").is_file() and (tmp_path / "p" / "report" / "report.png").is_file()
    # Again: everything is up to date, nothing reruns.
    lines.clear()
    run_pipeline(cfg, tmp_path / "p", echo=lines.append)
    assert all(line.endswith("up to date") for line in lines), lines
    # A changed QAT config is refused (its outputs would no longer match) unless forced.
    changed = load_config(None, {**SMALL, "qat.bits": 4})
    with pytest.raises(EdgestemError, match="step 'qat' changed"):
        run_pipeline(changed, tmp_path / "p", echo=lines.append)
    lines.clear()
    rec = run_pipeline(changed, tmp_path / "p", force=True, echo=lines.append)
    assert "train: up to date" in lines and "qat: running" in lines and "report: running" in lines
    assert json.loads((tmp_path / "p" / "qat" / "qat.json").read_text())["metrics"]["bits"]["bits"] == 4


def test_interrupted_step_resumes(tmp_path):
    cfg = load_config(None, {**SMALL, "train.epochs": 2})
    run_pipeline(cfg, tmp_path / "p", only=["simulate", "noise", "train"], echo=lambda s: None)
    record = json.loads((tmp_path / "p" / "pipeline.json").read_text())
    # Simulate an interruption after the checkpoint was written but before the step finished.
    record["steps"]["train"]["done"] = False
    (tmp_path / "p" / "pipeline.json").write_text(json.dumps(record))
    (tmp_path / "p" / "train.json").unlink()
    lines = []
    run_pipeline(cfg, tmp_path / "p", only=["train"], echo=lines.append)
    assert "train: running" in lines and (tmp_path / "p" / "train.json").is_file()


def test_unknown_step_is_an_error(tmp_path):
    with pytest.raises(EdgestemError, match="unknown step 'synth'"):
        run_pipeline(load_config(None, SMALL), tmp_path, only=["synth"])


def test_clean_data_is_clean_and_noise_is_drawn_once(tmp_path):
    import numpy as np

    from edgestem.data.io import open_4dstem

    cfg = load_config(None, SMALL)
    run_pipeline(cfg, tmp_path / "p", only=["simulate", "noise"], echo=lambda s: None)
    with open_4dstem(tmp_path / "p" / "data" / "clean.h5") as ds:
        clean = np.concatenate([b for _, b in ds.iter_rows()])
    with open_4dstem(tmp_path / "p" / "data" / "train.h5") as ds:
        noisy = np.concatenate([b for _, b in ds.iter_rows()])
    # Noise-free simulated patterns are smooth and never exactly zero-count quantised; the training
    # data holds Poisson counts at counts_per_probe: multiples of 1 / counts_per_probe.
    counts = noisy * cfg.noise.counts_per_probe
    assert np.allclose(counts, np.round(counts), atol=1e-3)
    assert not np.allclose(clean * cfg.noise.counts_per_probe, np.round(clean * cfg.noise.counts_per_probe), atol=1e-3)
