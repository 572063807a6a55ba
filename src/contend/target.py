"""Every user-supplied value is validated here, before anything touches the kernel."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

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


_TIME_UNITS = {"us": 1, "ms": 1000, "s": 1_000_000}


def parse_quotas(name: str, value: str) -> tuple[float, ...]:
    """`0.2,0.3,0.5,1`: quotas in CPUs."""
    out = []
    for part in value.split(","):
        try:
            q = float(part)
        except ValueError:
            raise UsageError(f"{name}: {part!r} is not a number of CPUs") from None
        if not math.isfinite(q) or not 0.001 <= q <= 4096:
            raise UsageError(f"{name}: {part!r} is out of range [0.001, 4096] CPUs")
        out.append(q)
    return tuple(out)


def parse_ratio(name: str, value: str) -> float:
    """`5%` or `0.05`."""
    text = value.strip()
    try:
        r = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"{name}: {value!r} is not a ratio (5% or 0.05)") from None
    if not math.isfinite(r) or not 0 <= r < 1:
        raise UsageError(f"{name}: {value!r} is out of range [0%, 100%)")
    return r


def parse_us(name: str, value: str, default_unit: str, low: int, high: int) -> int:
    """`100ms`, `0.1s`, `5000us`, or a bare number in `default_unit`: microseconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*", value)
    if m is None:
        raise UsageError(f"{name}: {value!r} is not a time (100ms, 0.1s, 5000us)")
    us = round(float(m.group(1)) * _TIME_UNITS[m.group(2) or default_unit])
    if not low <= us <= high:
        raise UsageError(f"{name}: {value!r} is out of range [{low}, {high}] us")
    return us


def parse_listen(name: str, value: str) -> tuple[str, int]:
    """`HOST:PORT` (`[v6]:PORT` for IPv6; `:PORT` is every address) to (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{name}: {value!r} is not HOST:PORT (example: 127.0.0.1:9949)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UsageError(f"{name}: {value!r}: write an IPv6 address in brackets, [::1]:9949")
    if host and not re.fullmatch(r"[A-Za-z0-9.:%-]{1,253}", host):
        raise UsageError(f"{name}: {host!r} is not a host name or address")
    return host or "0.0.0.0", int(port)


# --- what to trace ------------------------------------------------------------------------

# docker/podman names: [a-zA-Z0-9][a-zA-Z0-9_.-]+ (moby's RestrictedNameChars); IDs are hex.
_CONTAINER_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}$")


def validate_container(name: str) -> str:
    if not _CONTAINER_RE.match(name):
        raise UsageError(f"--container: {name!r} is not a container name or ID")
    return name


# TASK_COMM_LEN is 16 with the NUL (include/linux/sched.h); a comm is passed to programs as
# a positional parameter, never pasted, but is still refused if it could never match.
_COMM_MAX = 15


@dataclass(frozen=True)
class Target:
    """A validated answer to "what to trace". At most one of the fields is set; none set
    means the whole system."""

    pids: tuple[int, ...] = ()
    comm: str | None = None
    cgroup: Path | None = None
    cgroup_id: int | None = None  # cgroup2 id (the directory's inode), when on cgroup2
    command: tuple[str, ...] = ()
    container: str | None = None  # the name given; resolved to its cgroup by collect
    watch_pid: int | None = None  # stop (and say so) when this process is gone

    @property
    def system_wide(self) -> bool:
        return not (self.pids or self.comm or self.cgroup or self.command)

    def describe(self) -> str:
        if self.pids:
            return "pid " + ", ".join(map(str, self.pids))
        if self.comm is not None:
            return f"comm {self.comm!r}"
        if self.container is not None:
            return f"container {self.container} (cgroup {self.cgroup})"
        if self.cgroup is not None:
            return f"cgroup {self.cgroup}"
        if self.command:
            return "command " + " ".join(self.command)
        return "whole system"


def validate_comm(comm: str) -> str:
    if not comm:
        raise UsageError("--comm: empty name")
    if len(comm.encode()) > _COMM_MAX:
        raise UsageError(
            f"--comm: {comm!r} is longer than {_COMM_MAX} bytes; the kernel keeps only "
            f"{_COMM_MAX} (use {comm.encode()[:_COMM_MAX].decode(errors='ignore')!r})"
        )
    if any(not ch.isprintable() for ch in comm):
        raise UsageError(f"--comm: {comm!r} has control characters")
    return comm


# ftrace's filter strings have no escapes, and `==` treats * ? [ ] as a glob
# (Documentation/trace/events.rst, "Event filtering"): such names cannot be matched
# literally, so they are refused rather than pasted.
_FTRACE_UNSAFE = frozenset('"\\*?[]')


def ftrace_string(comm: str) -> str:
    """A validated comm as an ftrace filter string literal, quotes included."""
    validate_comm(comm)
    bad = sorted({ch for ch in comm if ch in _FTRACE_UNSAFE or not ch.isascii()})
    if bad:
        raise UsageError(
            f"--comm: {comm!r} has {' '.join(bad)}, which ftrace's filters cannot match "
            "literally; give --pid, or trace it with --backend bpftrace"
        )
    return f'"{comm}"'


def resolve_target(
    pids: tuple[str, ...] = (),
    comm: str | None = None,
    cgroup: str | None = None,
    command: tuple[str, ...] = (),
    cgroup_roots: tuple[Path, ...] = (),
    cgroup2_root: Path | None = None,
    proc_root: str = "/proc",
) -> Target:
    """Validate one target. `cgroup_roots` are the mounted hierarchies (the caller detects
    them): a relative --cgroup is looked up under each; `cgroup2_root` is the cgroup2
    mount, under which a group has an id that programs can compare with an integer."""
    given = [bool(pids), comm is not None, cgroup is not None, bool(command)]
    if sum(given) > 1:
        raise UsageError("give one target: --pid, --comm, --cgroup or -- COMMAND")
    if pids:
        numbers = []
        for raw in pids:
            pid = parse_positive_int("--pid", raw, 1, 1 << 22)
            if not os.path.isdir(f"{proc_root}/{pid}"):
                raise UsageError(f"--pid: no process with PID {pid}")
            owner = _thread_group(proc_root, pid)
            if owner is not None and owner != pid:
                # /proc/TID resolves a thread too; a process is what --pid means.
                raise UsageError(f"--pid: {pid} is a thread of process {owner}; give --pid {owner}")
            numbers.append(pid)
        return Target(pids=tuple(sorted(set(numbers))))
    if comm is not None:
        return Target(comm=validate_comm(comm))
    if cgroup is not None:
        if not cgroup:
            raise UsageError("--cgroup: empty path")
        return _resolve_cgroup(cgroup, cgroup_roots, cgroup2_root)
    if command:
        return Target(command=tuple(command))
    return Target()


def _thread_group(proc_root: str, pid: int) -> int | None:
    """The Tgid in /proc/PID/status (fs/proc/array.c); None if unreadable."""
    try:
        with open(f"{proc_root}/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _resolve_cgroup(raw: str, roots: tuple[Path, ...], cgroup2_root: Path | None) -> Target:
    # A directory (/sys/fs/cgroup/...), or a group's path as /proc/PID/cgroup, the
    # exporter's `cgroup` label and top show it (/system.slice/x.service), under a root.
    candidates: list[tuple[Path, Path | None]] = [(Path(raw), None)] if raw.startswith("/") else []
    candidates += [(r / raw.lstrip("/"), r) for r in roots]
    for candidate, root in candidates:
        try:
            path = candidate.resolve(strict=True)
        except OSError:
            continue
        if root is not None and not path.is_relative_to(root.resolve()):
            continue  # "../" out of the hierarchy
        if not (path / "cgroup.procs").is_file():
            raise UsageError(f"--cgroup: {path} is not a cgroup directory")
        cgroup_id = None
        if cgroup2_root is not None and path.is_relative_to(cgroup2_root):
            # kernfs node id == cgroup id, what bpf_get_current_cgroup_id() returns.
            cgroup_id = path.stat().st_ino
        return Target(cgroup=path, cgroup_id=cgroup_id)
    raise UsageError(f"--cgroup: {raw!r} does not exist")


# --- container engines and images ---------------------------------------------------------

ENGINE_NAMES = ("podman", "docker")

# An image reference as docker/distribution's reference grammar allows it, lowercase
# repository path, optional :tag or @digest; refused otherwise, never passed on.
_IMAGE_RE = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


def validate_engine(name: str) -> str:
    if name not in ENGINE_NAMES:
        raise UsageError(f"--engine: {name!r} is not one of {', '.join(ENGINE_NAMES)}")
    return name


def validate_image(name: str, option: str = "--base") -> str:
    if len(name) > 255 or not _IMAGE_RE.match(name):
        raise UsageError(
            f"{option}: {name!r} is not an image reference (example: python:3.11-slim)"
        )
    return name
