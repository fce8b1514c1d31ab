"""The training loop: loss goes down, resume reproduces, bad input and divergence are caught."""

import json

import numpy as np
import pytest
import torch

from edgestem.config import load_config
from edgestem.data.io import write_4dstem
from edgestem.errors import DataError, EdgestemError
from edgestem.rundir import load_checkpoint, model_from_checkpoint
from edgestem.train import TrainingError, train

TINY = {
    "model.encoder.channels": [4, 8, 8],
    "model.encoder.hidden": 8,
    "train.batch_size": 16,
    "train.lr": 1e-3,
    "seed": 2,
}


def cfg(**extra):
    return load_config(None, {**TINY, **extra})


def test_tiny_run_lowers_the_loss_and_writes_the_run(tmp_path, tiny_h5):
    rep = train(cfg(**{"train.epochs": 4}), tiny_h5, tmp_path / "run")
    losses = [h["train_total"] for h in rep["history"]]
    assert losses[-1] < losses[0]
    for name in ("config.yaml", "checkpoint.pt", "train.json"):
        assert (tmp_path / "run" / name).is_file()
    saved = json.loads((tmp_path / "run" / "train.json").read_text())
    assert saved["encoder"]["parameters"] > 0 and saved["symmetry"] == "hex" and "machine" in saved
    model, c = model_from_checkpoint(load_checkpoint(tmp_path / "run"))
    assert c.train.epochs == 4 and model.dictionary.shape == (1, 1, 64, 64)


def test_resume_equals_uninterrupted(tmp_path, tiny_h5):
    train(cfg(**{"train.epochs": 3}), tiny_h5, tmp_path / "full")
    train(cfg(**{"train.epochs": 1}), tiny_h5, tmp_path / "part")
    train(cfg(**{"train.epochs": 3}), tiny_h5, tmp_path / "part", resume=True)
    a = load_checkpoint(tmp_path / "full")["model"]
    b = load_checkpoint(tmp_path / "part")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert len(load_checkpoint(tmp_path / "part")["history"]) == 3


def test_noise_augmentation_is_seeded(tmp_path, tiny_h5):
    aug = {"train.epochs": 1, "train.augment.model": "background", "train.augment.levels": [0.1, 0.5]}
    train(cfg(**aug), tiny_h5, tmp_path / "a")
    train(cfg(**aug), tiny_h5, tmp_path / "b")
    a, b = load_checkpoint(tmp_path / "a")["model"], load_checkpoint(tmp_path / "b")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = load_checkpoint(tmp_path / "a")["history"][0]["train_total"]
    train(cfg(**{"train.epochs": 1}), tiny_h5, tmp_path / "clean")
    assert c != load_checkpoint(tmp_path / "clean")["history"][0]["train_total"]


def test_refuses_to_overwrite_and_to_resume_nothing(tmp_path, tiny_h5):
    train(cfg(**{"train.epochs": 1}), tiny_h5, tmp_path / "run")
    with pytest.raises(EdgestemError, match="--resume"):
        train(cfg(**{"train.epochs": 1}), tiny_h5, tmp_path / "run")
    with pytest.raises(EdgestemError, match="nothing to resume"):
        train(cfg(), tiny_h5, tmp_path / "empty", resume=True)


def test_resume_with_other_data_is_refused(tmp_path, tiny_h5):
    train(cfg(**{"train.epochs": 1}), tiny_h5, tmp_path / "run")
    other = write_4dstem(tmp_path / "other.h5", np.ones((8, 8, 64, 64), np.float32))
    with pytest.raises(DataError, match="not the data"):
        train(cfg(**{"train.epochs": 2}), other, tmp_path / "run", resume=True)


def test_nan_patterns_are_rejected(tmp_path):
    x = np.ones((8, 8, 64, 64), np.float32)
    x[2, 3, 0, 0] = np.nan
    p = write_4dstem(tmp_path / "nan.h5", x)
    with pytest.raises(DataError, match="NaN"):
        train(cfg(), p, tmp_path / "run")


def test_divergence_stops_with_a_clear_message(tmp_path, tiny_h5):
    with pytest.raises(TrainingError, match="lower train.lr"):
        train(cfg(**{"train.epochs": 2, "train.lr": 1e6}), tiny_h5, tmp_path / "run")


def test_checkpoint_from_another_version_is_refused(tmp_path, tiny_h5):
    train(cfg(**{"train.epochs": 1}), tiny_h5, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run")
    state["format"] = 99
    state["version"] = "9.9"
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(EdgestemError, match="not readable by edgestem"):
        load_checkpoint(tmp_path / "run")
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(EdgestemError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path / "run")


def test_learning_verdict_names_the_components_still_growing():
    from edgestem.train import learning_verdict

    hist = [
        {"epoch": e, "val_total": 10.0 / e, "spread_sx": 1e-4 * e, "spread_sy": 0.02, "spread_sh": 0.01}
        | {"spread_rot": 2.0}
        for e in range(1, 13)
    ]
    v = learning_verdict(hist)
    assert v["checked"] and v["still_learning"] == ["sx"]
    assert v["spread_growth_last_quarter"]["sx"] > 0.1 and v["loss_fall_last_quarter"] > 0
    flat = [{**h, "spread_sx": 0.02} for h in hist]
    assert learning_verdict(flat)["still_learning"] == []
    assert learning_verdict(hist[:2]) == {"checked": False}


def test_a_budget_in_steps_sets_the_epochs_and_spreads_are_logged(tmp_path, tiny_h5):
    rep = train(cfg(**{"train.steps": 7, "train.epochs": 99}), tiny_h5, tmp_path / "run")
    per_epoch = -(-rep["patterns"]["train"] // 16)
    assert rep["epochs"] == -(-7 // per_epoch) and rep["steps"] == rep["epochs"] * per_epoch
    assert {"spread_sx", "spread_sy", "spread_sh", "spread_rot"} <= set(rep["history"][-1])
    assert "learning" in rep
