"""Quiet third-party tools, and show our own progress above them.

The converters print a lot (absl logs from C++, torch.export warnings, tqdm bars, rich
logs of litert-torch). `quiet` sends file descriptors 1 and 2 to a temporary file while a
step runs, so the terminal shows only our progress bar, which writes to a duplicate of
the original stderr taken before any redirection.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Silence stdout/stderr (file descriptors and Python warnings) inside the block."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


class Steps:
    """A rich progress bar over the export's named steps (silent unless ``enabled``)."""

    def __init__(self, total: int, enabled: bool = False):
        self.enabled = enabled
        self.timings: dict[str, float] = {}
        self._progress = None
        if enabled:
            err = os.fdopen(os.dup(2), "w", buffering=1)  # survives `quiet`'s redirection
            console = Console(file=err, force_terminal=err.isatty() or None)
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
                redirect_stdout=False,  # else Python-level prints bypass `quiet` via the bar
                redirect_stderr=False,
            )
            self._task = self._progress.add_task("export", total=total)

    def __enter__(self) -> Steps:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress.console.file.close()

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        """Run one named step; its wall time lands in ``timings``."""
        if self._progress is not None:
            self._progress.update(self._task, description=description)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[description] = round(time.perf_counter() - t0, 3)
        if self._progress is not None:
            self._progress.advance(self._task)
