"""Quantization-aware training: BatchNorm folding, calibration and the QAT stage (``edgestem qat``).

The quantized encoder is the ONE encoder of :mod:`edgestem.model.encoder`, built with the Brevitas
layer factory (:class:`edgestem.model.layers.BrevitasLayers`, power-of-two scales only) instead of
float layers; the bit widths come from the ``qat`` config section (:class:`QuantSpec`).

BatchNorm is folded into the preceding convolution before QAT starts (the quantized encoder has
no BatchNorm), so what is trained is exactly what is exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgestem.config import Config, QatConfig
from edgestem.errors import ConfigError
from edgestem.model.layers import BrevitasLayers, QuantSpec


def layer_names(cfg: Config) -> list[str]:
    """Names that ``qat.per_layer`` may use for this encoder."""
    enc = cfg.model.encoder
    names = ["input"]
    for i in range(1, len(enc.channels) + 1):
        names += [f"conv{i}", f"relu{i}"]
    names += ["fc1", "relu_fc1", "fc2"] if enc.hidden else ["fc1"]
    return names + ["output"]


def check_per_layer(cfg: Config) -> None:
    """Unknown layer names or out-of-range widths in ``qat.per_layer`` are config errors."""
    valid = layer_names(cfg)
    for name, bits in cfg.qat.per_layer.items():
        if name not in valid:
            raise ConfigError(f"qat.per_layer: no layer named {name!r}; choose from {', '.join(valid)}")
        if not 1 <= int(bits) <= 24:
            raise ConfigError(f"qat.per_layer.{name}: {bits} bits is out of range; use 1 to 24")


def fold_batchnorm(encoder: nn.Sequential) -> dict[str, torch.Tensor]:
    """Weights of the same encoder without BatchNorm: each ``bnI`` folded into ``convI``.

    ``W' = W * g / sqrt(v + eps)`` per output channel, ``b' = (b - m) * g / sqrt(v + eps) + beta``.
    Returns a state dict (``convI.weight``, ``convI.bias``, ``fc*.weight``, ...) for an encoder
    built with ``batchnorm=False``.
    """
    mods = dict(encoder.named_children())
    out: dict[str, torch.Tensor] = {}
    for name, mod in mods.items():
        if not isinstance(mod, nn.Conv2d | nn.Linear):
            continue
        w = mod.weight.detach().clone()
        b = mod.bias.detach().clone() if mod.bias is not None else torch.zeros(w.shape[0])
        bn = mods.get("bn" + name[4:]) if name.startswith("conv") else None
        if isinstance(bn, nn.BatchNorm2d):
            g = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            w = w * g.reshape(-1, *([1] * (w.ndim - 1)))
            b = (b - bn.running_mean) * g + bn.bias.detach()
        out[f"{name}.weight"] = w
        out[f"{name}.bias"] = b
    return out


def folded_config(cfg: Config, qat: QatConfig | None = None) -> Config:
    """The stage config of QAT: BatchNorm off (folded), QAT's epochs and learning rate."""
    qat = qat or cfg.qat
    enc = cfg.model.encoder.model_copy(update={"batchnorm": False})
    model = cfg.model.model_copy(update={"encoder": enc})
    train = cfg.train.model_copy(update={"epochs": qat.epochs, "lr": qat.lr})
    return cfg.model_copy(update={"model": model, "train": train, "qat": qat})


def calibrate(encoder: nn.Module, x: np.ndarray, batch: int = 128) -> None:
    """Set the activation quantizers' power-of-two scales from statistics of ``x`` (no training)."""
    from brevitas.graph.calibrate import calibration_mode

    encoder.eval()
    with torch.no_grad(), calibration_mode(encoder):
        for i in range(0, len(x), batch):
            encoder(torch.from_numpy(x[i : i + batch]))


def quant_layers(encoder: nn.Module) -> dict[str, dict[str, Any]]:
    """Per-layer quantization facts of a Brevitas encoder: bit widths and power-of-two exponents."""
    import brevitas.nn as qnn

    facts: dict[str, dict[str, Any]] = {}
    for name, mod in encoder.named_children():
        if isinstance(mod, qnn.QuantConv2d | qnn.QuantLinear):
            qw = mod.quant_weight()
            facts[name] = {
                "kind": "weight",
                "bits": int(qw.bit_width),
                "scale_log2": float(torch.log2(qw.scale).item()),
                "zeros": float((qw.int() == 0).float().mean().item()),
            }
        elif isinstance(mod, qnn.QuantReLU | qnn.QuantIdentity):
            proxy = mod.act_quant
            facts[name] = {
                "kind": "activation",
                "bits": int(proxy.bit_width()),
                "scale_log2": float(torch.log2(proxy.scale()).item()),
                "signed": bool(proxy.is_signed),
            }
    return facts


def bias_saturation(encoder: nn.Module, x: np.ndarray, bias_bits: int) -> dict[str, int]:
    """Biases that do not fit their quantizer: ``|b| > (2^(B-1) - 1) * s_in * s_w`` per layer.

    A bias's scale is its layer's input scale times its weight scale; with many input bits the
    scale gets so small that B-bit biases clip (silently, in Brevitas and the firmware alike).
    Returns the number of clipped biases per conv/linear layer (0 everywhere is what you want).
    """
    import brevitas.nn as qnn

    scales: dict[str, torch.Tensor] = {}
    hooks = [
        mod.register_forward_pre_hook(lambda m, inp, n=name: scales.__setitem__(n, inp[0].scale))
        for name, mod in encoder.named_children()
        if isinstance(mod, qnn.QuantConv2d | qnn.QuantLinear)
    ]
    encoder.eval()
    try:
        with torch.no_grad():
            encoder(torch.from_numpy(np.ascontiguousarray(x[:2])))
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, s_in in scales.items():
        mod = encoder.get_submodule(name)
        limit = (2 ** (bias_bits - 1) - 1) * float(s_in) * float(mod.quant_weight().scale.detach())
        out[name] = int((mod.bias.detach().abs() > limit).sum())
    return out


def qat_run(
    run: str | Path,
    qat: QatConfig,
    *,
    data: str | Path | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    eval_data: str | Path | None = None,
    eval_levels: list[tuple[str, Any]] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """``edgestem qat``: quantization-aware training of a trained float run into ``RUN/qat/``.

    The quantized encoder starts from the float weights with BatchNorm folded, its activation
    scales calibrated on training patterns, the dictionary and mask of the float run; then the
    one training loop runs with QAT's epochs and learning rate. Writes the run directory
    (config.yaml, checkpoint.pt, train.json) and ``qat.json``: bit widths and power-of-two
    exponents per layer, strain MAE of float and QAT on the same patterns (per noise level with
    ``eval_levels``), time.
    """
    import time

    from edgestem.atomic import write_json
    from edgestem.data.dataset import load_data
    from edgestem.errors import EdgestemError
    from edgestem.evaluate import compare_models
    from edgestem.model.ccstae import CCSTAE
    from edgestem.model.encoder import count_macs, count_parameters
    from edgestem.rundir import QAT_DIR, checkpoint_path, has_checkpoint, load_checkpoint, model_from_checkpoint
    from edgestem.runinfo import stage_report
    from edgestem.train import Stage, train

    started = time.perf_counter()
    run = Path(run)
    out = Path(out) if out is not None else run / QAT_DIR
    if not has_checkpoint(run):
        raise EdgestemError(f"{run}: no float checkpoint (checkpoint.pt); train first (edgestem train --out {run})")
    state = load_checkpoint(run)
    if state.get("quant"):
        raise EdgestemError(f"{run} is already a quantized run; give the float run it came from")
    float_model, float_cfg = model_from_checkpoint(state)
    cfg = folded_config(float_cfg, qat)
    check_per_layer(cfg)
    spec = QuantSpec.from_config(qat)
    data_path = Path(data) if data is not None else Path(state["data"]["path"])
    if not data_path.is_file():
        raise EdgestemError(f"{data_path}: the run's training data is not there; pass --data")
    folded = fold_batchnorm(float_model.encoder)
    teacher: dict[str, Any] = {}

    def build(cfg: Config, d: Any, train_idx: np.ndarray) -> CCSTAE:
        torch.manual_seed(cfg.seed)
        model = CCSTAE(
            cfg.model,
            cfg.preprocess.size,
            state["symmetry"],
            float_model.dictionary.detach().numpy(),
            float_model.mask.detach().numpy().reshape(cfg.preprocess.size, cfg.preprocess.size),
            BrevitasLayers(spec),
            smooth_px=cfg.loss.smooth_px,
        )
        result = model.encoder.load_state_dict(folded, strict=False)
        wrong = [k for k in result.missing_keys if k.endswith((".weight", ".bias"))] + list(result.unexpected_keys)
        if wrong:
            raise EdgestemError(f"{run}: float weights do not fit the quantized encoder ({wrong[0]}); retrain the run")
        # Evenly spaced over the scan, not its first rows: a grain that the first rows miss would find
        # its outputs clipped by the output quantizer's range (measured: a -24 deg grain read as -22.8).
        pick = np.unique(np.linspace(0, len(train_idx) - 1, min(len(train_idx), qat.calibration_patterns)).astype(int))
        calibrate(model.encoder, d.x[train_idx[pick]])
        if qat.teacher == "float":
            from edgestem.evaluate import predict_affine
            from edgestem.model.ccstae import regression_scale, target_params
            from edgestem.train import evaluate_loss

            params = target_params(predict_affine(float_model, d.x))
            teacher["params"] = torch.from_numpy(params.astype(np.float32))
            teacher["scale"] = torch.from_numpy(regression_scale(float_cfg.distill.unit).astype(np.float32))
            teacher["cycle0"] = max(evaluate_loss(model, d.x[train_idx[:512]], cfg)["total"], 1e-12)
        return model

    def batch_loss(model: CCSTAE, out: Any, idx: np.ndarray, terms: dict[str, Any]) -> dict[str, Any]:
        from edgestem.model.ccstae import param_regression

        ti = torch.from_numpy(np.asarray(idx, np.int64))
        reg = param_regression(model.head, out.raw, teacher["params"][ti], teacher["scale"], torch.ones(len(ti)))
        total = reg + float_cfg.distill.cycle_weight * terms["total"] / teacher["cycle0"]
        return {**terms, "cycle": terms["total"], "distill": reg, "total": total}

    stage = Stage(
        "qat",
        build,
        batch_loss=batch_loss if qat.teacher == "float" else None,
        checkpoint={"quant": spec.to_dict(), "source": {"run": str(run), "stage": state.get("stage", "train")}},
    )
    report = train(cfg, data_path, out, resume=resume, progress=progress, stage=stage)
    qat_model, _ = model_from_checkpoint(load_checkpoint(out))

    ev = load_data(eval_data or data_path, cfg)
    layers = quant_layers(qat_model.encoder)
    for name, n in bias_saturation(qat_model.encoder, ev.x, spec.bias_bits).items():
        layers[name]["bias_clipped"] = n
    metrics: dict[str, Any] = {
        "bits": spec.to_dict(),
        "layers": layers,
        "encoder": {
            "parameters": count_parameters(qat_model.encoder),
            "macs": count_macs(qat_model.encoder, cfg.preprocess.size),
        },
        "train_seconds": report["seconds"],
        "epochs": cfg.train.epochs,
    }
    if {"exx", "eyy", "exy", "theta"} <= set(ev.labels):
        rows = compare_models(
            {"float": float_model, "qat": qat_model},
            ev.raw,
            ev.labels,
            ev.scan_shape,
            cfg,
            ev.symmetry or state["symmetry"],
            eval_levels,
        )
        metrics["mae"] = rows
        metrics["mae_ratio"] = _ratios(rows, "qat", "float")
    write_json(
        out / "qat.json",
        stage_report(
            "qat",
            inputs={"run": run, "data": data_path, "eval_data": eval_data or data_path},
            outputs={"run": out, "checkpoint": checkpoint_path(out)},
            config=cfg,
            metrics=metrics,
            started=started,
        ),
    )
    return metrics


def _ratios(rows: list[dict[str, Any]], model: str, ref: str) -> dict[str, dict[str, float]]:
    """MAE of ``model`` over MAE of ``ref`` per noise level and component (1.0 = no loss)."""
    by = {(r["noise"], r["model"]): r for r in rows}
    out: dict[str, dict[str, float]] = {}
    for (level, name), r in by.items():
        if name != model or (level, ref) not in by:
            continue
        base = by[(level, ref)]
        out[str(level)] = {
            k: float(r[k] / base[k]) if base[k] > 0 else float("nan") for k in ("exx", "eyy", "exy", "theta")
        }
    return out


__all__ = [
    "qat_run",
    "calibrate",
    "check_per_layer",
    "fold_batchnorm",
    "folded_config",
    "layer_names",
    "quant_layers",
    "bias_saturation",
]
