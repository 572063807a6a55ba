"""The console the subcommands print their results on."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from contend.errors import UsageError


def stdout_console() -> Console:
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a file or a pipe: do not squeeze tables to 80 columns
    return console


def check_output_path(option: str, path: str) -> None:
    """An output file's directory must exist: say so in one line before any work."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{option}: directory {parent} does not exist")
