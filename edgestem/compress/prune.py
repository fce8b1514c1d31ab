"""Magnitude pruning of the ONE encoder, fine-tuned through the ONE training loop (``edgestem prune``).

Unstructured: in each pruned layer the ``round(sparsity * n)`` weights of smallest magnitude are
zeroed, layer by layer. The target is reached in ``prune.steps`` equal increments spread over
``prune.epochs`` fine-tuning epochs (:func:`scheduled_sparsity`); the masks live in the model as
``<layer>.weight_mask`` buffers, so they are saved with every checkpoint and restored by
``--resume``, and they are re-applied after every optimiser step, so pruned weights stay exactly 0.

Structured: whole output channels of convs (and hidden units of ``fc1``) with the smallest L1 norm
are removed and the layers really shrink: a new encoder config with fewer channels, the next
layer's inputs (for the last conv: ``fc1``'s features of the flattened map) and BatchNorm sliced
to match. The channel counts are part of the model's config, which the loop saves and ``--resume``
rebuilds from, so channels are removed in one step, before fine-tuning.

Magnitudes are those of the effective weights: a conv followed by BatchNorm is ranked with the
BatchNorm folded in, since BatchNorm rescales each output channel. Float models (with or without
BatchNorm) and Brevitas models are handled alike: ``QuantConv2d``/``QuantLinear`` are
``Conv2d``/``Linear``; a quantized model is rebuilt with the same layer factory and stays quantized.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgestem.config import Config, PruneConfig
from edgestem.data.dataset import load_data
from edgestem.errors import ConfigError, DataError, EdgestemError
from edgestem.model.ccstae import CCSTAE
from edgestem.model.encoder import N_OUTPUTS, LayerFactory, count_macs, count_parameters
from edgestem.rundir import (
    CHECKPOINT,
    PRUNE_DIR,
    QAT_DIR,
    TRAIN_REPORT,
    checkpoint_path,
    config_path,
    layer_factory,
    load_checkpoint,
    load_run_config,
    model_from_checkpoint,
    stage_dir,
)
from edgestem.train import Stage

SOURCES = ("float", "qat")


def _encoder(model: nn.Module) -> nn.Module:
    return model.encoder if isinstance(model, CCSTAE) else model


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The encoder's convs and linears by their stable names, in order (Brevitas layers included)."""
    return {n: m for n, m in _encoder(model).named_children() if isinstance(m, nn.Conv2d | nn.Linear)}


def layers_to_prune(cfg: Config, layers: list[str] | None = None, structured: bool = False) -> list[str]:
    """Check ``prune.layers`` against the encoder; None = every conv and linear but the last."""
    enc = cfg.model.encoder
    names = [f"conv{i}" for i in range(1, len(enc.channels) + 1)] + (["fc1", "fc2"] if enc.hidden else ["fc1"])
    chosen = names[:-1] if layers is None else list(dict.fromkeys(layers))
    for name in chosen:
        if name not in names:
            raise ConfigError(f"prune.layers: no layer named {name!r}; choose from {', '.join(names)}")
    if structured and names[-1] in chosen:
        raise ConfigError(
            f"prune.layers: {names[-1]} makes the encoder's {N_OUTPUTS} outputs; structured pruning cannot remove them"
        )
    return chosen


def _n_removed(n: int, sparsity: float) -> int:
    return int(math.floor(sparsity * n + 0.5))


def scheduled_sparsity(sparsity: float, steps: int, epochs: int, epoch: int) -> float:
    """Target sparsity in ``epoch`` (0-based): ``steps`` equal increments, step j at epoch ``j * epochs // steps``."""
    done = sum(1 for j in range(steps) if j * epochs // steps <= epoch)
    return sparsity if done >= steps else sparsity * done / steps


def importance(model: nn.Module) -> dict[str, torch.Tensor]:
    """``|w|`` of each conv/linear with a following BatchNorm folded in (the weights the encoder really applies)."""
    from edgestem.compress.quantize import fold_batchnorm

    folded = fold_batchnorm(_encoder(model))
    return {name: folded[f"{name}.weight"].abs() for name in weight_layers(model)}


def magnitude_masks(model: nn.Module, sparsity: float, layers: list[str]) -> dict[str, torch.Tensor]:
    """Masks (1 kept, 0 pruned) that zero the ``round(sparsity * n)`` smallest-|w| weights of each layer.

    Weights an existing ``weight_mask`` already prunes rank first and stay pruned, so the masks of
    an iterative schedule only grow.
    """
    score = importance(model)
    mods = weight_layers(model)
    masks = {}
    for name in layers:
        s = score[name].flatten().clone()
        old = getattr(mods[name], "weight_mask", None)
        already = 0
        if isinstance(old, torch.Tensor):
            s[old.flatten() == 0] = -1.0
            already = int((old == 0).sum())
        k = max(_n_removed(s.numel(), sparsity), already)
        mask = torch.ones_like(s)
        mask[torch.argsort(s, stable=True)[:k]] = 0.0
        masks[name] = mask.reshape(mods[name].weight.shape)
    return masks


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Store masks as ``<layer>.weight_mask`` buffers (saved in checkpoints) and zero the pruned weights."""
    mods = weight_layers(model)
    for name, mask in masks.items():
        mod = mods[name]
        if isinstance(getattr(mod, "weight_mask", None), torch.Tensor):
            mod.weight_mask.copy_(mask)
        else:
            mod.register_buffer("weight_mask", mask.detach().clone())
    enforce_masks(model)


def enforce_masks(model: nn.Module) -> None:
    """Set every masked weight to exactly 0 (after each optimiser step: Adam moves them otherwise)."""
    with torch.no_grad():
        for mod in _encoder(model).modules():
            mask = getattr(mod, "weight_mask", None)
            if isinstance(mask, torch.Tensor):
                mod.weight.masked_fill_(mask == 0, 0.0)


def _n_kept(name: str, c: int, sparsity: float) -> int:
    """Channels a layer keeps under structured pruning; 0 is an error."""
    n = c - _n_removed(c, sparsity)
    if n < 1:
        raise ConfigError(
            f"structured pruning at sparsity {sparsity:g} would leave {name} with 0 of its {c} channels; "
            f"lower prune.sparsity or leave {name} out of prune.layers"
        )
    return n


def _with_channels(cfg: Config, channels: list[int], hidden: int) -> Config:
    enc = cfg.model.encoder.model_copy(update={"channels": channels, "hidden": hidden})
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"encoder": enc})})


def shrunk_config(cfg: Config, sparsity: float, layers: list[str]) -> Config:
    """The config of the structurally pruned model: fewer conv channels (and hidden units)."""
    enc = cfg.model.encoder
    channels = [
        _n_kept(f"conv{i}", c, sparsity) if f"conv{i}" in layers else c for i, c in enumerate(enc.channels, start=1)
    ]
    hidden = _n_kept("fc1", enc.hidden, sparsity) if enc.hidden and "fc1" in layers else enc.hidden
    return _with_channels(cfg, channels, hidden)


def channel_keep(model: nn.Module, sparsity: float, layers: list[str]) -> dict[str, torch.Tensor]:
    """Sorted indices of the output channels each layer keeps: all but the ``round(sparsity * c)`` of least L1 norm."""
    score = importance(model)
    keep = {}
    for name in layers:
        l1 = score[name].flatten(1).sum(dim=1)
        n = _n_kept(name, len(l1), sparsity)
        keep[name] = torch.sort(torch.argsort(l1, descending=True, stable=True)[:n]).values
    return keep


def mask_channels(model: nn.Module, keep: dict[str, torch.Tensor]) -> None:
    """Zero the removed channels in place (filters, biases, BatchNorm scale and shift).

    The unshrunk twin of :func:`shrink_channels`: a removed channel then outputs exactly 0, so both
    models compute the same function.
    """
    mods = dict(_encoder(model).named_children())
    with torch.no_grad():
        for name, idx in keep.items():
            drop = torch.ones(mods[name].weight.shape[0], dtype=torch.bool)
            drop[idx] = False
            params = [mods[name].weight, mods[name].bias]
            bn = mods.get("bn" + name[4:]) if name.startswith("conv") else None
            if isinstance(bn, nn.BatchNorm2d):
                params += [bn.weight, bn.bias]
            for p in params:
                if p is not None:
                    p[drop] = 0.0


def shrink_channels(
    model: CCSTAE, cfg: Config, keep: dict[str, torch.Tensor], layers: LayerFactory | None = None
) -> tuple[CCSTAE, Config]:
    """A smaller model without the removed channels, and its config.

    ``cfg`` is the model's config and ``layers`` its layer factory (``BrevitasLayers`` for a QAT
    model: the encoder is rebuilt by the same factory and the quantizers' scale parameters are
    copied). Each kept layer's weights, biases and BatchNorm are sliced along their outputs, the
    next layer's weights along their inputs (``fc1``: every feature of a removed channel's map).
    """
    enc = cfg.model.encoder
    new_cfg = _with_channels(
        cfg,
        [len(keep.get(f"conv{i}", range(c))) for i, c in enumerate(enc.channels, start=1)],
        len(keep["fc1"]) if "fc1" in keep else enc.hidden,
    )
    mods = weight_layers(model)
    cols: dict[str, torch.Tensor] = {}  # input slices of the layer after each pruned one
    names = list(mods)
    for prev, name in zip(names, names[1:], strict=False):
        if prev in keep:
            idx = keep[prev]
            if isinstance(mods[prev], nn.Conv2d) and isinstance(mods[name], nn.Linear):
                per_map = mods[name].weight.shape[1] // mods[prev].weight.shape[0]  # flattened (C, H, W)
                idx = (idx[:, None] * per_map + torch.arange(per_map)).flatten()
            cols[name] = idx
    state = {}
    for key, value in model.state_dict().items():
        part = key.split(".")
        if part[0] == "encoder" and len(part) == 3:
            mod, attr = part[1], part[2]
            conv = "conv" + mod[2:] if mod.startswith("bn") else mod
            if keep.get(conv) is not None and attr in ("weight", "weight_mask", "bias", "running_mean", "running_var"):
                value = value[keep[conv]]
            if mod in cols and attr in ("weight", "weight_mask"):
                value = value[:, cols[mod]]
        state[key] = value.clone()
    shrunk, _ = model_from_checkpoint(
        {"config": new_cfg.model_dump(mode="json"), "symmetry": model.symmetry, "model": state},
        layers,
    )
    return shrunk, new_cfg


def _layer_macs(model: nn.Module, size: int) -> dict[str, dict[str, int]]:
    """Per conv/linear: dense MACs and MACs over non-zero weights (integer weights of a Brevitas layer)."""
    mods = weight_layers(model)
    nonzero = {name: int((_deployed(m) != 0).sum()) for name, m in mods.items()}
    rows: dict[str, dict[str, int]] = {}

    def hook(name: str) -> Any:
        def record(mod: nn.Module, inp: Any, out: Any) -> None:
            shape = getattr(out, "value", out).shape
            positions = shape[-2] * shape[-1] if isinstance(mod, nn.Conv2d) else 1
            rows[name] = {"macs": positions * mod.weight.numel(), "effective_macs": positions * nonzero[name]}

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
    enc = _encoder(model)
    was_training = enc.training
    enc.eval()
    try:
        with torch.no_grad():
            enc(torch.zeros(1, 1, size, size))
    finally:
        enc.train(was_training)
        for h in handles:
            h.remove()
    return rows


def _deployed(mod: nn.Module) -> torch.Tensor:
    """The weights the hardware uses: integer weights of a Brevitas layer, else the float weights."""
    with torch.no_grad():
        return mod.quant_weight().int() if hasattr(mod, "quant_weight") else mod.weight.detach()


def sparsity_report(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per conv/linear: shape, weight count, fraction of exact zeros (Brevitas: also of the integer weights)."""
    out = {}
    for name, mod in weight_layers(model).items():
        w = mod.weight.detach()
        row: dict[str, Any] = {"shape": list(w.shape), "weights": w.numel(), "zeros": float((w == 0).float().mean())}
        if hasattr(mod, "quant_weight"):
            row["int_zeros"] = float((_deployed(mod) == 0).float().mean())
        out[name] = row
    return out


def cost(model: nn.Module, size: int) -> dict[str, Any]:
    """Parameters and MACs of an encoder: dense, and over non-zero (deployed) weights only."""
    enc = _encoder(model)
    per_layer = _layer_macs(enc, size)
    mods = weight_layers(enc)
    return {
        "parameters": count_parameters(enc),
        "weights": sum(m.weight.numel() for m in mods.values()),
        "nonzero_weights": sum(int((_deployed(m) != 0).sum()) for m in mods.values()),
        "macs": count_macs(enc, size),
        "effective_macs": sum(r["effective_macs"] for r in per_layer.values()),
        "layers": per_layer,
    }


def source_dir(run: str | Path, source: str = "auto") -> tuple[str, Path]:
    """Which model to prune: ``float`` (RUN/checkpoint.pt), ``qat`` (RUN/qat/checkpoint.pt) or ``auto``."""
    run = Path(run)
    if source == "auto":
        source = "qat" if checkpoint_path(run / QAT_DIR).is_file() else "float"
    if source not in SOURCES:
        raise ConfigError(f"--from {source!r}: choose float, qat or auto")
    path = stage_dir(run, source)
    if not checkpoint_path(path).is_file():
        hint = f"edgestem qat --run {run}" if source == "qat" else f"edgestem train --out {run}"
        raise EdgestemError(f"{path}: no {CHECKPOINT} to prune; run {hint} first")
    return source, path


def stage_config(source: Config, prune: PruneConfig, regularization: dict[str, float] | None = None) -> Config:
    """The config the fine-tuning runs with: the source run's, with prune's epochs and lr (and shrunk channels)."""
    train = source.train.model_copy(update={"epochs": prune.epochs, "lr": prune.lr, **(regularization or {})})
    cfg = source.model_copy(update={"train": train, "prune": prune})
    if prune.structured:
        cfg = shrunk_config(cfg, prune.sparsity, layers_to_prune(source, prune.layers, structured=True))
    return cfg


def schedule(prune: PruneConfig) -> list[dict[str, Any]]:
    """The epochs (1-based) at which the pruning steps happen, and the sparsity from then on."""
    if prune.structured:
        return [{"epoch": 1, "sparsity": prune.sparsity}]  # channels go once: they are the model's config
    steps, last = [], 0.0
    for epoch in range(prune.epochs):
        s = scheduled_sparsity(prune.sparsity, prune.steps, prune.epochs, epoch)
        if s != last:
            steps.append({"epoch": epoch + 1, "sparsity": s})
            last = s
    return steps


def prune_stage(state: dict[str, Any], source_cfg: Config, prune: PruneConfig, info: dict[str, Any]) -> Stage:
    """The training-loop stage that builds the pruned model from a source checkpoint and keeps its masks.

    ``info`` (what was pruned, from where) is stored in the checkpoint's ``prune`` entry, with the
    kept channels of structured pruning; a quantized source's ``quant`` entry is passed on, so the
    pruned checkpoint is rebuilt quantized.
    """
    layers = layers_to_prune(source_cfg, prune.layers, prune.structured)
    keep = channel_keep(model_from_checkpoint(state)[0], prune.sparsity, layers) if prune.structured else {}

    def build(cfg: Config, data: Any, train_idx: np.ndarray) -> CCSTAE:
        model, _ = model_from_checkpoint(state)
        if prune.structured:
            return shrink_channels(model, source_cfg, keep, layer_factory(state))[0]
        apply_masks(model, {n: torch.ones_like(m.weight) for n, m in weight_layers(model).items() if n in layers})
        return model

    def on_epoch(model: CCSTAE, epoch: int) -> None:
        target = scheduled_sparsity(prune.sparsity, prune.steps, prune.epochs, epoch)
        apply_masks(model, magnitude_masks(model, target, layers))  # unchanged between steps

    info = {**info, "layers": layers, "kept_channels": {n: idx.tolist() for n, idx in keep.items()}}
    checkpoint = {"prune": info} | ({"quant": state["quant"]} if state.get("quant") else {})
    if prune.structured:
        return Stage("prune", build, checkpoint=checkpoint)
    return Stage("prune", build, on_epoch=on_epoch, after_step=enforce_masks, checkpoint=checkpoint)


def _strain_metrics(
    models: dict[str, CCSTAE], data: Path, cfg: Config, symmetry: str | None, dataset: str | None
) -> dict[str, Any]:
    """Strain MAE of the pruned model against the source model, and of both against the labels if any."""
    from edgestem.evaluate import COMPONENTS, compare_models, maps_from_affine, predict_affine, strain_mae

    d = load_data(data, cfg, dataset)
    sym = d.symmetry or symmetry
    maps = {name: maps_from_affine(predict_affine(m, d.x), d.scan_shape, None, sym) for name, m in models.items()}
    out: dict[str, Any] = {"patterns": len(d.x), "mae_vs_source": strain_mae(maps["pruned"], maps["source"])}
    if set(COMPONENTS) <= set(d.labels):
        out["mae"] = compare_models(models, d.raw, d.labels, d.scan_shape, cfg, sym)
    return out


def prune_run(
    run: str | Path,
    cfg: Config | None = None,
    *,
    source: str = "auto",
    out: str | Path | None = None,
    data: str | Path | None = None,
    dataset: str | None = None,
    resume: bool = False,
    progress: Any = None,
) -> dict[str, Any]:
    """``edgestem prune``: prune a trained (float or QAT) run, fine-tune it, write ``prune.json``; returns it.

    ``cfg`` supplies the ``prune`` section (and ``train.l1_weight`` / ``train.weight_decay`` where it
    sets them; otherwise the source run's). ``out`` defaults to ``RUN/prune``; ``data`` to the data
    the source was trained on. On ``resume`` the saved stage config wins, except ``prune.epochs``
    when ``cfg`` sets it.
    """
    from edgestem.atomic import write_json
    from edgestem.runinfo import stage_report
    from edgestem.train import train

    t0 = time.perf_counter()
    cfg = cfg or Config()
    kind, src = source_dir(run, source)
    out = Path(out) if out is not None else Path(run) / PRUNE_DIR
    state = load_checkpoint(src)
    source_model, source_cfg = model_from_checkpoint(state)
    prune = cfg.prune
    reg = {k: getattr(cfg.train, k) for k in ("l1_weight", "weight_decay") if k in cfg.train.model_fields_set}
    if resume and config_path(out).is_file():
        saved = load_run_config(out)
        epochs = {"epochs": prune.epochs} if "epochs" in prune.model_fields_set else {}
        prune = saved.prune.model_copy(update=epochs)
        reg = {"l1_weight": saved.train.l1_weight, "weight_decay": saved.train.weight_decay}
    run_cfg = stage_config(source_cfg, prune, reg)
    data_path = Path(data) if data is not None else Path(state["data"]["path"])
    if not data_path.exists():
        hint = "" if data is not None else f" (the data {src} was trained on); pass --data"
        raise DataError(f"{data_path}: no such data file{hint}")
    stage = prune_stage(state, source_cfg, prune, {"from": kind, "source": str(src)})
    fine_tune = train(run_cfg, data_path, out, resume=resume, dataset=dataset, progress=progress, stage=stage)
    pruned, run_cfg = model_from_checkpoint(load_checkpoint(out))
    size = run_cfg.preprocess.size
    layers = sparsity_report(pruned)
    before = sparsity_report(source_model)
    for name, row in layers.items():
        row["target"] = prune.sparsity if name in stage.checkpoint["prune"]["layers"] else 0.0
        if prune.structured:  # fraction of output channels removed
            row["channels"] = [before[name]["shape"][0], row["shape"][0]]
    metrics: dict[str, Any] = {
        "from": kind,
        "structured": prune.structured,
        "sparsity": prune.sparsity,
        "schedule": schedule(prune),
        "layers": layers,
        "before": cost(source_model, size),
        "after": cost(pruned, size),
        "fine_tune": {"epochs": fine_tune["epochs"], "seconds": fine_tune["seconds"]},
        **_strain_metrics({"source": source_model, "pruned": pruned}, data_path, run_cfg, state["symmetry"], dataset),
    }
    if prune.structured:
        metrics["channels"] = {
            "before": [*source_cfg.model.encoder.channels, source_cfg.model.encoder.hidden],
            "after": [*run_cfg.model.encoder.channels, run_cfg.model.encoder.hidden],
        }
        metrics["kept_channels"] = stage.checkpoint["prune"]["kept_channels"]
    report = stage_report(
        "prune",
        inputs={"run": str(run), "source": str(checkpoint_path(src)), "data": str(data_path)},
        outputs={"run": str(out), "checkpoint": str(checkpoint_path(out)), "train": str(out / TRAIN_REPORT)},
        config=run_cfg,
        metrics=metrics,
        started=t0,
    )
    write_json(out / "prune.json", report)
    return report


__all__ = [
    "apply_masks",
    "channel_keep",
    "cost",
    "enforce_masks",
    "layer_factory",
    "layers_to_prune",
    "magnitude_masks",
    "mask_channels",
    "prune_run",
    "prune_stage",
    "schedule",
    "scheduled_sparsity",
    "shrink_channels",
    "shrunk_config",
    "sparsity_report",
]
