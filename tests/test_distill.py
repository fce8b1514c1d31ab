"""Distillation: a label-free teacher's maps, the encoder fine-tuned on them, the stage's files and resume."""

import json

import numpy as np
import pytest
import torch

from edgestem import strain as S
from edgestem.config import DistillConfig, load_config
from edgestem.data.io import open_4dstem, write_4dstem
from edgestem.distill import distill_run, teacher_maps
from edgestem.errors import EdgestemError
from edgestem.evaluate import predict_affine
from edgestem.train import load_checkpoint, load_data, model_from_checkpoint, train

TINY = {
    "model.encoder.channels": [4, 8, 8],
    "model.encoder.hidden": 8,
    "train.batch_size": 16,
    "train.lr": 1e-3,
    "train.epochs": 2,
    "seed": 2,
}


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory, tiny_h5):
    """The tiny scan without its labels: distillation must not need them."""
    with open_4dstem(tiny_h5) as ds:
        x = np.stack([b for _, b in ds.iter_rows()]).reshape(*ds.shape)
        attrs = dict(ds.attrs)
    path = tmp_path_factory.mktemp("nolabels") / "scan.h5"
    write_4dstem(path, x.astype(np.float32), attrs={k: v for k, v in attrs.items() if k == "lattice"})
    with open_4dstem(path) as ds:
        assert not ds.labels
    return path


@pytest.fixture(scope="module")
def float_run(tmp_path_factory, unlabelled):
    run = tmp_path_factory.mktemp("distill") / "run"
    train(load_config(None, TINY), unlabelled, run)
    return run


def _teacher_gap(run, data, A_t, ok):
    """RMS difference of the head parameters from the teacher's, each in units of the teacher's spread."""
    from edgestem.model.ccstae import regression_scale, target_params

    model, cfg = model_from_checkpoint(load_checkpoint(run))
    pred, target = target_params(predict_affine(model, load_data(data, cfg).x)), target_params(A_t)
    scale = regression_scale(cfg.distill.unit)
    return float(np.sqrt(np.mean(((pred[ok] - target[ok]) / scale) ** 2)))


def test_distilled_encoder_moves_towards_the_teacher(tmp_path, float_run, unlabelled):
    out = tmp_path / "distill"
    rep = distill_run(float_run, DistillConfig(epochs=20, lr=3e-4), out=out)
    for name in ("checkpoint.pt", "config.yaml", "distill.json", "round-1/targets.npz", "round-1/train.json"):
        assert (out / name).is_file(), name
    with np.load(out / "round-1" / "targets.npz") as z:
        A_t, ok = z["A"], z["ok"]
    assert ok.sum() > len(ok) // 2
    before, after = _teacher_gap(float_run, unlabelled, A_t, ok), _teacher_gap(out, unlabelled, A_t, ok)
    assert after < 0.95 * before, (before, after)
    hist = json.loads((out / "round-1" / "train.json").read_text())["history"]
    assert hist[-1]["train_distill"] < 0.5 * hist[0]["train_distill"]
    saved = json.loads((out / "distill.json").read_text())
    assert saved["stage"] == "distill" and saved["metrics"]["rounds"][0]["teacher_mapped"] == int(ok.sum())
    hist = rep["metrics"]["rounds"][0]["final"]
    assert "train_distill" in hist and "train_cycle" in hist
    # The distilled run is a float run like any other: same encoder, stage recorded.
    state = load_checkpoint(out)
    assert state["stage"] == "distill" and not state.get("quant")
    with pytest.raises(EdgestemError, match="--resume"):
        distill_run(float_run, DistillConfig(epochs=20, lr=3e-4), out=out)


def test_resume_continues_a_killed_round_to_the_same_weights(tmp_path, float_run):
    dcfg = DistillConfig(epochs=3, lr=3e-4)
    distill_run(float_run, dcfg, out=tmp_path / "full")

    def kill(stage, done, total, loss):  # killed early in the second epoch: epoch 1's checkpoint is on disk
        if done > total // 3 + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill_run(float_run, dcfg, out=tmp_path / "part", progress=kill)
    assert load_checkpoint(tmp_path / "part" / "round-1")["epoch"] == 1
    distill_run(float_run, dcfg, out=tmp_path / "part", resume=True)
    a, b = load_checkpoint(tmp_path / "full")["model"], load_checkpoint(tmp_path / "part")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_classical_teacher_maps_reproduce_the_classical_strain(tiny_h5):
    """Teacher maps brought into the encoder's frame give back the classical fit's maps exactly."""
    from edgestem.baseline import classical_strain

    with open_4dstem(tiny_h5) as ds:
        raw = np.stack([b for _, b in ds.iter_rows()]).reshape(-1, *ds.pattern_shape)
        scan = ds.scan_shape
    rng = np.random.default_rng(0)
    A_enc = S.affine_from_params(
        1 + 0.01 * rng.standard_normal(len(raw)), 1 + 0.01 * rng.standard_normal(len(raw)), 0.0, 3.0
    )
    A, ok = teacher_maps("classical", raw, A_enc, scan, "hex")
    ref = classical_strain(raw.reshape(*scan, *raw.shape[-2:]), symmetry="hex").maps
    got = S.strain_from_affine(A.reshape(*scan, 2, 2), symmetry="hex")
    for k in ("exx", "eyy", "exy"):
        np.testing.assert_allclose(got[k][ok.reshape(scan)], ref[k][ok.reshape(scan)], atol=1e-6)
    np.testing.assert_allclose(got["theta"][ok.reshape(scan)], ref["theta"][ok.reshape(scan)], atol=1e-4)


def test_unknown_teacher_and_quantized_source_are_refused(tmp_path, float_run, tiny_qat_run):
    with pytest.raises(EdgestemError, match="unknown distill.teacher"):
        teacher_maps("oracle", np.zeros((4, 8, 8)), np.tile(np.eye(2), (4, 1, 1)), (2, 2), None)
    with pytest.raises(EdgestemError, match="quantized"):
        distill_run(tiny_qat_run / "qat", out=tmp_path / "d")


@pytest.mark.slow
def test_distilled_encoder_learns_every_component_on_multislice(tmp_path):
    """The test that would have caught the encoder that learned no normal strain: on the Si [001]
    multislice development set the deployed (distilled) encoder's regression slope must exceed 0.9
    for exx, eyy, exy and theta, with no ground-truth label used (about 10 minutes on 2 cores)."""
    from pathlib import Path

    from edgestem.evaluate import label_maps, maps_from_affine, regression_slope

    data = Path(__file__).resolve().parents[1] / "data" / "dev" / "si.h5"
    train(load_config(None, {"seed": 0}), data, tmp_path / "run")
    distill_run(tmp_path / "run", DistillConfig(teacher="classical"), out=tmp_path / "distill")
    model, cfg = model_from_checkpoint(load_checkpoint(tmp_path / "distill"))
    d = load_data(data, cfg)
    pred = maps_from_affine(predict_affine(model, d.x), d.scan_shape, None, "square")
    truth = label_maps({k: v.reshape(d.scan_shape) for k, v in d.labels.items()}, None, "square")
    slopes = regression_slope(pred, truth)
    assert all(0.9 < slopes[k] < 1.1 for k in slopes), slopes
