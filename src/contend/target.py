"""Every user-supplied value is validated here, before anything touches the kernel."""

from __future__ import annotations

import math
import os
import re

from contend.errors import UsageError

# docker's --memory syntax (docker/go-units RAMInBytes): a number with an optional unit
# b, k, m, g (also kb, mb, gb; case-insensitive), binary multiples. Docker refuses less
# than 6 MiB; so do we.
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MIN_MEMORY_BYTES = 6 << 20


def parse_cpus(value: str | float, available: int | None = None) -> float:
    """--cpus as docker takes it: a positive number of CPUs, at most what the machine has."""
    available = available or os.cpu_count() or 1
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--cpus: {value!r} is not a number (example: --cpus 0.5)") from None
    if not math.isfinite(cpus) or cpus <= 0:
        raise UsageError(f"--cpus: {value!r} must be greater than 0")
    if cpus > available:
        raise UsageError(f"--cpus: {value!r} is more than the {available} CPUs of this machine")
    if cpus < 0.01:
        raise UsageError(f"--cpus: {value!r} is below the kernel's 1 ms per 100 ms minimum")
    return cpus


def parse_memory(value: str) -> int:
    """--memory in docker's syntax (512m, 1g, 268435456) to bytes."""
    m = _MEMORY_RE.match(str(value))
    if not m:
        raise UsageError(f"--memory: {value!r} is not a size (examples: 512m, 1g, 268435456)")
    number, unit = m.groups()
    size = int(float(number) * _MEMORY_UNITS[unit.lower()])
    if size < MIN_MEMORY_BYTES:
        raise UsageError(f"--memory: {value!r} is below the 6 MiB minimum")
    return size


def parse_positive_int(name: str, value: str | int, low: int = 1, high: int = 1 << 30) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name}: {value!r} is not an integer") from None
    if not low <= number <= high:
        raise UsageError(f"{name}: {value!r} is out of range [{low}, {high}]")
    return number


def parse_duration(name: str, value: str | float, low: float = 0.5, high: float = 86400) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name}: {value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or not low <= seconds <= high:
        raise UsageError(f"{name}: {value!r} is out of range [{low}, {high}] seconds")
    return seconds
