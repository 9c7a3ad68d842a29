"""Console output of the commands: one log line per cycle, rich progress bars on a terminal, quiet otherwise.

Every line goes through `safe_text.terminal`: file names, class names and messages that embed them come from
outside, and an escape sequence or a newline in them is shown escaped, never interpreted by the terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from alctl.safe_text import terminal


@dataclass
class Ui:
    """Console output: one log line per cycle, rich progress bars when on a terminal."""

    console: Console = field(default_factory=lambda: Console(highlight=False))
    quiet: bool = False

    def line(self, text: str) -> None:
        """Print a log line unless quiet (control characters shown escaped: it stays one line)."""
        if not self.quiet:
            self.console.print(terminal(text), highlight=False, markup=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        """Print a warning line, even when quiet (control characters shown escaped: it stays one line)."""
        self.console.print(f"warning: {terminal(text)}", highlight=False, markup=False, soft_wrap=True)

    @contextmanager
    def progress(self) -> Iterator[Progress]:
        """A rich progress display, disabled off a terminal or when quiet."""
        prog = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self.console, disable=self.quiet or not self.console.is_terminal, transient=True,
        )
        with prog:
            yield prog


def silent() -> Ui:
    """A Ui that prints nothing but warnings (to a quiet console): for library use and tests."""
    return Ui(console=Console(quiet=True), quiet=True)
