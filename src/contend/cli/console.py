"""The console the subcommands print their results on."""

from __future__ import annotations

from rich.console import Console


def stdout_console() -> Console:
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a file or a pipe: do not squeeze tables to 80 columns
    return console
