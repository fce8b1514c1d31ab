"""Progress bars for long work (rich), quiet when asked or when not attached to a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a rich progress bar on a terminal, nothing otherwise.

    ``advance`` also stops the work at once when an interrupt arrived whose exception a library
    swallowed (see :func:`edgestem.atomic.check_interrupted`).
    """
    from edgestem.atomic import check_interrupted

    if not enabled or not sys.stderr.isatty():

        def quiet(n: int = 1) -> None:
            check_interrupted()

        yield quiet
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            check_interrupted()
            bar.advance(task, n)

        yield advance
