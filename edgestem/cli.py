"""The ``edgestem`` command line: one thin command per stage, no logic of its own.

Importing this module must stay cheap: torch, brevitas, qonnx, hls4ml, h5py and matplotlib load only
inside the command that needs them (tested in tests/test_cli.py).
"""

from __future__ import annotations

import errno
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from edgestem import __version__
from edgestem.errors import EdgestemError
from edgestem.registry import EMULATORS, EXPORT_FORMATS, FIRMWARE

app = typer.Typer(
    name="edgestem",
    help="4D-STEM strain mapping with a CC-ST-AE: simulate, train, quantize, export to FPGA firmware, emulate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (see configs/); CLI options override it.")
DatasetOpt = typer.Option(None, "--dataset", help="Array inside the file (HDF5 path, .npz key, .mat variable).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar.")


def _command_name(fn: Callable[..., Any]) -> str:
    """The name the user typed (``config``, ``run``), not the Python function's."""
    for command in app.registered_commands:
        if getattr(command.callback, "__wrapped__", None) is fn:
            return command.name or fn.__name__.replace("_", "-")
    return fn.__name__.replace("_", "-")


# Environment faults met while reading or writing files: one line each, never a traceback.
_OS_ERRORS = {
    "ENOSPC": "no space left on the device; free space or write to another disk",
    "EDQUOT": "disk quota exceeded; free space or write to another disk",
    "EROFS": "read-only file system; choose a writable path",
    "EACCES": "permission denied; choose a path you may write",
    "EPERM": "operation not permitted; choose a path you may write",
    "EISDIR": "is a directory; give a file name",
    "ENOTDIR": "a part of the path is not a directory",
    "ENAMETOOLONG": "file name too long",
    "EFBIG": "file too large for this file system",
    "EIO": "input/output error on the device",
    "EMFILE": "too many open files",
    "ENOENT": "no such file or directory",
}
# A file failed to write (disk full, I/O error): HDF5 may hold a file it could not close, and its
# exit handlers then crash (a segfault); main() ends such a process directly, its output removed.
_HARD_EXIT = {"needed": False}


def _os_error_message(exc: OSError) -> str | None:
    name = errno.errorcode.get(exc.errno or -1)
    if name not in _OS_ERRORS:
        return None
    where = exc.filename or exc.filename2
    if where is None:  # h5py puts the file name in its message only
        import re

        m = re.search(r"filename = '([^']+)'", str(exc))
        where = m.group(1) if m else None
    if where is not None:
        # name the output, not its temporary file (.NAME.tmp-XXXX.ext, removed on the way out)
        import re

        where = re.sub(r"(^|/)\.([^/]+)\.tmp-[^/.]+(\.[^/]*)?$", r"\1\2\3", str(where))
    text = _OS_ERRORS[name]
    return f"{where}: {text}; nothing was kept" if where else f"{text}; nothing was kept"


def _user_errors(fn: F) -> F:
    """Print user errors (bad data, config, missing tools, disk full, interrupts) as one line on stderr."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from edgestem.atomic import Interrupted, received_signal

        name = _command_name(fn)
        try:
            result = fn(*args, **kwargs)
            if received_signal() is not None:  # a library swallowed the interrupt: still report it
                raise Interrupted(received_signal())  # type: ignore[arg-type]
            return result
        except EdgestemError as exc:
            typer.echo(f"edgestem {name}: error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            code = exc.exit_code if isinstance(exc, Interrupted) else 130
            how = "terminated" if code == 143 else "interrupted"
            typer.echo(f"edgestem {name}: {how}; no partial output was kept", err=True)
            raise typer.Exit(code) from None
        except OSError as exc:
            msg = _os_error_message(exc)
            if msg is None:
                raise
            _HARD_EXIT["needed"] |= exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)
            typer.echo(f"edgestem {name}: error: {msg}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgestem {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """4D-STEM strain mapping from a CC-ST-AE to bit-accurate FPGA firmware."""


def _noise_overrides(noise_w: float | None, dose: float | None, read_noise: float | None = None) -> dict[str, Any]:
    if noise_w is not None and dose is not None:
        raise EdgestemError("give either --noise-w or --dose, not both")
    out: dict[str, Any] = {"noise.read_noise": read_noise}
    if noise_w is not None:
        out.update({"noise.model": "background", "noise.w": noise_w})
    if dose is not None:
        out.update({"noise.model": "dose", "noise.dose": dose})
    return out


def _sidecar(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _check_scan_fits(out: Path, scan: tuple[int, int], size: int) -> None:
    """Refuse a scan whose output cannot fit on the disk, or whose labels and row blocks cannot fit in memory."""
    from edgestem.paths import check_memory, check_space

    rx, ry = scan
    check_space(
        out,
        4.0 * rx * ry * size * size,
        f"a {rx}x{ry} scan of {size}x{size} px patterns (float32)",
        "free space, choose another disk, or make --scan or --size smaller",
    )
    # labels, deformation gradients and coordinates (about 20 float64 per position), and the
    # rendering of one scan row (a few float64 copies of its patterns)
    check_memory(
        160.0 * rx * ry + 32.0 * ry * size * size,
        f"a {rx}x{ry} scan of {size}x{size} px patterns",
        "make --scan or --size smaller",
    )


@app.command()
@_user_errors
def simulate(
    out: Path = typer.Option(..., "--out", "-o", help="Output HDF5 file (edgestem layout, with labels)."),
    config: Path | None = ConfigOpt,
    scan: int | None = typer.Option(None, help="Scan size N (N x N probe positions). [default: 32]"),
    size: int | None = typer.Option(None, help="Pattern size Q (Q x Q pixels). [default: 64]"),
    lattice: str | None = typer.Option(None, help="Lattice symmetry: hex or square. [default: hex]"),
    specimen: str | None = typer.Option(None, help="polycrystal, smooth or random. [default: polycrystal]"),
    noise_w: float | None = typer.Option(None, "--noise-w", help="Background-noise weight w (then Poisson at 1e5)."),
    dose: float | None = typer.Option(None, "--dose", help="Poisson noise at this many electrons per pattern."),
    seed: int | None = typer.Option(None, help="Seed of every random draw. [default: 0]"),
    engine: str | None = typer.Option(
        None, help="kinematic (disks) or abtem (multislice; pip install 'edgestem[physics]'). [default: kinematic]"
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="abtem: worker processes."),
    keep_cache: bool = typer.Option(False, "--keep-cache", help="abtem: keep the per-pattern cache after writing."),
    quiet: bool = QuietOpt,
) -> None:
    """Simulate a 4D-STEM scan with known strain and rotation labels (kinematic or multislice diffraction).

    abtem: patterns are cached beside the output as they finish; a killed run resumes.
    """
    from edgestem.atomic import write_json
    from edgestem.config import load_config
    from edgestem.data.io import check_writable_format
    from edgestem.paths import check_output_file
    from edgestem.progress import progress_bar
    from edgestem.runinfo import stage_report

    check_output_file(out, [config], extra=[_sidecar(out)])
    check_writable_format(out, labels=True)
    t0 = time.perf_counter()
    cfg = load_config(
        config,
        {
            "simulate.scan": scan,
            "simulate.size": size,
            "simulate.lattice.kind": lattice,
            "simulate.specimen.kind": specimen,
            "seed": seed,
            "simulate.engine": engine,
            **_noise_overrides(noise_w, dose),
        },
    )
    _check_scan_fits(out, cfg.simulate.scan, cfg.simulate.size)
    rx, ry = cfg.simulate.scan
    if cfg.simulate.engine == "abtem":
        from edgestem.data import multislice

        multislice.require_physics()
        try:
            with progress_bar("simulating (abtem)", rx * ry, enabled=not quiet) as advance:
                multislice.simulate_to_file(cfg, out, progress=advance, workers=workers, keep_cache=keep_cache)
        except KeyboardInterrupt:
            cache = multislice.cache_dir(cfg, out)
            typer.echo(
                f"edgestem simulate: interrupted; finished patterns are kept in {cache}: "
                "run the same command again to resume",
                err=True,
            )
            raise typer.Exit(130) from None
        what = f"{cfg.simulate.multislice.crystal} multislice"
    else:
        from edgestem.data.simulate import simulate_to_file

        with progress_bar("simulating", rx, enabled=not quiet) as advance:
            simulate_to_file(cfg, out, progress=advance)
        what = cfg.simulate.lattice.kind
    write_json(_sidecar(out), stage_report("simulate", outputs={"data": out}, config=cfg, started=t0))
    typer.echo(
        f"wrote {out}: {rx}x{ry} patterns of {cfg.simulate.size}x{cfg.simulate.size} px, "
        f"{what} {cfg.simulate.specimen.kind}, noise {cfg.noise.model}"
    )


@app.command()
@_user_errors
def noise(
    data: Path = typer.Option(..., "--data", "-d", help="Input data file (any readable format)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output HDF5 file; labels and attributes are kept."),
    noise_w: float | None = typer.Option(None, "--noise-w", help="Background-noise weight w (then Poisson)."),
    dose: float | None = typer.Option(None, "--dose", help="Poisson noise at this many electrons per pattern."),
    read_noise: float | None = typer.Option(None, "--read-noise", help="Gaussian read noise, std in counts."),
    seed: int | None = typer.Option(None, help="Seed of the noise draw. [default: config seed]"),
    config: Path | None = ConfigOpt,
    dataset: str | None = DatasetOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Add seeded noise (background weight w or dose-limited Poisson) to an existing file."""
    import numpy as np

    from edgestem.atomic import write_json
    from edgestem.config import load_config
    from edgestem.data.io import check_writable_format
    from edgestem.data.noise import add_noise_to_file, describe
    from edgestem.paths import check_output_file, check_space
    from edgestem.progress import progress_bar
    from edgestem.runinfo import stage_report

    check_output_file(out, [data, config], extra=[_sidecar(out)])
    t0 = time.perf_counter()
    cfg = load_config(config, {"seed": seed, **_noise_overrides(noise_w, dose, read_noise)})
    if cfg.noise.model == "none" and not cfg.noise.read_noise and not cfg.noise.hot_pixels:
        raise EdgestemError("no noise requested: give --noise-w W or --dose D (or a config with a noise section)")
    from edgestem.data.io import open_4dstem

    with open_4dstem(data, dataset) as ds:
        rows = ds.shape[0]
        check_writable_format(out, labels=bool(ds.labels))
        check_space(out, 4.0 * float(np.prod(ds.shape)), f"the noisy copy of {data}")
    with progress_bar("adding noise", rows, enabled=not quiet) as advance:
        add_noise_to_file(data, out, cfg.noise, cfg.seed, progress=advance, dataset=dataset)
    write_json(
        _sidecar(out),
        stage_report("noise", inputs={"data": data}, outputs={"data": out}, config=cfg, started=t0),
    )
    typer.echo(f"wrote {out}: {describe(cfg.noise)}, seed {cfg.seed}")


@app.command()
@_user_errors
def info(
    file: Path = typer.Argument(..., help="Data file to describe."),
    dataset: str | None = DatasetOpt,
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    quiet: bool = QuietOpt,
) -> None:
    """Print shape, dtype, value range, labels and attributes of a data file (one streaming pass)."""
    import json

    from edgestem.data.io import open_4dstem
    from edgestem.data.summary import summarize
    from edgestem.progress import progress_bar

    with open_4dstem(file, dataset) as ds:
        with progress_bar("reading", ds.shape[0], enabled=not quiet) as advance:
            s = summarize(ds, progress=advance)
        source = ds.source
    d = s.as_dict()
    if json_out:
        from edgestem.atomic import _jsonable

        typer.echo(json.dumps(_jsonable({"file": str(file), "dataset": source, **d}), indent=2))
        return
    rx, ry, qx, qy = s.shape
    lines = [
        f"file        {file}" + (f"  [{source}]" if source else ""),
        f"shape       (Rx, Ry, Qx, Qy) = ({rx}, {ry}, {qx}, {qy}): {rx * ry} patterns of {qx}x{qy} px",
        f"dtype       {s.dtype}",
        f"values      min {s.vmin:.4g}, max {s.vmax:.4g}, mean {s.mean:.4g}",
        f"per pattern total min {s.total_min:.4g}, mean {s.total_mean:.4g}, max {s.total_max:.4g}",
    ]
    if s.labels:
        lines.append("labels      " + ", ".join(f"{k} [{v['min']:.4g}, {v['max']:.4g}]" for k, v in s.labels.items()))
    else:
        lines.append("labels      none")
    for k, v in s.attrs.items():
        text = str(v).replace("\n", " ")
        lines.append(f"attr        {k} = {text[:100]}{'...' if len(text) > 100 else ''}")
    typer.echo("\n".join(lines))


@app.command()
@_user_errors
def plot(
    file: Path = typer.Argument(..., help="Data file to plot."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory for the PNG figures."),
    dataset: str | None = DatasetOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Plot the mean pattern, a few patterns and the label maps of a data file."""
    from edgestem.paths import check_output_dir
    from edgestem.report import plot_dataset

    check_output_dir(out, [file], writes=["patterns.png", "labels.png", "plot.json"])
    written = plot_dataset(file, out, dataset=dataset, progress=not quiet)
    for p in written:
        typer.echo(f"wrote {p}")


@app.command()
@_user_errors
def train(
    data: Path = typer.Option(..., "--data", "-d", help="Training data file (any readable format)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (config.yaml, checkpoint.pt, train.json)."),
    config: Path | None = ConfigOpt,
    epochs: int | None = typer.Option(None, help="Training epochs. [default: config train.epochs]"),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its checkpoint."),
    seed: int | None = typer.Option(None, help="Seed of every random draw. [default: config seed]"),
    dataset: str | None = DatasetOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Train the float CC-ST-AE without labels (cycle-consistent loss); checkpoints every epoch."""
    from edgestem.config import load_config
    from edgestem.paths import check_output_dir
    from edgestem.rundir import config_path
    from edgestem.train import train as train_run

    check_output_dir(out, [data, config], writes=["checkpoint.pt", "train.json"])
    overrides = {"train.epochs": epochs, "seed": seed}
    # Resuming without --config continues with the run's own resolved config.
    saved = config_path(out)
    cfg = load_config(saved if resume and config is None and saved.is_file() else config, overrides)
    if resume and saved.is_file():
        _note_ignored(load_config(saved), cfg, "train")
    if epochs is not None:  # --epochs replaces a budget in steps
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": None})})
    report = _with_bar(
        "training", quiet, lambda cb: train_run(cfg, data, out, resume=resume, dataset=dataset, progress=cb)
    )
    last = report["history"][-1]
    val = f", validation loss {last['val_total']:.4g}" if "val_total" in last else ""
    typer.echo(
        f"trained {out}: {report['epochs']} epochs in {report['seconds']:.0f} s, "
        f"train loss {last['train_total']:.4g}{val}; encoder {report['encoder']['parameters']} parameters"
    )
    _warn_still_learning(report, f"edgestem train --data {data} --out {out} --resume --epochs N")


_PARAM_NAMES = {"sx": "exx (sx)", "sy": "eyy (sy)", "sh": "exy (shear)", "rot": "theta (rotation)"}


def _warn_still_learning(report: dict[str, Any], how: str) -> None:
    """Say so when a component's spread was still growing at the end: its maps are still shrunk to the mean."""
    learning = report.get("learning", {})
    if learning.get("still_learning"):
        names = ", ".join(_PARAM_NAMES[k] for k in learning["still_learning"])
        growth = learning["spread_growth_last_quarter"]
        typer.echo(
            f"warning: not learned yet: the spread of {names} grew "
            + ", ".join(f"{100 * growth[k]:.0f} %" for k in learning["still_learning"])
            + f" over the last quarter of the {report['epochs']} epochs ({report['steps']} steps); "
            f"its maps are still shrunk towards the mean: train longer ({how} with N > {report['epochs']})",
            err=True,
        )


@app.command()
@_user_errors
def strain(
    run: Path = typer.Option(..., "--run", "-r", help="Trained run directory."),
    data: Path = typer.Option(..., "--data", "-d", help="Data file to map."),
    out: Path = typer.Option(..., "--out", "-o", help="Output maps file (HDF5); also <out>.json and .png."),
    ref: str | None = typer.Option(
        None,
        "--ref",
        help="Reference region 'x0:x1,y0:y1' (scan positions), or 'grain:x,y': the grain around that position. "
        "[default: all]",
    ),
    refine: bool = typer.Option(False, "--refine", help="Per-pattern maximum-likelihood refinement after the encoder."),
    dataset: str | None = DatasetOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Strain, shear and rotation maps of a data file from a trained run (metrics when labelled)."""
    from edgestem.data.io import open_4dstem
    from edgestem.evaluate import strain_from_run
    from edgestem.paths import check_maps_file
    from edgestem.progress import progress_bar

    check_maps_file(out, [run, data])
    with open_4dstem(data, dataset) as ds:
        n = ds.shape[0] * ds.shape[1]
    with progress_bar("refining", n, enabled=refine and not quiet) as advance:
        res = strain_from_run(run, data, out, reference=ref, refine=refine, dataset=dataset, progress=advance)
    speed = ", ".join(f"{k} {v:.0f} patterns/s" for k, v in res["patterns_per_second"].items())
    typer.echo(f"wrote {out}: {res['patterns']} patterns ({speed})")
    left = res.get("refine", {})
    if left.get("not_converged"):
        first = ", ".join(map(str, left["not_converged_first"]))
        typer.echo(
            f"refine: {left['not_converged']} of {res['patterns']} patterns did not converge in 12 steps "
            f"(their maps are the last step's; first indices: {first})",
            err=True,
        )
    _echo_mae(res)


@app.command()
@_user_errors
def baseline(
    data: Path = typer.Option(..., "--data", "-d", help="Data file to map."),
    out: Path = typer.Option(..., "--out", "-o", help="Output maps file (HDF5); also <out>.json and .png."),
    ref: str | None = typer.Option(
        None,
        "--ref",
        help="Reference region 'x0:x1,y0:y1' (scan positions), or 'grain:x,y': the grain around that position. "
        "[default: all]",
    ),
    symmetry: str = typer.Option("auto", help="hex, square, none, or auto (from the file's attributes)."),
    dataset: str | None = DatasetOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Classical strain mapping (Bragg-disk detection + lattice fit), reported like `edgestem strain`."""
    from edgestem.evaluate import baseline_from_file
    from edgestem.paths import check_maps_file

    if symmetry not in ("auto", "hex", "square", "none"):
        raise EdgestemError(f"--symmetry {symmetry!r}: choose hex, square, none or auto")
    check_maps_file(out, [data])
    from edgestem.data.io import open_4dstem
    from edgestem.progress import progress_bar

    with open_4dstem(data, dataset) as ds:
        rows = ds.shape[0]
    with progress_bar("fitting Bragg disks", rows, enabled=not quiet) as advance:
        res = baseline_from_file(data, out, reference=ref, dataset=dataset, symmetry=symmetry, progress=advance)
    typer.echo(
        f"wrote {out}: {res['patterns']} patterns ({res['patterns_per_second']['classical']:.0f} patterns/s), "
        f"{res['failed']} failed fits"
    )
    _echo_mae(res)


def _echo_mae(res: dict[str, Any]) -> None:
    """One line of MAE per method (strain in %, theta in degrees), when the data had labels."""
    for note in res.get("notes", []):
        typer.echo(f"note: {note}", err=True)
    for name, mae in res.get("mae", {}).items():
        typer.echo(
            f"  {name:9s} MAE exx {mae['exx']:.3f} %, eyy {mae['eyy']:.3f} %, exy {mae['exy']:.3f} %, "
            f"theta {mae['theta']:.3f} deg"
        )


def _note_ignored(saved: Any, given: Any, command: str) -> None:
    """Say which given options a resumed run ignores (it continues with its own config)."""
    from edgestem.config import config_diff

    changed = [d for d in config_diff(saved, given) if not d.startswith(f"{command}.epochs ")]
    if changed:
        typer.echo(
            f"edgestem {command}: note: --resume continues with the run's own config; ignored: " + "; ".join(changed),
            err=True,
        )


def _with_bar(description: str, quiet: bool, fn: Callable[[Any], Any]) -> Any:
    """Run ``fn(callback)`` with a progress bar fed by ``callback(stage, done, total, loss)``."""
    import sys

    if quiet or not sys.stderr.isatty():
        return fn(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("loss {task.fields[loss]:.4g}"),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None, loss=float("nan"))

        def cb(stage: str, done: int, total: int, loss: float) -> None:
            bar.update(task, completed=done, total=total, loss=loss)

        return fn(cb)


@app.command()
@_user_errors
def qat(
    run: Path = typer.Option(..., "--run", "-r", help="Trained float run directory."),
    bits: int | None = typer.Option(None, help="Bits of weights and activations (2-16). [default: config qat.bits]"),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML whose qat: section is used. [default: the run's config.yaml]"
    ),
    epochs: int | None = typer.Option(None, help="QAT epochs. [default: config qat.epochs]"),
    per_layer: str | None = typer.Option(None, "--per-layer", help="Bit widths by layer, e.g. conv1=8,fc2=8."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Training data. [default: the float run's]"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output run directory. [default: RUN/qat]"),
    eval_data: Path | None = typer.Option(
        None, "--eval-data", help="Labelled (clean) data for the float-vs-QAT MAE. [default: the training data]"
    ),
    eval_noise_w: str | None = typer.Option(None, "--eval-noise-w", help="Background levels added to --eval-data."),
    eval_dose: str | None = typer.Option(None, "--eval-dose", help="Doses (e-/pattern) applied to --eval-data."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted QAT run."),
    quiet: bool = QuietOpt,
) -> None:
    """Quantization-aware training (Brevitas, power-of-two scales) from a float run, into RUN/qat/."""
    from edgestem.compress.quantize import qat_run
    from edgestem.config import load_config
    from edgestem.export.qonnx import require
    from edgestem.paths import check_output_dir
    from edgestem.rundir import CONFIG, QAT_DIR, config_path

    check_output_dir(out or run / QAT_DIR, [run, data, eval_data, config], writes=["checkpoint.pt", "train.json"])
    require("brevitas")  # before any work: a missing extra is one line, as for firmware and sweep
    source = config if config is not None else config_path(run)
    if config is None and not source.is_file():
        raise EdgestemError(f"{run}: not a run directory (no {CONFIG}); train first (edgestem train --out {run})")
    overrides: dict[str, Any] = {"qat.bits": bits, "qat.epochs": epochs}
    if per_layer:
        overrides["qat.per_layer"] = _name_values(per_layer, "--per-layer")
    qcfg = load_config(source, overrides).qat
    levels = _eval_levels(eval_noise_w, eval_dose)
    res = _with_bar(
        "QAT",
        quiet,
        lambda cb: qat_run(
            run, qcfg, data=data, out=out, resume=resume, eval_data=eval_data, eval_levels=levels, progress=cb
        ),
    )
    typer.echo(f"QAT {qcfg.bits} bits: {out or run / QAT_DIR} ({res['epochs']} epochs in {res['train_seconds']:.0f} s)")
    for row in res.get("mae", []):
        typer.echo(
            f"  {row['noise']:>8} {row['model']:>6}: exx {row['exx']:.3f} %  eyy {row['eyy']:.3f} %  "
            f"exy {row['exy']:.3f} %  theta {row['theta']:.3f} deg"
        )


@app.command()
@_user_errors
def distill(
    run: Path = typer.Option(..., "--run", "-r", help="Trained float run directory."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML whose distill: section is used. [default: the run's config.yaml]"
    ),
    teacher: str | None = typer.Option(None, help="refine or classical. [default: config distill.teacher]"),
    epochs: int | None = typer.Option(None, help="Fine-tuning epochs per round. [default: config distill.epochs]"),
    rounds: int | None = typer.Option(None, help="Teacher -> fine-tune rounds. [default: config distill.rounds]"),
    data: Path | None = typer.Option(
        None, "--data", "-d", help="Scan to distil on. [default: the run's training data]"
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output run directory. [default: RUN/distill]"),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted distillation."),
    quiet: bool = QuietOpt,
) -> None:
    """Fine-tune the encoder on a label-free teacher's maps of its own scan (no ground truth), into RUN/distill/."""
    from edgestem.config import load_config
    from edgestem.distill import distill_run
    from edgestem.paths import check_output_dir
    from edgestem.rundir import DISTILL_DIR

    check_output_dir(out or run / DISTILL_DIR, [run, data, config], writes=["checkpoint.pt", "config.yaml"])
    source = config if config is not None else run / "config.yaml"
    if config is None and not source.is_file():
        raise EdgestemError(f"{run}: not a run directory (no config.yaml); train first (edgestem train --out {run})")
    dcfg = load_config(source, {"distill.teacher": teacher, "distill.epochs": epochs, "distill.rounds": rounds}).distill
    res = _with_bar(
        "distill",
        quiet,
        lambda cb: distill_run(
            run, dcfg, data=data, out=out, resume=resume, progress=cb, echo=None if quiet else typer.echo
        ),
    )
    for r in res["metrics"]["rounds"]:
        typer.echo(
            f"round {r['round']}: {r['teacher']} teacher mapped {r['teacher_mapped']} of {r['patterns']} patterns "
            f"in {r['teacher_seconds']:.0f} s; fine-tuned in {r['train_seconds']:.0f} s"
        )
    typer.echo(f"distilled run: {res['outputs']['run']}")


def _name_values(text: str, option: str) -> dict[str, int]:
    """Parse 'conv1=8,fc2=8' into a dict; a malformed item is a one-line error."""
    out: dict[str, int] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise EdgestemError(f"{option} {text!r}: write name=bits pairs separated by commas, e.g. conv1=8,fc2=8")
        out[name.strip()] = int(value)
    return out


def _eval_levels(noise_w: str | None, dose: str | None) -> list[tuple[str, Any]] | None:
    """Noise levels from '0,0.25,0.5' (background w) or '1e4,1e3' (dose); None when neither is given."""
    from edgestem.data.noise import parse_levels

    return parse_levels(noise_w, dose)


@app.command()
@_user_errors
def prune(
    run: Path = typer.Option(..., "--run", "-r", help="Trained run directory (its float or QAT model is pruned)."),
    sparsity: float | None = typer.Option(
        None, "--sparsity", "-s", help="Fraction of weights (--structured: channels) removed, in [0, 1). [default: 0.5]"
    ),
    structured: bool | None = typer.Option(
        None, "--structured/--unstructured", help="Remove whole conv channels (layers shrink). [default: unstructured]"
    ),
    epochs: int | None = typer.Option(None, help="Fine-tuning epochs. [default: config prune.epochs]"),
    steps: int | None = typer.Option(None, help="Equal sparsity steps of the schedule. [default: config prune.steps]"),
    source: str = typer.Option("auto", "--from", help="float, qat, or auto: RUN/qat if it exists, else the float run."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML whose prune: section is used. [default: the run's config.yaml]"
    ),
    data: Path | None = typer.Option(None, "--data", "-d", help="Fine-tuning data. [default: the source run's]"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output run directory. [default: RUN/prune]"),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted pruning run."),
    dataset: str | None = DatasetOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Magnitude pruning (per-layer weights or whole channels) with fine-tuning, into RUN/prune/."""
    from edgestem.compress.prune import prune_run
    from edgestem.config import load_config
    from edgestem.paths import check_output_dir
    from edgestem.rundir import PRUNE_DIR, config_path

    reads = [run, run / "qat" if (run / "qat").is_dir() else None, data, config]
    check_output_dir(out or run / "prune", reads, writes=["checkpoint.pt", "train.json"])
    if config is None:  # resuming: the pruning run's own config; else the source run's
        candidates = ([config_path(out or run / PRUNE_DIR)] if resume else []) + [config_path(run)]
        config = next((p for p in candidates if p.is_file()), None)
    overrides = {
        "prune.sparsity": sparsity,
        "prune.structured": structured,
        "prune.epochs": epochs,
        "prune.steps": steps,
    }
    cfg = load_config(config, overrides)
    res = _with_bar(
        "pruning",
        quiet,
        lambda cb: prune_run(run, cfg, source=source, out=out, data=data, dataset=dataset, resume=resume, progress=cb),
    )["metrics"]
    before, after = res["before"], res["after"]
    kind = "structured" if res["structured"] else "unstructured"
    typer.echo(
        f"pruned {out or run / PRUNE_DIR} ({res['from']} model, {kind}, sparsity {res['sparsity']:g}): "
        f"parameters {before['parameters']} -> {after['parameters']}, "
        f"MACs {before['macs']} -> {after['macs']} ({after['effective_macs']} with a non-zero weight)"
    )
    mae = res["mae_vs_source"]
    typer.echo(
        f"  pruned vs source MAE exx {mae['exx']:.3f} %, eyy {mae['eyy']:.3f} %, exy {mae['exy']:.3f} %, "
        f"theta {mae['theta']:.3f} deg"
    )
    _echo_mae({"mae": {row["model"]: row for row in res.get("mae", [])}})


@app.command()
@_user_errors
def emulate(
    run: Path = typer.Option(..., "--run", "-r", help="Run directory (float, qat/, export/, firmware/ inside)."),
    backend: str = typer.Option("brevitas", "--backend", "-b", help=f"Emulation backend: {EMULATORS.choices()}."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Data file. [default: the run's training data]"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Maps file. [default: RUN/emulate/<backend>.h5]"),
    noise_w: float | None = typer.Option(None, "--noise-w", help="Background level w drawn on the patterns first."),
    dose: float | None = typer.Option(None, "--dose", help="Dose (e-/pattern) drawn on the patterns first."),
    check: bool = typer.Option(
        False, "--check", help="Compare raw outputs with the Brevitas reference; exit 1 on any difference."
    ),
    ref: str | None = typer.Option(
        None,
        "--ref",
        help="Reference region 'x0:x1,y0:y1' (scan positions), or 'grain:x,y': the grain around that position. "
        "[default: all]",
    ),
    dataset: str | None = DatasetOpt,
) -> None:
    """Strain maps through one backend (float, Brevitas, QONNX, ONNX Runtime, hls4ml C++, FINN), like `strain`."""
    from edgestem.config import load_config
    from edgestem.data.noise import noise_at
    from edgestem.emulate import emulate as emulate_run
    from edgestem.paths import check_maps_file
    from edgestem.rundir import emulate_path, trained_on

    if noise_w is not None and dose is not None:
        raise EdgestemError("give either --noise-w or --dose, not both")
    load_config(None, _noise_overrides(noise_w, dose))  # validates the level (dose > 0, 0 <= w <= 1)
    noise = noise_at("w", noise_w) if noise_w is not None else noise_at("dose", dose) if dose is not None else None
    if data is None:
        data = trained_on(run)
    out = out or emulate_path(run, backend)
    check_maps_file(out, [run, data])
    out.parent.mkdir(parents=True, exist_ok=True)
    res = emulate_run(run, backend, data, out, noise=noise, check=check, reference=ref, dataset=dataset)
    speed = res["patterns_per_second"][backend]
    typer.echo(f"wrote {out}: {res['patterns']} patterns through {backend} ({speed:.0f} patterns/s)")
    if "check" in res:
        c = res["check"]
        typer.echo(
            f"check vs brevitas: {c['patterns'] - c['mismatching_patterns']} of {c['patterns']} patterns identical"
            f" (max |diff| {c['max_abs_diff']:.3g})"
        )
    _echo_mae(res)


@app.command("synth-report")
@_user_errors
def synth_report(
    run: Path = typer.Argument(..., help="Run directory (reads RUN/firmware/{hls4ml,finn} and RUN/hw)."),
    board: str | None = typer.Option(
        None, "--board", "-b", help="Preset (zcu104, u250, pynq-z2), board YAML or part, for utilisation %."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Output JSON. [default: RUN/synth-report.json]"),
    yosys: bool = typer.Option(
        False, "--yosys", help="First synthesise RUN/firmware/rtl with yosys synth_xilinx (LUT/FF/DSP/BRAM counts)."
    ),
) -> None:
    """Summarise HLS, Vivado and FINN reports: latency, II, LUT/FF/DSP/BRAM, slack, utilisation."""
    from edgestem.firmware.synth_report import format_table, synth_report
    from edgestem.paths import check_output_file

    if json_out is not None:
        check_output_file(json_out, [run], option="--json")
    res = synth_report(run, board=board, json_out=json_out, yosys=yosys)
    where = "" if res["board"] is None else f" on {res['board']['name']} ({res['board']['part']})"
    typer.echo(f"synthesis reports of {run}{where}:")
    typer.echo(format_table(res["summary"]))
    typer.echo(f"wrote {res['json']}")


@app.command()
@_user_errors
def budget(
    run: Path = typer.Argument(..., help="Run directory with HLS/Vivado or FINN estimate reports."),
    detector: str | None = typer.Option(
        None, "--detector", "-d", help="4dcamera, empad-g2, merlin, ... or a rate in Hz. [default: every detector]"
    ),
    board: str | None = typer.Option(None, "--board", "-b", help="Preset, board YAML or part; brings its clock."),
    clock_ns: float | None = typer.Option(None, "--clock-ns", help="Judge at this clock instead of the design's."),
    json_out: Path | None = typer.Option(None, "--json", help="Output JSON. [default: RUN/budget.json]"),
) -> None:
    """Does the encoder keep up with the detector? Speed-up, FINN folding or hls4ml reuse factor needed."""
    from edgestem.paths import check_output_file
    from edgestem.targets.budget import budget as run_budget
    from edgestem.targets.budget import format_budget

    if json_out is not None:
        check_output_file(json_out, [run], option="--json")
    res = run_budget(run, detector=detector, board=board, clock_ns=clock_ns, json_out=json_out)
    typer.echo(format_budget(res))
    typer.echo(f"wrote {res['json']}")


@app.command()
@_user_errors
def robustness(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config with a robustness: section (see configs/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Study directory (table, figures, runs, report)."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed study; failed cells are tried again."),
) -> None:
    """Train-noise x test-noise grid with seeds: tidy table, heatmaps, error-vs-noise curves."""
    from edgestem.config import load_config
    from edgestem.paths import check_output_dir
    from edgestem.robustness import grid_markdown, run_study

    check_output_dir(out, [config])
    res = run_study(load_config(config), out, resume=resume, log=lambda line: typer.echo(line, err=True))
    cells = res["summary"]["cells"]
    typer.echo(f"wrote {out}: {cells['ok']} cells, {cells['failed']} failed; results.csv, figures/, robustness.json")
    typer.echo("exx MAE (%) against the labels (rows: trained at; columns: tested at):")
    typer.echo(grid_markdown(res["grids"]["noise-free"]["exx"]))


@app.command()
@_user_errors
def report(
    run: Path = typer.Option(..., "--run", "-r", help="Run directory (float, qat/, prune/, export/, firmware/)."),
    data: Path | None = typer.Option(
        None, "--data", "-d", help="Clean labelled data; noise is drawn per level. [default: the run's clean data]"
    ),
    noise_w: str | None = typer.Option(None, "--noise-w", help="Background levels. [default: 0,0.1,0.25,0.5,0.7]"),
    dose: str | None = typer.Option(None, "--dose", help="Doses in e-/pattern, e.g. 1e5,1e4,1e3,1e2."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder. [default: RUN/report]"),
    check_patterns: int = typer.Option(64, help="Patterns per level run through each emulated stage."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Include the classical baseline."),
    quiet: bool = QuietOpt,
) -> None:
    """Degradation table: strain MAE per noise level for float, QAT, pruned, QONNX, firmware and classical."""
    from edgestem.degradation import degradation, write_report
    from edgestem.paths import check_output_dir

    levels = _eval_levels(noise_w, dose) or _eval_levels("0,0.1,0.25,0.5,0.7", None)
    if data is None:
        data = _clean_data_of(run)
    check_output_dir(out or run / "report", [run, data], writes=["report.json", "report.md", "report.png"])
    res = _with_bar(
        "report",
        quiet,
        lambda cb: degradation(
            run,
            data,
            levels,
            check_patterns=check_patterns,
            baseline=baseline,
            progress=None if cb is None else lambda i, n: cb("report", i, n, 0.0),
        ),
    )
    paths = write_report(run, res, out or run / "report", data=str(data))
    from edgestem.degradation import markdown

    typer.echo(markdown(res, "exx"))
    typer.echo(f"wrote {paths['markdown']}, {paths['json']}, {paths['figure']}")


def _clean_data_of(run: Path) -> Path:
    """The clean data a pipeline run recorded (RUN/pipeline.json), else the run's training data."""
    import json

    record = run / "pipeline.json"
    if record.is_file():
        clean = json.loads(record.read_text()).get("clean_data")
        if clean:
            return Path(clean)
    from edgestem.rundir import trained_on

    return trained_on(run)


@app.command("run")
@_user_errors
def run_all(
    config: Path = typer.Argument(..., help="Pipeline config (e.g. configs/demo.yaml)."),
    out: Path = typer.Option(Path("runs/pipeline"), "--out", "-o", help="Output folder = the run directory."),
    force: bool = typer.Option(False, "--force", help="Redo steps whose config changed (and every step after)."),
    only: str | None = typer.Option(None, "--only", help="Run only these steps, e.g. train,qat."),
    quiet: bool = QuietOpt,
) -> None:
    """The whole pipeline: simulate -> noise -> train -> qat -> [prune] -> export -> firmware -> emulate -> report."""
    from edgestem.config import load_config
    from edgestem.paths import check_output_dir
    from edgestem.pipeline import run_pipeline

    check_output_dir(out, [config])
    cfg = load_config(config)
    t0 = time.perf_counter()
    steps = [s.strip() for s in only.split(",")] if only else None
    _with_bar(
        "pipeline", quiet, lambda cb: run_pipeline(cfg, out, force=force, only=steps, echo=typer.echo, progress=cb)
    )
    typer.echo(f"pipeline finished in {time.perf_counter() - t0:.0f} s: {out} (report in {out / 'report'})")


@app.command()
@_user_errors
def export(
    run: Path = typer.Option(..., "--run", "-r", help="Run directory with a QAT (RUN/qat) or pruned (RUN/prune) model"),
    fmt: str = typer.Option(
        "qonnx", "--format", "-f", help=f"{EXPORT_FORMATS.choices()} (qonnx: firmware; qcdq: ONNX Runtime on CPUs)."
    ),
    source: str = typer.Option("auto", "--source", help="auto (RUN/prune if quantized, else RUN/qat), qat or prune."),
    patterns: int = typer.Option(200, "--patterns", help="Patterns of the run's data the export is verified on."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Data for the verification. [default: the run's]"),
    tolerance_lsb: int = typer.Option(
        0, "--tolerance-lsb", help="QCDQ only: output LSBs ONNX Runtime may differ from Brevitas by."
    ),
) -> None:
    """Export the quantized encoder (QONNX or QCDQ) into RUN/export/, verified against Brevitas by execution."""
    from edgestem.export.qonnx import export_run
    from edgestem.rundir import export_dir

    m = export_run(run, fmt=fmt, source=source, patterns=patterns, data=data, tolerance_lsb=tolerance_lsb)["metrics"]
    src = m["source"]
    for name, v in m["verification"].items():
        if isinstance(v, dict):
            extra = f", {v['max_diff_lsb']:.0f} output LSB" if "max_diff_lsb" in v else ""
            typer.echo(
                f"wrote {export_dir(run) / name} ({src['stage']} model): {v['patterns'] - v['mismatched_patterns']} of "
                f"{v['patterns']} patterns identical to Brevitas (max |diff| {v['max_abs_diff']:.3g}{extra})"
            )
    if "cost" in m:
        c = m["cost"]
        typer.echo(f"  {c['macs']} MACs ({c['macs_nonzero']} with a non-zero weight), {c['bops']} bit operations")


@app.command()
@_user_errors
def firmware(
    run: Path = typer.Option(..., "--run", "-r", help="Run directory with RUN/export/encoder.onnx (edgestem export)."),
    backend: str = typer.Option("hls4ml", "--backend", help=f"Firmware backend: {FIRMWARE.choices()}."),
    board: str = typer.Option("zcu104", "--board", help="Preset (zcu104, u250, pynq-z2), board YAML or AMD part."),
    clock_ns: float | None = typer.Option(None, "--clock-ns", help="Clock period in ns. [default: the board's]"),
    io: str = typer.Option("stream", "--io", help="stream (FIFOs between layers) or parallel (small inputs only)."),
    reuse: int = typer.Option(1, "--reuse", help="Reuse factor: multiplications per multiplier."),
    strategy: str = typer.Option("latency", "--strategy", help="latency or resource."),
    hls: str = typer.Option("vitis", "--hls", help="HLS tool the project is written for: vitis or vivado."),
    patterns: int = typer.Option(200, "--patterns", help="Patterns of the bit-exact check against Brevitas."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Data for that check. [default: the run's]"),
    target_fps: str | None = typer.Option(
        None, "--target-fps", help="finn: frames/s to fold for (87000, 87k or a detector). [default: 4dcamera]"
    ),
) -> None:
    """Firmware project from the exported encoder into RUN/firmware/<backend>/, C++ emulation checked bit-exact."""
    from edgestem.firmware.registry import build_firmware

    if target_fps is not None and backend != "finn":
        raise EdgestemError(f"--target-fps: only --backend finn folds for a frame rate, not {backend}")
    m = build_firmware(
        backend,
        run,
        board=board,
        clock_ns=clock_ns,
        io=io,
        reuse=reuse,
        strategy=strategy,
        hls=hls,
        patterns=patterns,
        data=data,
        target_fps=target_fps,
    )["metrics"]
    total = sum(m.get("seconds", {}).values())
    where = f"{m['part']} at {m['clock_ns']:g} ns"
    typer.echo(f"wrote {m['project']['dir']}: {backend} project for {where} ({total:.0f} s)")
    c = m.get("bit_exact")
    if c:
        typer.echo(
            f"  {m.get('check_label', 'C++ emulation')} vs Brevitas: {c['patterns'] - c['mismatched_patterns']} of "
            f"{c['patterns']} patterns "
            f"bit-exact (max |diff| {c['max_abs_diff']:.3g}), {c['patterns_per_second']:.0f} patterns/s"
        )
    if "estimate" in m:  # FINN: resources, frames/s and the target frame rate
        from edgestem.firmware.finn import format_summary

        typer.echo(format_summary(m, check=False))


@app.command()
@_user_errors
def sweep(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config with sweep: and robustness: sections."),
    storage: str = typer.Option(
        "sweep.db", "--storage", help="Database URL Optuna accepts, or a file path for SQLite (embedded)."
    ),
    n_trials: int = typer.Option(
        ..., "--n-trials", "-n", min=0, help="Trials this worker runs (workers add up; 0: only --report)."
    ),
    report: Path | None = typer.Option(None, "--report", help="Write Optuna's plots and sweep.json here."),
    workdir: Path | None = typer.Option(None, "--workdir", help="Data and trial runs here. [default: a temp dir]"),
) -> None:
    """Optuna hyper-parameter search; objective: strain MAE at one test noise level (many workers may share it)."""
    from edgestem.config import load_config
    from edgestem.paths import check_output_dir
    from edgestem.sweep import run_sweep

    for folder, option in ((report, "--report"), (workdir, "--workdir")):
        if folder is not None:
            check_output_dir(folder, [config], option=option)
    res = run_sweep(load_config(config), storage, n_trials, report=report, workdir=workdir, log=typer.echo)
    best = res["best"]
    counts = ", ".join(f"{n} {state}" for state, n in res["trials"].items())
    typer.echo(f"study {res['study']}: {counts}")
    if best is not None:
        typer.echo(f"best: trial {best['number']}, MAE {best['value']:.4f}, {best['params']}")
    for path in res.get("report", []):
        typer.echo(f"wrote {path}")


@app.command("config")
@_user_errors
def show_config(
    config: Path | None = typer.Argument(None, help="YAML config; omitted: the defaults."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the reference of every key (docs/config.md)."),
) -> None:
    """Validate a config and print it resolved, every default filled in (or print the defaults)."""
    from edgestem.config import dump_config, load_config, reference_markdown

    if markdown:
        typer.echo(reference_markdown())
        return
    typer.echo(dump_config(load_config(config)), nl=False)


def main() -> None:
    """Console-script entry point: SIGTERM unwinds like Ctrl-C (temporary files removed)."""
    import os

    from edgestem.atomic import install_signal_handlers

    install_signal_handlers()
    try:
        app()
    except SystemExit as exc:
        if _HARD_EXIT["needed"]:  # after a failed HDF5 close, the library's exit handlers would segfault
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.code if isinstance(exc.code, int) else 2)
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
