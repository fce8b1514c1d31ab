"""The ONE training loop: float CC-ST-AE, quantization-aware training and fine-tuning after pruning.

A run directory holds ``config.yaml`` (resolved), ``checkpoint.pt`` (written atomically every
epoch) and ``train.json`` (losses per epoch, time, versions, machine). ``resume=True`` continues an
interrupted run to the same final weights as an uninterrupted one: every random draw (split,
shuffling, noise augmentation) is derived from ``(seed, epoch, batch)``, not from a running stream.
The layout of a run directory and its checkpoints belong to :mod:`edgestem.rundir`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgestem import __version__
from edgestem.config import Config, save_config
from edgestem.data.dataset import TrainingData, load_data
from edgestem.data.noise import apply_noise, noise_at
from edgestem.data.preprocess import preprocess
from edgestem.distributed import World
from edgestem.errors import DataError, EdgestemError
from edgestem.model.ccstae import CCSTAE, disk_mask
from edgestem.model.encoder import LayerFactory, count_macs, count_parameters
from edgestem.rundir import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    TRAIN_REPORT,
    add_mask_buffers,
    checkpoint_path,
    config_path,
    load_checkpoint,
    load_run_config,
    model_from_checkpoint,
    save_checkpoint,
)
from edgestem.seeds import STREAMS

# Random streams derived from the config seed: the one table of edgestem/seeds.py.
_SPLIT, _SHUFFLE, _AUGMENT, _DICTIONARY = (STREAMS[k] for k in ("split", "shuffle", "augment", "dictionary"))


class TrainingError(EdgestemError):
    """Training failed in a way the user must act on (NaN loss, collapsed encoder)."""


@dataclass
class Stage:
    """A training stage derived from a trained run (QAT, fine-tuning after pruning).

    It runs through the same loop as float training; only how the model is built and which
    constraints hold after each step differ. ``build`` must be deterministic: ``--resume`` builds
    the model again and then loads the checkpoint's weights (and pruning masks) over it.
    """

    name: str  # "qat", "prune": recorded in the checkpoint and train.json
    build: Callable[[Config, TrainingData, np.ndarray], CCSTAE]
    on_epoch: Callable[[CCSTAE, int], None] | None = None  # before each epoch (pruning schedule)
    after_step: Callable[[CCSTAE], None] | None = None  # after each optimiser step (keep pruned weights 0)
    # Extra loss terms of a batch (distillation: regression on the teacher's estimates). Called with the
    # model, its forward output and the batch's pattern indices; returns named terms and "total" (a scalar
    # that replaces the cycle loss's total; the cycle terms stay in the log).
    batch_loss: Callable[[CCSTAE, Any, np.ndarray, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    checkpoint: dict[str, Any] = field(default_factory=dict)  # stored with the weights (quantization spec)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def split_indices(n: int, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split."""
    perm = _rng(cfg.seed, _SPLIT).permutation(n)
    n_val = int(round(n * cfg.train.val_fraction)) if n > 1 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def build_model(cfg: Config, data: TrainingData, train_idx: np.ndarray, layers: LayerFactory | None = None) -> CCSTAE:
    """A CC-ST-AE whose dictionary starts from the training patterns' mean and whose mask is found there."""
    mean = data.x[train_idx, 0].mean(axis=0)
    if not np.any(data.raw):
        raise DataError(f"{data.path}: every pattern is zero; check the file (or --dataset) holds the diffraction data")
    try:
        mask = disk_mask(mean, margin_px=cfg.loss.mask_margin_px)
    except ValueError as exc:
        raise DataError(f"{data.path}: {exc}; the patterns show no Bragg disks to learn from") from None
    init = np.repeat(mean[None], cfg.model.dictionaries, axis=0)
    if cfg.model.dictionaries > 1:
        # Distinct starting points: means of a seeded partition of the training patterns.
        parts = np.array_split(_rng(cfg.seed, _DICTIONARY).permutation(train_idx), cfg.model.dictionaries)
        init = np.stack([data.x[p, 0].mean(axis=0) for p in parts])
    torch.manual_seed(cfg.seed)
    return CCSTAE(cfg.model, cfg.preprocess.size, data.symmetry, init, mask, layers, smooth_px=cfg.loss.smooth_px)


def _augment(raw: np.ndarray, cfg: Config, rng: np.random.Generator) -> np.ndarray:
    """Noise drawn on the fly at a level drawn for the batch, then the one pre-processing."""
    aug = cfg.train.augment
    level = float(aug.levels[rng.integers(len(aug.levels))])
    noise = noise_at(aug.model, level, aug.counts_per_probe)
    return preprocess(apply_noise(raw, noise, rng), cfg.preprocess)[:, None]


def _batches(x: np.ndarray, batch: int) -> Any:
    for i in range(0, len(x), batch):
        yield torch.from_numpy(x[i : i + batch])


def evaluate_loss(model: CCSTAE, x: np.ndarray, cfg: Config, batch: int = 256) -> dict[str, float]:
    """Mean loss terms over patterns (eval mode, no gradient)."""
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for xb in _batches(x, batch):
            terms = model.loss(xb, model(xb), cfg.loss)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(xb)
    return {k: v / max(1, len(x)) for k, v in sums.items()}


def raw_outputs(model: CCSTAE, x: np.ndarray, batch: int = 512) -> np.ndarray:
    """Encoder outputs (N, 4) in eval mode."""
    model.eval()
    with torch.no_grad():
        return np.concatenate([model.encoder(xb).numpy() for xb in _batches(x, batch)])


def check_collapse(model: CCSTAE, x: np.ndarray) -> dict[str, float]:
    """Stop with a clear message if the encoder's outputs no longer depend on the input.

    Returns the spread (standard deviation over the patterns) of each head parameter, ``sx, sy, sh``
    as fractions and ``rot`` in degrees: a component that is not learned yet has a spread near 0
    that is still growing (see :func:`learning_verdict`).
    """
    if len(x) < 8:
        return {}
    o = raw_outputs(model, x[:512])
    if not np.isfinite(o).all():
        raise TrainingError("encoder outputs became NaN/infinite; lower train.lr and retrain")
    std = o.std(axis=0)
    saturated = (np.abs(np.tanh(o)) > 0.999).mean()
    if std.max() < 1e-5:
        raise TrainingError(
            "encoder collapsed: its outputs are the same for every pattern (dying ReLUs); "
            "lower train.lr (e.g. 1e-4) or change the seed, then retrain"
        )
    if saturated > 0.5:
        raise TrainingError(
            f"encoder saturated the bounded head ({saturated:.0%} of outputs at the tanh limits); "
            "lower train.lr or raise model.head gains, then retrain"
        )
    with torch.no_grad():
        p = model.head.params(torch.from_numpy(o))
    return {k: float(v.double().std()) for k, v in p.items()}


# A component whose spread grew by more than this over the last quarter of the epochs is still being learned
# (the Si development set's sx and sy grew 5-8 % there with slopes of 0.6-0.7).
STILL_GROWING = 0.05


def learning_verdict(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Label-free signal that training stopped too early: per head parameter, the growth of its spread
    over the scan during the last quarter of the epochs, and the fall of the validation (or training)
    loss over the same epochs. The unsupervised CC-ST-AE learns rotation and shear first and normal
    strain last; a normal-strain spread still growing means its maps are still shrunk towards the mean.
    """
    n = len(history)
    if n < 4 or "spread_sx" not in history[-1]:
        return {"checked": False}
    a, b = history[n - 1 - max(1, n // 4)], history[-1]
    growth = {
        k: (b[f"spread_{k}"] - a[f"spread_{k}"]) / max(a[f"spread_{k}"], 1e-12) for k in ("sx", "sy", "sh", "rot")
    }
    key = "val_total" if "val_total" in b else "train_total"
    fall = (a[key] - b[key]) / max(abs(a[key]), 1e-12)
    growing = [k for k, g in growth.items() if g > STILL_GROWING]
    return {
        "checked": True,
        "spread_growth_last_quarter": {k: round(g, 4) for k, g in growth.items()},
        "loss_fall_last_quarter": round(fall, 4),
        "still_learning": growing,
    }


def train(
    cfg: Config,
    data_path: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    dataset: str | None = None,
    progress: Callable[[str, int, int, float], None] | None = None,
    stage: Stage | None = None,
) -> dict[str, Any]:
    """Train a CC-ST-AE on a data file into ``run_dir``; returns the ``train.json`` report.

    ``stage`` (QAT, pruning) replaces how the model is built and adds per-step constraints; the
    loop, loss, checkpointing and resume are the same for every stage.

    Runs with ``torch.use_deterministic_algorithms(True)``: with several threads some CPU kernels
    otherwise sum in a varying order, and the same config would not give the same weights (measured:
    no speed cost on this model).
    """
    from edgestem.distributed import world

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with world() as w:  # one process, or this one's rank under torchrun (docs/training.md)
            return _train(
                cfg, data_path, run_dir, resume=resume, dataset=dataset, progress=progress, stage=stage, world=w
            )
    finally:
        torch.use_deterministic_algorithms(previous)


def _train(
    cfg: Config,
    data_path: str | Path,
    run_dir: str | Path,
    *,
    resume: bool,
    dataset: str | None,
    progress: Callable[[str, int, int, float], None] | None,
    stage: Stage | None,
    world: World,
) -> dict[str, Any]:
    from edgestem.atomic import write_json
    from edgestem.runinfo import machine, versions

    run = Path(run_dir)
    ckpt_path = checkpoint_path(run)
    state: dict[str, Any] | None = None
    if resume:
        if not ckpt_path.is_file():
            raise EdgestemError(f"{run}: nothing to resume (no {CHECKPOINT}); start without --resume")
        state = load_checkpoint(run)
        saved = Config.model_validate(state["config"])
        if saved.model_dump(exclude={"train": {"epochs"}}) != cfg.model_dump(exclude={"train": {"epochs"}}):
            cfg = saved.model_copy(update={"train": saved.train.model_copy(update={"epochs": cfg.train.epochs})})
    elif ckpt_path.exists():
        raise EdgestemError(f"{run} already holds a trained run; use --resume to continue it or choose another --out")

    torch.set_num_threads(cfg.train.threads or max(1, torch.get_num_threads()))
    data = load_data(data_path, cfg, dataset)
    if state is not None and state["data"]["fingerprint"] != data.fingerprint:
        raise DataError(f"{data_path} is not the data {run} was trained on; resume with the same --data")
    train_idx, val_idx = split_indices(len(data.x), cfg)
    if len(train_idx) < cfg.train.batch_size // 4 or len(train_idx) < 2:
        raise DataError(f"{data_path}: only {len(train_idx)} training patterns; simulate or read more (>= 64)")
    if cfg.train.steps is not None:  # a budget in steps: the same training length whatever the data's size
        per_epoch = max(1, int(np.ceil(len(train_idx) / cfg.train.batch_size)))
        epochs = max(1, int(np.ceil(cfg.train.steps / per_epoch)))
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs})})
    model = stage.build(cfg, data, train_idx) if stage is not None else build_model(cfg, data, train_idx)
    if state is not None:
        # Before the optimiser is made: Brevitas replaces its scale parameters on loading, and an
        # optimiser holding the old ones would silently stop training them.
        add_mask_buffers(model, state["model"])
        model.load_state_dict(state["model"])
    # L1/L2 act on weights and biases only, not on quantizer scales.
    enc_params = [
        p for n, p in model.named_parameters() if n.startswith("encoder.") and n.endswith((".weight", ".bias"))
    ]
    quant_params = [
        p for n, p in model.named_parameters() if n.startswith("encoder.") and not n.endswith((".weight", ".bias"))
    ]
    optim = torch.optim.Adam(
        [
            {"params": enc_params, "weight_decay": cfg.train.weight_decay},
            {"params": [model.dictionary], "weight_decay": 0.0, "lr": cfg.train.dictionary_lr},
            *([{"params": quant_params, "weight_decay": 0.0}] if quant_params else []),
        ],
        lr=cfg.train.lr,
    )
    base_lrs = [group["lr"] for group in optim.param_groups]
    history: list[dict[str, Any]] = []
    start_epoch, elapsed = 0, 0.0
    if state is not None:
        optim.load_state_dict(state["optim"])
        history, start_epoch, elapsed = state["history"], state["epoch"], state["seconds"]
    run.mkdir(parents=True, exist_ok=True)
    if world.writer:
        save_config(cfg, config_path(run))

    n_batches = max(1, int(np.ceil(len(train_idx) / cfg.train.batch_size)))
    if world.size > 1:
        world.check_batches(
            [min(cfg.train.batch_size, len(train_idx) - b * cfg.train.batch_size) for b in (0, n_batches - 1)]
        )
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        if stage is not None and stage.on_epoch is not None:
            stage.on_epoch(model, epoch)
        model.train()
        order = train_idx[_rng(cfg.seed, _SHUFFLE, epoch).permutation(len(train_idx))]
        sums: dict[str, float] = {}
        for b in range(n_batches):
            if cfg.train.lr_schedule == "cosine":  # from (epoch, batch) alone, so --resume continues it exactly
                step, total = epoch * n_batches + b, cfg.train.epochs * n_batches
                # A linear warm-up over the first 5 % of the steps: a fine-tuned model's first full-size
                # steps can throw away what it learned (measured: a distillation lost its strain maps).
                warm = min(1.0, (step + 1) / max(1.0, 0.05 * total))
                for group, lr0 in zip(optim.param_groups, base_lrs, strict=True):
                    group["lr"] = lr0 * warm * 0.5 * (1.0 + math.cos(math.pi * step / total))
            idx = np.sort(order[b * cfg.train.batch_size : (b + 1) * cfg.train.batch_size])
            if cfg.train.augment.model != "none":
                xb = torch.from_numpy(_augment(data.raw[idx], cfg, _rng(cfg.seed, _AUGMENT, epoch, b)))
            else:
                xb = torch.from_numpy(data.x[idx])
            if world.size > 1:  # data-parallel: this rank's shard of the batch
                xb = xb[world.shard(len(xb))]
            out = model(xb)
            terms = model.loss(xb, out, cfg.loss)
            if stage is not None and stage.batch_loss is not None:
                terms = stage.batch_loss(model, out, idx[world.shard(len(idx))] if world.size > 1 else idx, terms)
            loss = local = terms["total"]
            if cfg.train.l1_weight:
                loss = local = loss + cfg.train.l1_weight * sum(p.abs().sum() for p in enc_params)
            if world.size > 1:  # the whole batch's loss, for the check and the log
                loss, terms = world.reduce(local, terms, len(xb) / len(idx))
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss became NaN/infinite at epoch {epoch + 1}, batch {b + 1}; lower train.lr and retrain"
                )
            optim.zero_grad(set_to_none=True)
            if world.size > 1:  # each rank's share of the batch mean; summed, the whole batch's gradient
                (local * (len(xb) / len(idx))).backward()
                world.sync_grads(model)
            else:
                loss.backward()
            optim.step()
            if stage is not None and stage.after_step is not None:
                stage.after_step(model)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if progress is not None:
                progress("train", epoch * n_batches + b + 1, cfg.train.epochs * n_batches, float(loss.detach()))
        if world.size > 1:
            world.sync_buffers(model)
        entry = {"epoch": epoch + 1, **{f"train_{k}": v / n_batches for k, v in sums.items()}}
        if len(val_idx):
            entry.update({f"val_{k}": v for k, v in evaluate_loss(model, data.x[val_idx], cfg).items()})
        spread = check_collapse(model, data.x[val_idx] if len(val_idx) >= 8 else data.x[train_idx])
        entry.update({f"spread_{k}": v for k, v in spread.items()})
        elapsed += time.perf_counter() - t0
        entry["seconds"] = round(elapsed, 2)
        history.append(entry)
        if not world.writer:
            continue
        save_checkpoint(
            ckpt_path,
            {
                "format": CHECKPOINT_FORMAT,
                "version": __version__,
                "model": model.state_dict(),
                "optim": optim.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "seconds": elapsed,
                "config": cfg.model_dump(mode="json"),
                "symmetry": data.symmetry,
                "stage": stage.name if stage is not None else "train",
                **(stage.checkpoint if stage is not None else {}),
                "data": {
                    "path": str(Path(data.path).resolve()),  # absolute: later stages may run from another directory
                    "fingerprint": data.fingerprint,
                    "scan_shape": list(data.scan_shape),
                    "pattern_shape": list(data.raw.shape[-2:]),
                },
            },
        )
    report = {
        "stage": stage.name if stage is not None else "train",
        "data": str(data.path),
        "patterns": {"train": len(train_idx), "val": len(val_idx)},
        "symmetry": data.symmetry,
        "encoder": {
            "parameters": count_parameters(model.encoder),
            "macs": count_macs(model.encoder, cfg.preprocess.size),
        },
        "epochs": cfg.train.epochs,
        "steps": cfg.train.epochs * n_batches,
        "learning": learning_verdict(history),
        "history": history,
        "seconds": round(elapsed, 2),
        "config": json.loads(json.dumps(cfg.model_dump(mode="json"))),
        "versions": versions(),
        "machine": machine(),
    }
    if world.writer:
        write_json(run / TRAIN_REPORT, report)
    return report


# load_data, load_checkpoint, model_from_checkpoint and load_run_config live in edgestem.data.dataset
# and edgestem.rundir; they stay importable from here for code written against earlier versions.
__all__ = [
    "Stage",
    "TrainingData",
    "TrainingError",
    "load_data",
    "train",
    "load_checkpoint",
    "model_from_checkpoint",
    "load_run_config",
]
