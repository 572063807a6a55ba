"""The console the subcommands print their results on."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console

from contend.errors import ContendError, UsageError


def stdout_console() -> Console:
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a file or a pipe: do not squeeze tables to 80 columns
    return console


def check_output_path(option: str, path: str) -> Path:
    """An output file: checked before any work, in one line (its directory must exist,
    it must not be a directory)."""
    if not path:
        raise UsageError(f"{option}: empty path")
    out = Path(path)
    parent = out.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{option}: directory {parent} does not exist")
    if out.is_dir():
        raise UsageError(f"{option}: {path} is a directory")
    if not os.access(out if out.exists() else parent, os.W_OK):
        raise UsageError(f"{option}: cannot write {path}")
    return out


def check_distinct(inputs: Sequence[str], outputs: Mapping[str, str | None]) -> None:
    """No output may overwrite an input or another output (one line, before any work)."""
    seen: dict[str, str] = {os.path.realpath(p): "the input" for p in inputs}
    for option, path in outputs.items():
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in seen:
            raise UsageError(f"{option}: {path} is also {seen[real]}")
        seen[real] = option


def write_output(option: str, path: str, text: str) -> None:
    """Write a result; a failure is one line, not a traceback."""
    try:
        Path(path).write_text(text)
    except OSError as e:
        raise ContendError(f"{option}: cannot write {path}: {e.strerror}") from None
