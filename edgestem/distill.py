"""Distillation on the user's own scan (``edgestem distill``): no ground-truth label is used.

The unsupervised CC-ST-AE learns rotation and shear quickly and normal strain slowly, and what it
learns is limited by how well one dictionary pattern explains every pattern. Slower estimators that
need no labels do better on the same patterns: the per-pattern likelihood refinement
(:mod:`edgestem.refine`) started from the encoder, or the classical Bragg-disk fit
(:mod:`edgestem.baseline`). Distillation lets such a teacher map the training scan once, then
fine-tunes the encoder through the one training loop to regress the teacher's affine maps, with the
cycle-consistent loss kept as a regulariser. The encoder's architecture does not change, so QAT,
export, firmware and emulation take the distilled model as they take the float one.

Frames. The refinement's template is built in the encoder's frame (the patterns aligned by the
encoder's own maps), so its maps are directly targets for the encoder. The classical fit's maps are
in the lattice's frame; they are brought into the encoder's frame through the reference: with
``M = inv(A)`` and the encoder's reference ``M_ref`` (:func:`edgestem.strain.reference_matrix`), a
teacher deformation ``T`` relative to its own reference becomes ``A = inv(M_ref @ T)``, which
reproduces the teacher's maps exactly under :func:`edgestem.strain.strain_from_affine`.

Regression term: the mean squared difference of the four entries of ``A`` (prediction minus
teacher), in units of ``distill.unit`` (1e-3: one unit is 0.1 % strain or 0.057 deg), over the
patterns the teacher mapped (non-converged refinements and failed fits are left out).

Rounds: with ``rounds > 1`` the teacher runs again from the fine-tuned encoder (a better start and a
sharper template), and the encoder is fine-tuned again on the new maps. Each round is its own run
directory ``OUT/round-<r>`` (resumable like any training); the last round's checkpoint is copied to
``OUT/checkpoint.pt`` so ``OUT`` is a run directory that QAT, strain and emulate take.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgestem.config import Config, DistillConfig
from edgestem.errors import EdgestemError
from edgestem.rundir import DISTILL_DIR, checkpoint_path, config_path, has_checkpoint

TEACHERS = ("refine", "classical")
_TARGETS = "targets.npz"


def teacher_maps(
    teacher: str,
    raw: np.ndarray,
    A_enc: np.ndarray,
    scan_shape: tuple[int, int],
    symmetry: str | None,
    steps: int = 12,
) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's affine maps (N, 2, 2) in the encoder's frame and a mask (N,) of the usable ones."""
    from edgestem import strain as S

    if teacher == "refine":
        from edgestem.evaluate import refine_with_fallback

        A, info = refine_with_fallback(raw, A_enc, steps=steps)
        # Every pattern the fit ran on (at low dose few reach the 1e-4 px step tolerance, yet they are
        # the best estimates there are); empty or non-finite patterns keep their start and are left out.
        ok = (np.asarray(info["scale"]).ravel() > 0) & np.all(np.isfinite(A.reshape(-1, 4)), axis=1)
        return np.asarray(A, np.float64).reshape(-1, 2, 2), ok
    if teacher == "classical":
        from edgestem.baseline import classical_strain

        res = classical_strain(raw.reshape(*scan_shape, *raw.shape[-2:]), symmetry=symmetry)
        maps = {k: np.asarray(res.maps[k], np.float64).ravel() for k in ("exx", "eyy", "exy", "theta")}
        ok = np.all(np.isfinite(np.stack(list(maps.values()))), axis=0)
        for k in maps:
            maps[k] = np.where(ok, maps[k], 0.0)
        # strain_from_affine reads inv(M_ref) @ M = (I + eps) @ R(-theta) (left polar decomposition):
        # rebuild that product from the teacher's maps and put it on the encoder's reference.
        sym = np.eye(2) + np.stack(
            [np.stack([maps["exx"], maps["exy"]], -1), np.stack([maps["exy"], maps["eyy"]], -1)], -2
        )
        M_ref = S.reference_matrix(np.linalg.inv(A_enc.reshape(-1, 2, 2)))
        A = np.linalg.inv(M_ref @ sym @ S.rotation_matrix(-maps["theta"]))
        return A, ok
    raise EdgestemError(f"unknown distill.teacher {teacher!r}; choose one of: {', '.join(TEACHERS)}")


def distill_run(
    run: str | Path,
    cfg: DistillConfig | None = None,
    *,
    data: str | Path | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: Any = None,
    echo: Any = None,
) -> dict[str, Any]:
    """``edgestem distill``: fine-tune a trained run's encoder on a teacher's maps of its training scan.

    ``run``: a trained float run (``checkpoint.pt``); ``data``: the scan to distil on (default: the
    run's training data); ``out``: the distilled run directory (default ``RUN/distill``). Writes
    ``OUT/round-<r>/`` per round (targets, checkpoint, train.json), ``OUT/checkpoint.pt``,
    ``OUT/config.yaml`` and ``OUT/distill.json``.
    """
    from edgestem.atomic import atomic_path, write_json
    from edgestem.config import save_config
    from edgestem.evaluate import predict_affine
    from edgestem.rundir import load_checkpoint, model_from_checkpoint, open_stage
    from edgestem.runinfo import stage_report
    from edgestem.train import train

    t_start = time.perf_counter()
    run = Path(run)
    out = Path(out) if out is not None else run / DISTILL_DIR
    source = open_stage(run)
    if source.state.get("quant"):
        raise EdgestemError(f"{run} is a quantized run; distil the float run and run qat from the distilled one")
    base_cfg = source.cfg
    dcfg = cfg if cfg is not None else base_cfg.distill
    data_path = Path(data) if data is not None else Path(source.state["data"]["path"])
    if not data_path.is_file():
        raise EdgestemError(f"{data_path}: the data to distil on is missing; give it with --data")
    if has_checkpoint(out) and not resume:
        raise EdgestemError(f"{out} already holds a distilled run; use --resume to continue it or choose another --out")
    d = source.read(data_path)
    symmetry = source.symmetry(d)
    cfg_train = base_cfg.model_copy(
        update={
            "distill": dcfg,
            "train": base_cfg.train.model_copy(update={"epochs": dcfg.epochs, "lr": dcfg.lr, "lr_schedule": "cosine"}),
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    source_run, rounds = run, []
    for r in range(1, dcfg.rounds + 1):
        rdir = out / f"round-{r}"
        rdir.mkdir(exist_ok=True)
        src_state = load_checkpoint(source_run)
        src_model, _ = model_from_checkpoint(src_state)
        targets_path = rdir / _TARGETS
        if targets_path.is_file():
            with np.load(targets_path) as z:
                A_t, ok, teacher_seconds = z["A"], z["ok"], float(z["seconds"])
        else:
            t0 = time.perf_counter()
            if echo:
                echo(f"round {r}: teacher '{dcfg.teacher}' maps {len(d.x)} patterns")
            A_enc = predict_affine(src_model, d.x)
            A_t, ok = teacher_maps(dcfg.teacher, d.raw, A_enc, d.scan_shape, symmetry, steps=dcfg.refine_steps)
            teacher_seconds = time.perf_counter() - t0
            with atomic_path(targets_path) as tmp, open(tmp, "wb") as f:
                np.savez(f, A=A_t, ok=ok, seconds=teacher_seconds)
        if ok.sum() < max(2, len(ok) // 4):
            raise EdgestemError(
                f"the {dcfg.teacher} teacher mapped only {int(ok.sum())} of {len(ok)} patterns; "
                "train the float run longer or try --teacher classical"
            )
        stage = _stage(src_state, A_t, ok, dcfg)
        resume_round = has_checkpoint(rdir)
        rep = train(cfg_train, data_path, rdir, resume=resume_round, progress=progress, stage=stage)
        rounds.append(
            {
                "round": r,
                "teacher": dcfg.teacher,
                "teacher_seconds": round(teacher_seconds, 2),
                "teacher_mapped": int(ok.sum()),
                "patterns": int(len(ok)),
                "train_seconds": rep["seconds"],
                "final": {k: v for k, v in rep["history"][-1].items() if k != "epoch"},
            }
        )
        source_run = rdir
    with atomic_path(checkpoint_path(out)) as tmp:
        shutil.copyfile(checkpoint_path(source_run), tmp)
    save_config(cfg_train, config_path(out))
    report = stage_report(
        "distill",
        inputs={"run": str(run), "data": str(data_path)},
        outputs={"run": str(out), "checkpoint": str(checkpoint_path(out))},
        config=cfg_train,
        metrics={"rounds": rounds, "seconds": round(time.perf_counter() - t_start, 2)},
    )
    write_json(out / "distill.json", report)
    return report


def _stage(src_state: dict[str, Any], A_t: np.ndarray, ok: np.ndarray, dcfg: DistillConfig) -> Any:
    """The fine-tuning stage: the source model's weights, the regression term on the teacher's maps."""
    import torch

    from edgestem.model.ccstae import param_regression, regression_scale, target_params
    from edgestem.rundir import model_from_checkpoint
    from edgestem.train import Stage

    params = target_params(A_t)
    target = torch.from_numpy(params.astype(np.float32))
    scale = torch.from_numpy(regression_scale(dcfg.unit).astype(np.float32))
    cycle0: dict[str, float] = {}
    weight = torch.from_numpy(np.asarray(ok, np.float32))

    def build(cfg: Config, d: Any, train_idx: np.ndarray) -> Any:
        from edgestem.train import evaluate_loss

        model, _ = model_from_checkpoint(src_state)
        # The cycle loss's size depends on the data (pattern size, normalisation): measured in units of
        # the source model's own cycle loss, distill.cycle_weight means the same on every scan.
        cycle0["value"] = max(evaluate_loss(model, d.x[train_idx[:512]], cfg)["total"], 1e-12)
        return model

    def batch_loss(model: Any, out: Any, idx: np.ndarray, terms: dict[str, Any]) -> dict[str, Any]:
        ti = torch.from_numpy(np.asarray(idx, np.int64))
        reg = param_regression(model.head, out.raw, target[ti], scale, weight[ti])
        total = reg + dcfg.cycle_weight * terms["total"] / cycle0["value"]
        return {**terms, "cycle": terms["total"], "distill": reg, "total": total}

    return Stage("distill", build, batch_loss=batch_loss, checkpoint={"source": {"stage": src_state.get("stage")}})


__all__ = ["TEACHERS", "distill_run", "teacher_maps"]
