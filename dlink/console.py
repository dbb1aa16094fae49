"""Terminal output shared by the `dlink` and `dlink-export` commands.

* `track`: a rich progress bar on stderr when a CLI turned bars on, a plain pass-through
  for library use and tests.
* `run_app`: runs a typer app so that our own errors (`DLinkError`) and the file system's
  (`OSError`: an unwritable ``--out``, a full disk, a missing file) print one line on
  stderr and exit 1, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console

from dlink.errors import DLinkError

T = TypeVar("T")
stderr = Console(stderr=True)
_bars = {"on": False}


def enable_progress(on: bool = True) -> None:
    """Show progress bars from `track` (the CLIs call this; libraries stay quiet)."""
    _bars["on"] = on


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items``, with a progress bar on stderr if bars are enabled."""
    if not _bars["on"]:
        yield from items
        return
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, console=stderr,
                          transient=True)


def run_app(app) -> None:
    """Run a typer app; `DLinkError` or `OSError` becomes ``error: <message>`` on stderr and
    exit 1.

    The app must be built with ``pretty_exceptions_enable=False`` so that our errors reach
    this handler; click still formats usage errors itself (exit 2).
    """
    enable_progress(True)
    try:
        app()
    except DLinkError as exc:
        stderr.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except OSError as exc:  # the file system refused: name the path, not a traceback
        where = f" {exc.filename}" if exc.filename else ""
        stderr.print(f"[bold red]error:[/] cannot use{where}: {exc.strerror or exc}",
                     highlight=False, soft_wrap=True)
        sys.exit(1)


class LossBar:
    """A progress bar over optimisation steps that shows the latest loss terms.

    Silent unless a CLI enabled bars (and on non-zero ranks under torchrun).
    """

    def __init__(self, total: int, description: str, enabled: bool = True):
        self._bar = None
        if _bars["on"] and enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.fields[terms]}"), console=stderr)
            self._task = self._bar.add_task(description, total=total, terms="")
            self._bar.start()

    def update(self, completed: int, terms: dict[str, float], description: str | None = None):
        if self._bar is not None:
            text = " ".join(f"{k} {v:.4g}" for k, v in terms.items())
            kwargs = {"description": description} if description else {}
            self._bar.update(self._task, completed=completed, terms=text, **kwargs)

    def log(self, text: str) -> None:
        """One line above the bar (kept in logs where the live bar is not drawn)."""
        if self._bar is not None:
            self._bar.console.print(text, highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
