"""Pruning: per-layer masks hit the target, stay through fine-tuning and resume, channels really go."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgestem.cli import app
from edgestem.compress.prune import (
    apply_masks,
    channel_keep,
    cost,
    layers_to_prune,
    magnitude_masks,
    mask_channels,
    prune_run,
    scheduled_sparsity,
    shrink_channels,
    weight_layers,
)
from edgestem.config import load_config
from edgestem.errors import ConfigError, EdgestemError
from edgestem.rundir import load_checkpoint, model_from_checkpoint


def prune_cfg(**prune):
    return load_config(None, {f"prune.{k}": v for k, v in prune.items()})


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory, tiny_qat_run):
    """A copy of the session's tiny float run (BatchNorm on) with its 6-bit QAT model in RUN/qat."""
    pytest.importorskip("brevitas.nn")
    run = tmp_path_factory.mktemp("qat") / "run"
    shutil.copytree(tiny_qat_run, run)
    return run


@pytest.fixture(scope="module")
def float_run(tmp_path_factory, tiny_qat_run):
    """The same float run without its QAT model: ``--from auto`` then prunes the float model."""
    run = tmp_path_factory.mktemp("float") / "run"
    shutil.copytree(tiny_qat_run, run, ignore=shutil.ignore_patterns("qat"))
    return run


def test_schedule_reaches_the_target_in_equal_steps():
    assert [scheduled_sparsity(0.6, 3, 6, e) for e in range(6)] == pytest.approx([0.2, 0.2, 0.4, 0.4, 0.6, 0.6])
    assert scheduled_sparsity(0.5, 4, 2, 0) == 0.25 and scheduled_sparsity(0.5, 4, 2, 1) == 0.5
    assert scheduled_sparsity(0.5, 1, 3, 0) == 0.5


def test_masks_hit_the_target_per_layer_and_only_grow(float_run):
    model, cfg = model_from_checkpoint(load_checkpoint(float_run))
    layers = layers_to_prune(cfg)
    assert layers == ["conv1", "conv2", "fc1"]
    first = magnitude_masks(model, 0.3, layers)
    for name, m in first.items():
        n = m.numel()
        assert int((m == 0).sum()) == int(np.floor(0.3 * n + 0.5)), name
    apply_masks(model, first)
    second = magnitude_masks(model, 0.7, layers)
    mods = weight_layers(model)
    for name, m in second.items():
        assert int((m == 0).sum()) == int(np.floor(0.7 * m.numel() + 0.5))
        assert torch.all(m[first[name] == 0] == 0), "a pruned weight came back"
        # the weights pruned first are the smallest in magnitude (conv ranked with its BatchNorm folded)
    w = mods["fc1"].weight.detach().abs()
    assert w[first["fc1"] == 0].max() <= w[first["fc1"] == 1].min()


class Interrupted(Exception):
    pass


def _stop_after_first_epoch(stage, done, total, loss):
    if done > total // 2:  # first batch of epoch 2 of 2: epoch 1's checkpoint is written
        raise Interrupted


def test_unstructured_fine_tuning_keeps_zeros_through_steps_and_resume(tmp_path, float_run):
    cfg = prune_cfg(sparsity=0.5, steps=2, epochs=2)
    full = prune_run(float_run, cfg, out=tmp_path / "full")
    assert [s["sparsity"] for s in full["metrics"]["schedule"]] == [0.25, 0.5]
    out = tmp_path / "p"
    with pytest.raises(Interrupted):
        prune_run(float_run, cfg, out=out, progress=_stop_after_first_epoch)
    first = load_checkpoint(out)
    assert first["epoch"] == 1 and not (out / "prune.json").exists()
    rep = prune_run(float_run, cfg, out=out, resume=True)
    state = load_checkpoint(out)
    assert state["epoch"] == 2 and state["stage"] == "prune"
    for key in (k for k in first["model"] if k.endswith("weight_mask")):
        mask = state["model"][key]
        assert (first["model"][key] == 0).float().mean() == pytest.approx(0.25, abs=0.01)
        assert torch.all(mask[first["model"][key] == 0] == 0), "a mask was lost on resume"
        assert (mask == 0).float().mean() == pytest.approx(0.5, abs=0.01)
        assert torch.all(state["model"][key.replace("weight_mask", "weight")][mask == 0] == 0), "pruned weights moved"
    uninterrupted = load_checkpoint(tmp_path / "full")["model"]
    assert all(torch.equal(uninterrupted[k], v) for k, v in state["model"].items())
    m = rep["metrics"]
    for name in ("conv1", "conv2", "fc1"):
        assert m["layers"][name]["zeros"] == pytest.approx(0.5, abs=0.01)
    assert m["layers"]["fc2"]["zeros"] == 0
    assert m["after"]["macs"] == m["before"]["macs"] > m["after"]["effective_macs"]
    assert m["after"]["nonzero_weights"] < m["before"]["nonzero_weights"]
    assert set(m["mae_vs_source"]) == {"exx", "eyy", "exy", "theta"}
    assert [r["model"] for r in m["mae"]] == ["source", "pruned"]
    saved = json.loads((out / "prune.json").read_text())
    assert saved["stage"] == "prune" and "torch" in saved["versions"] and saved["seconds"] > 0
    for name in ("config.yaml", "checkpoint.pt", "train.json"):
        assert (out / name).is_file()


@pytest.mark.parametrize("source", ["float_run", "qat_run"])
def test_shrunk_model_equals_the_masked_one(source, request):
    from edgestem.rundir import layer_factory

    run = request.getfixturevalue(source)
    state = load_checkpoint(run / "qat" if source == "qat_run" else run)
    model, cfg = model_from_checkpoint(state)
    keep = channel_keep(model, 0.5, layers_to_prune(cfg, structured=True))
    assert {k: len(v) for k, v in keep.items()} == {"conv1": 2, "conv2": 4, "fc1": 4}
    shrunk, small = shrink_channels(model, cfg, keep, layer_factory(state))
    masked = copy.deepcopy(model)
    mask_channels(masked, keep)
    assert small.model.encoder.channels == [2, 4] and small.model.encoder.hidden == 4
    assert type(shrunk.encoder.conv1) is type(model.encoder.conv1)
    x = torch.from_numpy(np.random.default_rng(0).random((16, 1, 32, 32), dtype=np.float32) * 3)
    shrunk.eval(), masked.eval(), model.eval()
    with torch.no_grad():
        a, b, c = shrunk.encoder(x), masked.encoder(x), model.encoder(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, c)  # the removed channels did matter
    before, after = cost(model, 32), cost(shrunk, 32)
    assert after["parameters"] < before["parameters"] // 2 and after["macs"] < before["macs"] // 2


def test_structured_run_writes_a_smaller_model(tmp_path, float_run):
    rep = prune_run(float_run, prune_cfg(sparsity=0.5, structured=True, epochs=1), out=tmp_path / "s")
    model, cfg = model_from_checkpoint(load_checkpoint(tmp_path / "s"))
    assert cfg.model.encoder.channels == [2, 4] and cfg.model.encoder.batchnorm
    assert load_config(tmp_path / "s" / "config.yaml").model.encoder.channels == [2, 4]
    m = rep["metrics"]
    assert m["channels"] == {"before": [4, 8, 8], "after": [2, 4, 4]} and m["layers"]["conv2"]["channels"] == [8, 4]
    assert m["after"]["parameters"] < m["before"]["parameters"] and m["after"]["macs"] < m["before"]["macs"]


def test_pruning_a_qat_model_keeps_it_quantized(tmp_path, qat_run):
    import brevitas.nn as qnn

    rep = prune_run(qat_run, prune_cfg(sparsity=0.5, steps=1, epochs=1))  # --from auto: RUN/qat exists
    state = load_checkpoint(qat_run / "prune")
    assert state["quant"] == load_checkpoint(qat_run / "qat")["quant"] and state["prune"]["from"] == "qat"
    model, _ = model_from_checkpoint(state)
    assert isinstance(model.encoder.conv1, qnn.QuantConv2d) and isinstance(model.encoder.fc1, qnn.QuantLinear)
    for name in ("conv1", "conv2", "fc1"):
        row = rep["metrics"]["layers"][name]
        assert row["zeros"] == pytest.approx(0.5, abs=0.01) and row["int_zeros"] >= row["zeros"]
        w = model.encoder.get_submodule(name)
        assert torch.all(w.quant_weight().int()[w.weight_mask == 0] == 0)
    s = prune_run(qat_run, prune_cfg(sparsity=0.5, structured=True, epochs=1), source="qat", out=tmp_path / "s")
    small, cfg = model_from_checkpoint(load_checkpoint(tmp_path / "s"))
    assert cfg.model.encoder.channels == [2, 4] and isinstance(small.encoder.conv2, qnn.QuantConv2d)
    assert s["metrics"]["after"]["parameters"] < s["metrics"]["before"]["parameters"]


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, float_run):
    out = tmp_path / "none"
    with pytest.raises(ConfigError, match="no layer named 'conv9'"):
        prune_run(float_run, prune_cfg(layers=["conv1", "conv9"]), out=out)
    with pytest.raises(ConfigError, match="0 of its 4 channels"):
        prune_run(float_run, prune_cfg(sparsity=0.9, structured=True), out=out)
    with pytest.raises(ConfigError, match="fc2"):
        prune_run(float_run, prune_cfg(structured=True, layers=["fc2"]), out=out)
    with pytest.raises(EdgestemError, match="edgestem qat"):
        prune_run(float_run, prune_cfg(), source="qat", out=out)
    with pytest.raises(EdgestemError, match="no checkpoint.pt"):
        prune_run(tmp_path / "empty", prune_cfg(), out=out)
    with pytest.raises(EdgestemError, match="no such data file"):
        prune_run(float_run, prune_cfg(), out=out, data=tmp_path / "missing.h5")
    assert not out.exists()
    runner = CliRunner()
    for args in (["--sparsity", "1.0"], ["--sparsity", "-0.1"], ["--from", "int8"]):
        r = runner.invoke(app, ["prune", "--run", str(float_run), "--out", str(out), *args])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "error" in r.output, r.output
    assert not out.exists()


def test_cli_prunes_and_reports(tmp_path, float_run):
    r = CliRunner().invoke(
        app,
        ["prune", "--run", str(float_run), "--sparsity", "0.5", "--epochs", "1", "--out", str(tmp_path / "c"), "-q"],
    )
    assert r.exit_code == 0, r.output
    assert "pruned" in r.output and "MAC" in r.output
    report = json.loads((tmp_path / "c" / "prune.json").read_text())
    assert report["metrics"]["from"] == "float" and report["config"]["prune"]["sparsity"] == 0.5
    assert CliRunner().invoke(app, ["prune", "--help"]).exit_code == 0
