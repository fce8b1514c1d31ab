"""Quantization-aware training: the Brevitas factory builds the same encoder, on the integer grid."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from edgestem.compress.quantize import (
    calibrate,
    fold_batchnorm,
    folded_config,
    qat_run,
    quant_layers,
)
from edgestem.config import EncoderConfig, load_config
from edgestem.errors import ConfigError, EdgestemError
from edgestem.model.encoder import build_encoder
from edgestem.model.layers import BrevitasLayers, QuantSpec
from edgestem.rundir import load_checkpoint, model_from_checkpoint
from edgestem.train import train

brevitas_nn = pytest.importorskip("brevitas.nn")

ENC = EncoderConfig(channels=[4, 8], hidden=8)
TINY = {
    "model.encoder.channels": [4, 8, 8],
    "model.encoder.hidden": 8,
    "train.batch_size": 16,
    "train.lr": 1e-3,
    "seed": 2,
}


def _float_encoder_with_bn_stats(seed=0):
    torch.manual_seed(seed)
    enc = build_encoder(ENC, 32)
    for m in enc.modules():  # non-trivial BatchNorm statistics, so folding has something to fold
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return enc.eval()


def _inputs(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 32, 32, generator=g) * 3


def test_batchnorm_folding_is_exact_in_float():
    enc = _float_encoder_with_bn_stats()
    folded = build_encoder(ENC.model_copy(update={"batchnorm": False}), 32).eval()
    folded.load_state_dict(fold_batchnorm(enc))
    x = _inputs()
    with torch.no_grad():
        assert torch.allclose(folded(x), enc(x), atol=1e-5)


def _quantized(spec, source):
    q = build_encoder(ENC.model_copy(update={"batchnorm": False}), 32, BrevitasLayers(spec))
    res = q.load_state_dict(fold_batchnorm(source), strict=False)
    assert not [k for k in res.missing_keys if k.endswith((".weight", ".bias"))]
    calibrate(q, _inputs(256, seed=5).numpy())
    return q.eval()


def test_qat_forward_equals_float_forward_at_high_bit_width():
    enc = _float_encoder_with_bn_stats()
    x = _inputs()
    with torch.no_grad():
        ref = enc(x)
        hi = _quantized(QuantSpec(bits=12, input_bits=12, output_bits=16, bias_bits=32), enc)(x)
        lo = _quantized(QuantSpec(bits=4, input_bits=8), enc)(x)
    scale = ref.abs().max()
    err_hi = float((hi - ref).abs().max() / scale)
    err_lo = float((lo - ref).abs().max() / scale)
    assert err_hi < 5e-3
    assert err_lo > 10 * err_hi  # the comparison can fail: 4 bits really are coarse


def test_quantized_tensors_lie_on_the_integer_grid_at_their_bit_width():
    spec = QuantSpec(bits=5, input_bits=7, output_bits=12, per_layer={"conv2": 3})
    q = _quantized(spec, _float_encoder_with_bn_stats())
    for name in ("conv1", "conv2", "fc1", "fc2"):
        qw = q.get_submodule(name).quant_weight()
        bits = 3 if name == "conv2" else 5
        assert int(qw.bit_width) == bits
        ints = qw.value / qw.scale
        assert torch.equal(ints, torch.round(ints))  # values are integers times the scale
        assert ints.abs().max() <= 2 ** (bits - 1) - 1
        assert float(torch.log2(qw.scale)) == round(float(torch.log2(qw.scale)))  # power of two
    # Activations: capture each quantizer's output tensor.
    seen = {}
    hooks = [
        q.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
        for n in ("input", "relu1", "relu_fc1")
    ]
    with torch.no_grad():
        out = q(_inputs(16))
    for h in hooks:
        h.remove()
    for name, bits in (("input", 7), ("relu1", 5), ("relu_fc1", 5)):
        t = seen[name]
        ints = t.value / t.scale
        assert torch.equal(ints, torch.round(ints)) and ints.min() >= 0 and ints.max() <= 2**bits - 1, name
        assert float(torch.log2(t.scale)) == round(float(torch.log2(t.scale)))
    oscale = q.get_submodule("output").act_quant.scale()
    oint = out / oscale
    assert torch.equal(oint, torch.round(oint)) and oint.abs().max() <= 2**11
    facts = quant_layers(q)
    assert facts["conv2"]["bits"] == 3 and facts["output"]["signed"] and not facts["relu1"]["signed"]


def test_quantized_encoder_has_no_batchnorm():
    with pytest.raises(ConfigError, match="fold"):
        build_encoder(ENC, 32, BrevitasLayers(QuantSpec()))


@pytest.fixture(scope="module")
def float_run(tmp_path_factory, tiny_h5):
    run = tmp_path_factory.mktemp("qat") / "run"
    train(load_config(None, {**TINY, "train.epochs": 2}), tiny_h5, run)
    return run


def test_qat_run_writes_a_quantized_run_and_compares_with_float(float_run, tiny_h5, tmp_path):
    qcfg = load_config(None, {"qat.bits": 6, "qat.epochs": 2}).qat
    levels = [("w=0", None)]
    res = qat_run(float_run, qcfg, out=tmp_path / "qat", eval_levels=levels)
    saved = json.loads((tmp_path / "qat" / "qat.json").read_text())
    assert saved["stage"] == "qat" and saved["metrics"]["bits"]["bits"] == 6
    assert {r["model"] for r in res["mae"]} == {"float", "qat"}
    assert all(np.isfinite(r["exx"]) for r in res["mae"])
    state = load_checkpoint(tmp_path / "qat")
    assert state["stage"] == "qat" and state["quant"]["bits"] == 6
    model, cfg = model_from_checkpoint(state)  # rebuilt as a Brevitas model from the checkpoint alone
    assert isinstance(model.encoder.conv1, brevitas_nn.QuantConv2d) and not cfg.model.encoder.batchnorm
    assert all(f["bits"] == 6 for n, f in res["layers"].items() if n not in ("input", "output"))


def test_qat_resume_equals_uninterrupted(float_run, tmp_path):
    base = load_config(None, {"qat.bits": 4}).qat
    qat_run(float_run, base.model_copy(update={"epochs": 2}), out=tmp_path / "full")
    qat_run(float_run, base.model_copy(update={"epochs": 1}), out=tmp_path / "part")
    qat_run(float_run, base.model_copy(update={"epochs": 2}), out=tmp_path / "part", resume=True)
    a, b = load_checkpoint(tmp_path / "full")["model"], load_checkpoint(tmp_path / "part")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_calibration_patterns_span_the_scan_and_float_teacher_trains(float_run, tmp_path, monkeypatch):
    """Calibration takes patterns from the whole scan: from its first rows only, a grain those rows
    miss had its outputs clipped by the output quantizer (a -24 deg grain read as -22.8 deg)."""
    import edgestem.compress.quantize as q

    seen = []
    real = q.calibrate
    monkeypatch.setattr(q, "calibrate", lambda enc, x: (seen.append(x.copy()), real(enc, x))[1])
    qcfg = load_config(None, {"qat.bits": 6, "qat.epochs": 1, "qat.calibration_patterns": 8, "qat.teacher": "float"})
    qat_run(float_run, qcfg.qat, out=tmp_path / "qat")
    from edgestem.data.dataset import load_data

    d = load_data(load_checkpoint(float_run)["data"]["path"], load_config(None, TINY))
    rows = [int(np.flatnonzero((d.x == x[None]).all(axis=(1, 2, 3)))[0]) for x in seen[0]]
    assert len(rows) == 8 and min(rows) < len(d.x) // 8 and max(rows) > 7 * len(d.x) // 8
    hist = json.loads((tmp_path / "qat" / "train.json").read_text())["history"]
    assert "train_distill" in hist[0]


def test_qat_refuses_a_quantized_source_and_a_missing_run(float_run, tmp_path):
    qcfg = load_config(None, {"qat.epochs": 1}).qat
    with pytest.raises(EdgestemError, match="no float checkpoint"):
        qat_run(tmp_path / "nothing", qcfg)
    qat_run(float_run, qcfg, out=tmp_path / "q")
    with pytest.raises(EdgestemError, match="already a quantized run"):
        qat_run(tmp_path / "q", qcfg, out=tmp_path / "qq")


def test_folded_config_turns_batchnorm_off_and_takes_qat_schedule():
    cfg = load_config(None, {"qat.epochs": 3, "qat.lr": 5e-5})
    f = folded_config(cfg)
    assert not f.model.encoder.batchnorm and f.train.epochs == 3 and f.train.lr == 5e-5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bits", "0"], "qat.bits"),
        (["--bits", "-2"], "qat.bits"),
        (["--bits", "17"], "qat.bits"),
        (["--per-layer", "conv9=4"], "no layer named 'conv9'"),
        (["--per-layer", "conv1:4"], "name=bits"),
    ],
)
def test_cli_bad_inputs_are_one_line_errors(float_run, args, message):
    r = subprocess.run(
        [sys.executable, "-m", "edgestem.cli", "qat", "--run", str(float_run), "-q", *args],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (float_run / "qat").exists()


def test_cli_run_without_checkpoint(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "edgestem.cli", "qat", "--run", str(tmp_path), "--bits", "6"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "train first" in r.stderr


def test_bias_saturation_is_detected():
    from edgestem.compress.quantize import bias_saturation

    enc = _float_encoder_with_bn_stats()
    x = _inputs(4).numpy()
    ok = _quantized(QuantSpec(bits=6, input_bits=8, bias_bits=16), enc)
    assert sum(bias_saturation(ok, x, 16).values()) == 0
    # 16-bit inputs and weights make the bias scale ~1e-9: 16-bit biases cannot hold |b| ~ 0.1.
    tight = _quantized(QuantSpec(bits=16, input_bits=16, bias_bits=16), enc)
    assert bias_saturation(tight, x, 16)["conv1"] > 0
