"""The robustness study: the grid's table and figures, failed cells, a killed study resumed, the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import edgestem.train
from edgestem.cli import app
from edgestem.config import load_config
from edgestem.errors import EdgestemError
from edgestem.robustness import BASES, METRICS, cell_config, grid_markdown, run_study, training_rows

QUICK = Path(__file__).parents[1] / "configs" / "robustness-quick.yaml"


def quick(**overrides):
    return load_config(QUICK, overrides)


def test_quick_study(tmp_path):
    """The quick study (3 rows x 2 seeds x 2 test levels), run once (one test: under pytest-xdist a
    module fixture would run once per worker)."""
    out = tmp_path / "s"
    res = run_study(quick(), out, log=lambda line: None)
    check_table(out, res)
    check_grid(res)
    check_losses(out, res)


def check_table(out, res):
    cfg = quick()
    rows = list(csv.DictReader((out / "results.csv").open()))
    n_cells = len(training_rows(cfg.robustness)) * len(cfg.robustness.seeds)
    n_test = len(cfg.robustness.test_levels)
    ccstae = [r for r in rows if r["method"] == "ccstae"]
    assert len(ccstae) == n_cells * n_test * len(BASES) * len(METRICS)
    assert {r["train"] for r in ccstae} == {"0", "0.5", "mixed"}
    assert all(r["status"] == "ok" and np.isfinite(float(r["value"])) for r in ccstae)
    # the classical fit, against the labels, in every test column
    classical = [r for r in rows if r["method"] == "classical"]
    assert {float(r["test"]) for r in classical} == {0.0, 0.5} and {r["base"] for r in classical} == {"noise-free"}
    assert json.loads((out / "results.json").read_text()) == res["rows"]
    for name in ("heatmap-noise-free", "heatmap-same-noise", "curves-noise-free", "curves-same-noise"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000
    report = json.loads((out / "robustness.json").read_text())
    assert report["metrics"]["cells"] == {"ok": n_cells, "failed": 0}
    assert "mixed_beats_every_single_level" in report["metrics"]["findings"]


def check_grid(res):
    """Means and sample standard deviations over seeds."""
    g = res["grids"]["noise-free"]["exx"]
    assert g["rows"] == ["0", "0.5", "mixed", "classical"] and g["cols"] == ["0", "0.5"]
    values = [
        r["value"]
        for r in res["rows"]
        if (r["train"], r["test"], r["base"], r["metric"]) == ("0", 0.5, "noise-free", "exx")
    ]
    assert len(values) == 2
    assert g["mean"][0, 1] == pytest.approx(np.mean(values)) and g["std"][0, 1] == pytest.approx(np.std(values, ddof=1))
    assert "| mixed |" in grid_markdown(g)
    # the same-noise base has losses for every row, and no classical row (it is the reference there)
    assert "classical" not in res["grids"]["same-noise"]["loss"]["rows"]


def check_losses(out, res):
    """The same-noise loss is the training loss on the test patterns."""
    from edgestem.data.dataset import load_data
    from edgestem.evaluate import score_patterns
    from edgestem.rundir import load_checkpoint, model_from_checkpoint

    model, cfg = model_from_checkpoint(load_checkpoint(out / "runs" / "0-seed0"))
    x = load_data(out / "data" / "test-0.5.h5", cfg).x
    _, loss = score_patterns(model, x, {"same": x}, cfg.loss)
    assert loss["same"] == pytest.approx(edgestem.train.evaluate_loss(model, x, cfg)["total"], rel=1e-5)
    row = [
        r["value"]
        for r in res["rows"]
        if (r["train"], r["seed"], r["test"], r["base"], r["metric"]) == ("0", 0, 0.5, "same-noise", "loss")
    ]
    assert row == [pytest.approx(loss["same"], rel=1e-5)]


def test_cells_train_with_their_seed_and_noise():
    cfg = quick()
    c = cell_config(cfg, [0.0, 0.5], 7)
    assert c.seed == 7 and c.train.augment.model == "background" and c.train.augment.levels == [0.0, 0.5]
    assert c.simulate == cfg.simulate and cfg.seed == 0


SMALL = {"robustness.train_levels": [0.5], "robustness.test_levels": [0.5], "robustness.seeds": [0, 1]}


def test_failed_cell_is_recorded_and_retried_on_resume(tmp_path, monkeypatch):
    real = edgestem.train.train
    calls = []

    def flaky(cfg, data, run, **kw):
        calls.append(Path(run).name)
        if cfg.seed == 1 and cfg.train.augment.levels == [0.5]:
            raise RuntimeError("out of luck")
        return real(cfg, data, run, **kw)

    monkeypatch.setattr(edgestem.train, "train", flaky)
    cfg = quick(**SMALL)
    res = run_study(cfg, tmp_path / "s", log=lambda line: None)
    assert res["summary"]["cells"] == {"ok": 3, "failed": 1}
    failed = [r for r in res["rows"] if r["status"] == "failed"]
    assert failed and all(r["value"] is None and r["error"] == "RuntimeError: out of luck" for r in failed)
    assert {(r["train"], r["seed"]) for r in failed} == {("0.5", 1)}

    monkeypatch.setattr(edgestem.train, "train", lambda *a, **kw: calls.append("again") or real(*a, **kw))
    res = run_study(cfg, tmp_path / "s", resume=True, log=lambda line: None)
    assert res["summary"]["cells"] == {"ok": 4, "failed": 0}
    assert calls.count("again") == 1  # only the failed cell trained again


def test_killed_study_resumes_where_it_stopped(tmp_path, monkeypatch):
    real = edgestem.train.train
    trained = []

    def killed_at_third(cfg, data, run, **kw):
        if len(trained) == 2:
            raise KeyboardInterrupt
        trained.append(Path(run).name)
        return real(cfg, data, run, **kw)

    monkeypatch.setattr(edgestem.train, "train", killed_at_third)
    cfg = quick(**SMALL)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, tmp_path / "s", log=lambda line: None)
    assert len(list((tmp_path / "s" / "cells").glob("*.json"))) == 2
    monkeypatch.setattr(edgestem.train, "train", lambda *a, **kw: trained.append(Path(a[2]).name) or real(*a, **kw))
    res = run_study(cfg, tmp_path / "s", resume=True, log=lambda line: None)
    assert res["summary"]["cells"]["ok"] == 4 and len(trained) == 4  # two before the kill, two after


def test_existing_study_needs_resume_and_the_same_config(tmp_path):
    one_seed = {**SMALL, "robustness.seeds": [0], "robustness.mixed": []}
    cfg = quick(**one_seed)
    run_study(cfg, tmp_path / "s", log=lambda line: None)
    with pytest.raises(EdgestemError, match="--resume"):
        run_study(cfg, tmp_path / "s", log=lambda line: None)
    with pytest.raises(EdgestemError, match="another config"):
        run_study(quick(**SMALL), tmp_path / "s", resume=True, log=lambda line: None)
    # sections the results do not depend on may change (a default of another stage, say)
    assert run_study(quick(**one_seed, **{"qat.bits": 4}), tmp_path / "s", resume=True, log=lambda line: None)
    with pytest.raises(EdgestemError, match="nothing to resume"):
        run_study(cfg, tmp_path / "new", resume=True, log=lambda line: None)


def test_levels_outside_the_axis_are_config_errors(tmp_path):
    with pytest.raises(EdgestemError, match="dose 0"):
        run_study(quick(**{"robustness.axis": "dose"}), tmp_path / "s")
    with pytest.raises(EdgestemError, match="at least one training row"):
        quick(**{"robustness.train_levels": [], "robustness.mixed": []})


def test_cli_runs_a_study_and_refuses_to_overwrite_it(tmp_path):
    runner = CliRunner()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(QUICK.read_text().replace("seeds: [0, 1]", "seeds: [0]").replace("mixed: [0, 0.5]", "mixed: []"))
    r = runner.invoke(app, ["robustness", "--config", str(cfg), "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert "| 0.5 |" in r.output and (tmp_path / "s" / "results.csv").is_file()
    r = runner.invoke(app, ["robustness", "--config", str(cfg), "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "--resume" in r.output
