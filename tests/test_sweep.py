"""Optuna sweeps: the search space, pruning, reports, and several workers sharing one SQLite study."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgestem.config import load_config
from edgestem.errors import ConfigError, EdgestemError

optuna = pytest.importorskip("optuna")

from edgestem.sweep import apply_params, open_study, run_sweep, storage_url  # noqa: E402

QUICK = Path(__file__).parents[1] / "configs" / "robustness-quick.yaml"


def quick(**overrides):
    return load_config(QUICK, overrides)


def quiet(line):
    return None


def test_params_set_config_keys_and_the_encoder_shape():
    cfg = load_config(None, {"model.encoder.channels": [8, 16, 32, 32]})
    c = apply_params(cfg, {"train.lr": 1e-3, "seed": 5, "encoder_width": 0.5, "encoder_depth": 3})
    assert c.train.lr == 1e-3 and c.seed == 5 and c.model.encoder.channels == [4, 8, 16]
    assert apply_params(cfg, {"encoder_depth": 5}).model.encoder.channels == [8, 16, 32, 32, 32]
    with pytest.raises(ConfigError, match="not a config key"):
        apply_params(cfg, {"train.nope": 1})
    with pytest.raises(ConfigError, match="invalid config"):
        apply_params(cfg, {"train.lr": -1.0})


def test_storage_is_a_url_or_a_sqlite_file(tmp_path):
    assert storage_url("postgresql://host/db") == "postgresql://host/db"
    assert storage_url(str(tmp_path / "s.db")) == f"sqlite:///{tmp_path / 's.db'}"


def test_sweep_runs_trials_and_writes_a_report(tmp_path):
    res = run_sweep(quick(), str(tmp_path / "s.db"), 2, report=tmp_path / "rep", log=quiet)
    assert res["trials"] == {"complete": 2} and res["best"]["value"] > 0
    assert set(res["best"]["params"]) == set(quick().sweep.space)
    for name in ("sweep-history.png", "sweep-parallel.png", "sweep.json"):
        assert (tmp_path / "rep" / name).is_file()
    # the same study, continued by another call: trials add up
    res = run_sweep(quick(), str(tmp_path / "s.db"), 1, log=quiet)
    assert res["trials"] == {"complete": 3}
    # no trial: only the report of the study as it stands
    res = run_sweep(quick(), str(tmp_path / "s.db"), 0, report=tmp_path / "rep0", log=quiet)
    assert res["trials"] == {"complete": 3} and (tmp_path / "rep0" / "sweep-importance.png").is_file()


def test_bad_trials_are_pruned(tmp_path):
    cfg = quick(**{"train.epochs": 2})
    study = open_study(cfg, str(tmp_path / "s.db"))
    # a finished trial that was perfect at every epoch: any real trial is worse than its median
    study.add_trial(optuna.trial.create_trial(value=0.0, intermediate_values={1: 0.0, 2: 0.0}))
    res = run_sweep(cfg, str(tmp_path / "s.db"), 1, log=quiet)
    assert res["trials"] == {"complete": 1, "pruned": 1}


def test_a_worker_with_another_config_is_refused(tmp_path):
    run_sweep(quick(), str(tmp_path / "s.db"), 1, log=quiet)
    with pytest.raises(EdgestemError, match="another config"):
        run_sweep(quick(**{"train.lr": 0.01}), str(tmp_path / "s.db"), 1, log=quiet)


def test_two_workers_share_one_sqlite_study_and_lose_no_trial(tmp_path):
    db = tmp_path / "shared.db"
    cmd = [sys.executable, "-m", "edgestem.cli", "sweep", "--config", str(QUICK), "--storage", str(db), "-n", "2"]
    # Two workers on 2 cores: OpenMP threads that spin while waiting would slow both many times over.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    workers = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="edgestem-sweep", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    # seeded by trial number: the two workers did not suggest the same parameters
    assert len({str(sorted(t.params.items())) for t in trials}) == 4


def test_a_diverging_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    cfg = quick(**{"sweep.space": {"train.lr": {"type": "float", "low": 1e5, "high": 1e6}}})
    res = run_sweep(cfg, str(tmp_path / "s.db"), 2, log=quiet)
    assert res["trials"] == {"fail": 2} and res["best"] is None
    assert all("lower train.lr" in t["error"] for t in res["all"])
