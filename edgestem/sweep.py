"""Optuna hyper-parameter sweeps (``edgestem sweep``): strain MAE at one test noise level as the objective.

The search space is the config's ``sweep.space`` (dotted config keys, plus ``encoder_width`` and
``encoder_depth`` for the encoder's shape). Each trial trains the CC-ST-AE through the one training
loop on the robustness study's clean scan with fresh noise at ``sweep.train_levels`` per batch, and
scores the strain MAE at ``sweep.test_level`` after every epoch, which the median pruner uses to
stop bad trials early.

Storage: a SQLite file by default (embedded, nothing to start); any database URL Optuna accepts
(PostgreSQL, MySQL) lets workers on many machines share one study. Workers heartbeat their running
trials; a trial whose worker died is marked failed and queued again (``RetryFailedTrialCallback``),
so no trial is lost. Every worker simulates the same data from the config, and a worker whose
config differs from the study's is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgestem.config import Config, SearchParam
from edgestem.errors import ConfigError, EdgestemError, ToolMissingError

WIDTH, DEPTH = "encoder_width", "encoder_depth"
_HEARTBEAT_S, _GRACE_S = 20, 120


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ToolMissingError("edgestem sweep needs Optuna: pip install -e '.[study]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def storage_url(storage: str) -> str:
    """A database URL as given, or a file path turned into a SQLite URL."""
    if "://" in storage:
        return storage
    path = Path(storage).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def apply_params(cfg: Config, params: dict[str, Any]) -> Config:
    """The config with a trial's parameters set (dotted keys; encoder_width/encoder_depth reshape channels)."""
    data = cfg.model_dump(mode="json")
    channels = list(cfg.model.encoder.channels)
    if DEPTH in params:
        depth = int(params[DEPTH])
        channels = (channels + [channels[-1]] * depth)[:depth]
    if WIDTH in params:
        channels = [max(1, round(c * float(params[WIDTH]))) for c in channels]
    data["model"]["encoder"]["channels"] = channels
    for key, value in params.items():
        if key in (WIDTH, DEPTH):
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"sweep.space: {key} is not a config key")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"sweep.space: {key} is not a config key")
        node[leaf] = value
    try:
        return Config.model_validate(data)
    except Exception as exc:  # noqa: BLE001 - pydantic's message, on one line
        raise ConfigError(f"sweep.space: {params} gives an invalid config: {str(exc).splitlines()[0]}") from None


def suggest(trial: Any, key: str, p: SearchParam) -> Any:
    """One parameter from the trial; categorical choices that are lists (channels) go through JSON."""
    if p.type == "float":
        return trial.suggest_float(key, p.low, p.high, log=p.log)
    if p.type == "int":
        return trial.suggest_int(key, int(p.low), int(p.high), log=p.log)
    plain = all(isinstance(c, str | int | float | bool) or c is None for c in p.choices or [])
    if plain:
        return trial.suggest_categorical(key, p.choices)
    return json.loads(trial.suggest_categorical(key, [json.dumps(c) for c in p.choices or []]))


def _corner(p: SearchParam) -> Any:
    """A value of a parameter, to check before the first trial that the space builds valid configs."""
    return p.choices[0] if p.type == "categorical" else (int(p.low) if p.type == "int" else p.low)


def trial_seeded_sampler(seed: int) -> Any:
    """TPE whose random draws are seeded by (config seed, trial number), so parallel workers differ.

    With one sampler seed per worker, workers started together would suggest the same parameters
    until enough trials finish; seeding by trial number keeps every draw derived from the config.
    """
    optuna = _optuna()

    class TrialSeeded(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._inner = optuna.samplers.TPESampler(seed=seed)

        def before_trial(self, study: Any, trial: Any) -> None:
            state = np.random.SeedSequence([seed, trial.number]).generate_state(1)[0]
            self._inner = optuna.samplers.TPESampler(seed=int(state))
            self._inner.before_trial(study, trial)

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
            return self._inner.sample_independent(study, trial, name, distribution)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self._inner.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self._inner.reseed_rng()

    return TrialSeeded()


def open_study(cfg: Config, storage: str) -> Any:
    """Create or join the study ``sweep.study_name`` in ``storage``; refuse a worker with another config."""
    optuna = _optuna()
    url = storage_url(storage)
    kwargs: dict[str, Any] = {"heartbeat_interval": _HEARTBEAT_S, "grace_period": _GRACE_S}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # wait for a writer instead of failing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
        # A trial whose worker stopped heartbeating is marked failed and queued again (renamed in Optuna 4.9).
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
            kwargs["heartbeat_stale_trial_callback"] = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
        else:
            kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=3)
        for attempt in range(5):
            try:
                rdb = optuna.storages.RDBStorage(url, **kwargs)
                break
            except Exception as exc:  # noqa: BLE001 - workers starting together race to create the tables
                error = exc
                time.sleep(0.5 * (attempt + 1))
        else:
            raise EdgestemError(f"cannot open --storage {storage}: {str(error).splitlines()[0]}") from None
    sw = cfg.sweep
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=sw.pruner_startup_trials, n_warmup_steps=sw.pruner_warmup_epochs)
        if sw.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=rdb,
        study_name=sw.study_name,
        direction="minimize",
        sampler=trial_seeded_sampler(cfg.seed),
        pruner=pruner,
        load_if_exists=True,
    )
    from edgestem.robustness import study_fields

    fields = study_fields(cfg, extra=("sweep",))
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    if "config" not in study.user_attrs:
        study.set_user_attr("config", digest)
        study.set_user_attr("config_yaml", _yaml(cfg))
    elif study.user_attrs["config"] != digest:
        raise EdgestemError(
            f"study {sw.study_name} in {storage} was started with another config; use that config "
            "(stored in the study's user attribute config_yaml) or another sweep.study_name"
        )
    return study


def _yaml(cfg: Config) -> str:
    from edgestem.config import dump_config

    return dump_config(cfg)


def objective_value(model: Any, data: Any, metric: str, reference: str | None) -> float:
    """Strain MAE (%; mean of exx, eyy, exy for ``strain``) or theta MAE (deg) at the test column."""
    from edgestem.evaluate import maps_from_affine, predict_affine, strain_mae

    col = data.columns[0]
    maps = maps_from_affine(predict_affine(model, col.x), data.scan_shape, reference, data.symmetry)
    mae = strain_mae(maps, data.truth, reference)
    return float(np.mean([mae[k] for k in ("exx", "eyy", "exy")])) if metric == "strain" else float(mae[metric])


def run_sweep(
    cfg: Config,
    storage: str,
    n_trials: int,
    report: str | Path | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``edgestem sweep``: run ``n_trials`` trials in this worker (0: none), then (``report``) plots and a summary."""
    from edgestem.robustness import check_levels, prepare_data
    from edgestem.rundir import load_checkpoint, model_from_checkpoint
    from edgestem.train import Stage, TrainingError, build_model, train

    optuna = _optuna()
    sw = cfg.sweep
    levels = list(sw.train_levels or [sw.test_level])
    rc = cfg.robustness.model_copy(update={"train_levels": levels, "mixed": [], "test_levels": [sw.test_level]})
    check_levels(rc)
    for key, p in sw.space.items():
        apply_params(cfg, {key: _corner(p)})
    study = open_study(cfg, storage)
    dcfg = cfg.model_copy(update={"robustness": rc})
    tmp = tempfile.TemporaryDirectory(prefix="edgestem-sweep-") if workdir is None else None
    work = Path(tmp.name if tmp else workdir)
    data = prepare_data(dcfg, work / "data", log) if n_trials else None  # 0 trials: only the report

    def objective(trial: Any) -> float:
        from edgestem.robustness import cell_config

        params = {key: suggest(trial, key, p) for key, p in sw.space.items()}
        tcfg = apply_params(dcfg, params)
        tcfg = cell_config(tcfg, levels, tcfg.seed)
        # A searched pre-processing option changes the test inputs too (the files are reused).
        tdata = data if tcfg.preprocess == dcfg.preprocess else prepare_data(tcfg, work / "data", log)
        run = work / f"trial-{trial.number}"
        shutil.rmtree(run, ignore_errors=True)  # a retried trial starts afresh

        def report_epoch(model: Any, epoch: int) -> None:
            if epoch == 0:
                return
            trial.report(objective_value(model, tdata, sw.metric, rc.reference), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        t0 = time.perf_counter()
        try:
            train(tcfg, data.clean, run, stage=Stage("train", build_model, on_epoch=report_epoch))
            model, _ = model_from_checkpoint(load_checkpoint(run))
            value = objective_value(model, tdata, sw.metric, rc.reference)
            trial.report(value, tcfg.train.epochs)
        except TrainingError as exc:  # a collapsed or diverged encoder: a bad trial, not a broken sweep
            trial.set_user_attr("error", str(exc))
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            shutil.rmtree(run, ignore_errors=True)
        return value

    def echo(study: Any, t: Any) -> None:
        value = "" if t.value is None else f" {sw.metric} MAE {t.value:.4f}"
        log(f"trial {t.number}: {t.state.name.lower()}{value} {json.dumps(t.params)}")

    try:
        study.optimize(objective, n_trials=n_trials, callbacks=[echo], catch=(TrainingError,))
    finally:
        if tmp:
            tmp.cleanup()
    summary = summarize(study)
    if report is not None:
        summary["report"] = [str(p) for p in write_report(study, Path(report), summary)]
    return summary


def summarize(study: Any) -> dict[str, Any]:
    """Counts by state, the best trial, and every trial's parameters and value."""
    optuna = _optuna()
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = min(done, key=lambda t: t.value) if done else None
    return {
        "study": study.study_name,
        "trials": states,
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
        "all": [
            {"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params, **t.user_attrs}
            for t in trials
        ],
    }


def write_report(study: Any, folder: Path, summary: dict[str, Any]) -> list[Path]:
    """Optuna's plots (history, parameter importance, parallel coordinates) as PNG, and sweep.json."""
    from edgestem.atomic import write_json
    from edgestem.report import _pyplot, save_figure
    from edgestem.runinfo import stage_report

    optuna = _optuna()
    vm = optuna.visualization.matplotlib
    _pyplot()
    written = []
    plots = {
        "history": vm.plot_optimization_history,
        "importance": vm.plot_param_importances,
        "parallel": vm.plot_parallel_coordinate,
    }
    notes = {}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = plot(study)
        except Exception as exc:  # noqa: BLE001 - e.g. importance needs two finished trials
            notes[name] = f"not drawn: {type(exc).__name__}: {exc}"
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(8, 5)
        written.append(save_figure(fig, folder / f"sweep-{name}.png"))
    written.append(
        write_json(
            folder / "sweep.json",
            stage_report("sweep", outputs={"figures": [str(p) for p in written]}, metrics={**summary, "notes": notes}),
        )
    )
    return written


__all__ = ["apply_params", "open_study", "run_sweep", "storage_url", "summarize", "write_report"]
