"""The ``edgestem`` command line: one thin command per stage, no logic of its own.

Importing this module must stay cheap: torch, brevitas, qonnx, hls4ml, h5py and matplotlib load only
inside the command that needs them (tested in tests/test_cli.py).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from edgestem import __version__
from edgestem.errors import EdgestemError

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


def _user_errors(fn: F) -> F:
    """Print user errors (bad data, config, missing tools) as one line on stderr and exit non-zero."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgestemError as exc:
            typer.echo(f"edgestem {fn.__name__}: error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo(f"edgestem {fn.__name__}: interrupted; no partial output was kept", err=True)
            raise typer.Exit(130) from None

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
    quiet: bool = QuietOpt,
) -> None:
    """Simulate a 4D-STEM scan with known strain and rotation labels (kinematic diffraction)."""
    from edgestem.atomic import write_json
    from edgestem.config import load_config
    from edgestem.data.simulate import simulate_to_file
    from edgestem.progress import progress_bar
    from edgestem.runinfo import stage_report

    t0 = time.perf_counter()
    cfg = load_config(
        config,
        {
            "simulate.scan": scan,
            "simulate.size": size,
            "simulate.lattice.kind": lattice,
            "simulate.specimen.kind": specimen,
            "seed": seed,
            **_noise_overrides(noise_w, dose),
        },
    )
    n_rows = cfg.simulate.scan[0]
    with progress_bar("simulating", n_rows, enabled=not quiet) as advance:
        simulate_to_file(cfg, out, progress=advance)
    write_json(_sidecar(out), stage_report("simulate", outputs={"data": out}, config=cfg, started=t0))
    rx, ry = cfg.simulate.scan
    typer.echo(
        f"wrote {out}: {rx}x{ry} patterns of {cfg.simulate.size}x{cfg.simulate.size} px, "
        f"{cfg.simulate.lattice.kind} {cfg.simulate.specimen.kind}, noise {cfg.noise.model}"
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
    from edgestem.atomic import write_json
    from edgestem.config import load_config
    from edgestem.data.noise import add_noise_to_file, describe
    from edgestem.progress import progress_bar
    from edgestem.runinfo import stage_report

    t0 = time.perf_counter()
    cfg = load_config(config, {"seed": seed, **_noise_overrides(noise_w, dose, read_noise)})
    if cfg.noise.model == "none" and not cfg.noise.read_noise and not cfg.noise.hot_pixels:
        raise EdgestemError("no noise requested: give --noise-w W or --dose D (or a config with a noise section)")
    from edgestem.data.io import open_4dstem

    with open_4dstem(data, dataset) as ds:
        rows = ds.shape[0]
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
    from edgestem.report import plot_dataset

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
    from edgestem.train import train as train_run

    overrides = {"train.epochs": epochs, "seed": seed}
    # Resuming without --config continues with the run's own resolved config.
    saved = out / "config.yaml"
    cfg = load_config(saved if resume and config is None and saved.is_file() else config, overrides)
    report = _with_bar(
        "training", quiet, lambda cb: train_run(cfg, data, out, resume=resume, dataset=dataset, progress=cb)
    )
    last = report["history"][-1]
    val = f", validation loss {last['val_total']:.4g}" if "val_total" in last else ""
    typer.echo(
        f"trained {out}: {report['epochs']} epochs in {report['seconds']:.0f} s, "
        f"train loss {last['train_total']:.4g}{val}; encoder {report['encoder']['parameters']} parameters"
    )


@app.command()
@_user_errors
def strain(
    run: Path = typer.Option(..., "--run", "-r", help="Trained run directory."),
    data: Path = typer.Option(..., "--data", "-d", help="Data file to map."),
    out: Path = typer.Option(..., "--out", "-o", help="Output maps file (HDF5); also <out>.json and .png."),
    ref: str | None = typer.Option(
        None, "--ref", help="Reference region 'x0:x1,y0:y1' (scan positions). [default: all]"
    ),
    refine: bool = typer.Option(False, "--refine", help="Per-pattern maximum-likelihood refinement after the encoder."),
    dataset: str | None = DatasetOpt,
) -> None:
    """Strain, shear and rotation maps of a data file from a trained run (metrics when labelled)."""
    from edgestem.evaluate import strain_from_run

    res = strain_from_run(run, data, out, reference=ref, refine=refine, dataset=dataset)
    speed = ", ".join(f"{k} {v:.0f} patterns/s" for k, v in res["patterns_per_second"].items())
    typer.echo(f"wrote {out}: {res['patterns']} patterns ({speed})")
    _echo_mae(res)


@app.command()
@_user_errors
def baseline(
    data: Path = typer.Option(..., "--data", "-d", help="Data file to map."),
    out: Path = typer.Option(..., "--out", "-o", help="Output maps file (HDF5); also <out>.json and .png."),
    ref: str | None = typer.Option(
        None, "--ref", help="Reference region 'x0:x1,y0:y1' (scan positions). [default: all]"
    ),
    symmetry: str = typer.Option("auto", help="hex, square, none, or auto (from the file's attributes)."),
    dataset: str | None = DatasetOpt,
) -> None:
    """Classical strain mapping (Bragg-disk detection + lattice fit), reported like `edgestem strain`."""
    from edgestem.evaluate import baseline_from_file

    if symmetry not in ("auto", "hex", "square", "none"):
        raise EdgestemError(f"--symmetry {symmetry!r}: choose hex, square, none or auto")
    res = baseline_from_file(data, out, reference=ref, dataset=dataset, symmetry=symmetry)
    typer.echo(
        f"wrote {out}: {res['patterns']} patterns ({res['patterns_per_second']['classical']:.0f} patterns/s), "
        f"{res['failed']} failed fits"
    )
    _echo_mae(res)


def _echo_mae(res: dict[str, Any]) -> None:
    """One line of MAE per method (strain in %, theta in degrees), when the data had labels."""
    for name, mae in res.get("mae", {}).items():
        typer.echo(
            f"  {name:9s} MAE exx {mae['exx']:.3f} %, eyy {mae['eyy']:.3f} %, exy {mae['exy']:.3f} %, "
            f"theta {mae['theta']:.3f} deg"
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

    source = config if config is not None else run / "config.yaml"
    if config is None and not source.is_file():
        raise EdgestemError(f"{run}: not a run directory (no config.yaml); train first (edgestem train --out {run})")
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
    typer.echo(f"QAT {qcfg.bits} bits: {out or run / 'qat'} ({res['epochs']} epochs in {res['train_seconds']:.0f} s)")
    for row in res.get("mae", []):
        typer.echo(
            f"  {row['noise']:>8} {row['model']:>6}: exx {row['exx']:.3f} %  eyy {row['eyy']:.3f} %  "
            f"exy {row['exy']:.3f} %  theta {row['theta']:.3f} deg"
        )


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
    from edgestem.evaluate import noise_level

    if noise_w and dose:
        raise EdgestemError("give either --eval-noise-w or --eval-dose, not both")
    text, axis = (noise_w, "w") if noise_w else (dose, "dose")
    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EdgestemError(f"noise levels {text!r}: give numbers separated by commas") from None
    if any(v < 0 or (axis == "w" and v >= 1) or (axis == "dose" and v <= 0) for v in values):
        raise EdgestemError(f"noise levels {text!r}: w must lie in [0, 1), doses must be > 0")
    return [(f"{axis}={v:g}", noise_level(v, axis)) for v in values]


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
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
