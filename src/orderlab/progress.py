"""Progress bars for long work (rows and samples of ``evaluate`` and the demo, ``search`` trials).

One rule for all of them: a transient ``rich`` bar on **stderr**, drawn only when stderr is a terminal. In CI, a log
file or a pipe it prints nothing at all, so captured output holds only the result lines. Lines printed to stdout
while a bar is up appear above it when stdout is the same terminal; a redirected stdout is left alone.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["progress_bar"]


def progress_bar(enabled: bool = True) -> Progress:
    """A transient progress display on stderr; disabled (silent) when ``enabled`` is False or stderr is no terminal."""
    console = Console(stderr=True)
    show = enabled and console.is_terminal and not console.is_dumb_terminal
    try:
        stdout_tty = sys.stdout.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stdout
        stdout_tty = False
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=not show, redirect_stdout=show and stdout_tty,
                    redirect_stderr=show)
