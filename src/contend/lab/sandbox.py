"""The sandbox: what `docker run --cpus=X -m Y` does, done directly with a cgroup.

A sandbox is a cgroup `contend-<owner pid>-<n>` in every hierarchy it needs: on cgroup
v2 one directory with `cpu.max` and `memory.max`; on cgroup v1 one directory in the cpu
hierarchy (`cpu.cfs_quota_us`/`cpu.cfs_period_us`) and one in the memory hierarchy
(`memory.limit_in_bytes`), plus one in the controller-less cgroup2 tree when there is one,
which gives the group's `cpu.pressure` and `cgroup.kill`.

It is borrowed kernel state: `close()` stops every process in it and removes every
directory, and `reclaim_stale()` removes sandboxes whose owner died without doing so.
Each limit is a small knob with `write()` and `read_back()` (pyperf's `_system.py` shape).
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contend.collect import cgroups
from contend.collect.cgroups import CgroupLayout
from contend.errors import ContendError, PermissionNeeded
from contend.model import CgroupCpuStat, Pressure

PREFIX = "contend-"
# CFS bandwidth period: docker's default, Documentation/scheduler/sched-bwc.rst.
PERIOD_US = 100_000
_sequence = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Limits:
    cpus: float | None
    memory_bytes: int | None


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class CpuLimit:
    """CFS bandwidth: quota per period."""

    @staticmethod
    def write(dirs: dict[str, Path], mode: str, cpus: float | None) -> None:
        if mode == "v2":
            quota = "max" if cpus is None else str(round(cpus * PERIOD_US))
            _write(dirs["cpu"] / "cpu.max", f"{quota} {PERIOD_US}")
        else:
            _write(dirs["cpu"] / "cpu.cfs_period_us", str(PERIOD_US))
            quota = "-1" if cpus is None else str(round(cpus * PERIOD_US))
            _write(dirs["cpu"] / "cpu.cfs_quota_us", quota)

    @staticmethod
    def read_back(dirs: dict[str, Path], mode: str) -> float | None:
        if mode == "v2":
            quota, period = (dirs["cpu"] / "cpu.max").read_text().split()
        else:
            quota = (dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip()
            period = (dirs["cpu"] / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)


class MemoryLimit:
    """Hard memory limit; the kernel rounds it down to a page."""

    @staticmethod
    def write(dirs: dict[str, Path], mode: str, memory_bytes: int | None) -> None:
        if mode == "v2":
            _write(
                dirs["memory"] / "memory.max", "max" if memory_bytes is None else str(memory_bytes)
            )
        else:
            _write(
                dirs["memory"] / "memory.limit_in_bytes",
                "-1" if memory_bytes is None else str(memory_bytes),
            )

    @staticmethod
    def read_back(dirs: dict[str, Path], mode: str) -> int | None:
        name = "memory.max" if mode == "v2" else "memory.limit_in_bytes"
        text = (dirs["memory"] / name).read_text().strip()
        if text == "max":
            return None
        value = int(text)
        return None if value >= (1 << 62) else value  # v1 "unlimited" is PAGE_COUNTER_MAX


def _hierarchy_roots(layout: CgroupLayout) -> dict[str, Path]:
    """Which root directory each of our group directories lives under."""
    mode = layout.mode
    if mode == "v2":
        assert layout.v2_root is not None
        return {"cpu": layout.v2_root, "memory": layout.v2_root, "unified": layout.v2_root}
    if mode == "v1":
        roots = {"cpu": layout.v1_roots["cpu"], "memory": layout.v1_roots["memory"]}
        if layout.v2_root is not None:
            roots["unified"] = layout.v2_root
        return roots
    raise ContendError(
        f"cannot limit CPU and memory here: {layout.describe()}; pass --no-sandbox to run unlimited"
    )


def _owner_alive(name: str) -> bool:
    """Is the contend process named in `contend-<pid>-<n>` still running?"""
    parts = name[len(PREFIX) :].split("-")
    if not parts or not parts[0].isdigit():
        return True  # not one of ours: never touch it
    # A live PID keeps its group, even if the PID was reused: erring this way never
    # destroys a running contend's sandbox.
    return Path(f"/proc/{int(parts[0])}").exists()


def _procs(directory: Path) -> list[int]:
    try:
        return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def _empty_and_remove(dirs: list[Path], timeout_s: float = 5.0) -> list[Path]:
    """Kill every process in the groups, then rmdir them (EBUSY retried until timeout).

    Returns the directories that could not be removed.
    """
    for d in dirs:
        kill_file = d / "cgroup.kill"  # cgroup v2, Linux 5.14+
        if kill_file.exists():
            try:
                _write(kill_file, "1")
            except OSError:
                pass
    deadline = time.monotonic() + timeout_s
    left = [d for d in dirs if d.exists()]
    while left:
        for d in left:
            for pid in _procs(d):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        still = []
        for d in left:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise
                still.append(d)
        left = still
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return left


def reclaim_stale(layout: CgroupLayout | None = None) -> list[Path]:
    """Remove `contend-*` groups whose owning contend process is dead. Returns them."""
    layout = layout or cgroups.detect_layout()
    roots = set(layout.v1_roots.values())
    if layout.v2_root is not None:
        roots.add(layout.v2_root)
    stale = []
    for root in roots:
        try:
            entries = list(root.iterdir())
        except OSError:
            continue
        for d in entries:
            if d.name.startswith(PREFIX) and d.is_dir() and not _owner_alive(d.name):
                stale.append(d)
    if stale:
        _empty_and_remove(stale)
    return stale


class Sandbox:
    """A cgroup with CPU and memory limits; use as a context manager."""

    def __init__(self, limits: Limits, layout: CgroupLayout | None = None) -> None:
        self.limits = limits
        self.layout = layout or cgroups.detect_layout()
        self.name = f"{PREFIX}{os.getpid()}-{next(_sequence)}"
        self.dirs: dict[str, Path] = {}
        self._enabled_v2_controllers: list[str] = []

    @property
    def mode(self) -> str:
        mode = self.layout.mode
        assert mode is not None
        return mode

    def open(self) -> Sandbox:
        roots = _hierarchy_roots(self.layout)
        reclaim_stale(self.layout)
        try:
            if self.mode == "v2":
                self._enable_v2_controllers(roots["cpu"])
            for key, root in roots.items():
                d = root / self.name
                if d not in self.dirs.values():
                    d.mkdir()
                self.dirs[key] = d
            self.set_limits(self.limits)
        except PermissionError:
            self.close()
            raise PermissionNeeded(
                "creating a cgroup sandbox needs root: run as root, or pass --no-sandbox "
                "to run without CPU and memory limits"
            ) from None
        except BaseException:
            self.close()
            raise
        return self

    def _enable_v2_controllers(self, root: Path) -> None:
        # Children get a controller only if the parent lists it in cgroup.subtree_control.
        enabled = set((root / "cgroup.subtree_control").read_text().split())
        for controller in ("cpu", "memory"):
            if controller not in enabled:
                _write(root / "cgroup.subtree_control", f"+{controller}")
                self._enabled_v2_controllers.append(controller)

    def set_limits(self, limits: Limits) -> None:
        """Write the limits and read them back from the kernel; refuse any mismatch."""
        CpuLimit.write(self.dirs, self.mode, limits.cpus)
        MemoryLimit.write(self.dirs, self.mode, limits.memory_bytes)
        cpus = CpuLimit.read_back(self.dirs, self.mode)
        memory = MemoryLimit.read_back(self.dirs, self.mode)
        cpu_ok = (cpus is None) == (limits.cpus is None) and (
            cpus is None or limits.cpus is None or abs(cpus - limits.cpus) < 1e-3
        )
        page = os.sysconf("SC_PAGE_SIZE")
        memory_ok = (memory is None) == (limits.memory_bytes is None) and (
            memory is None
            or limits.memory_bytes is None
            or 0 <= limits.memory_bytes - memory < page
        )
        if not (cpu_ok and memory_ok):
            raise ContendError(
                f"the kernel kept cpus={cpus} memory={memory} instead of "
                f"cpus={limits.cpus} memory={limits.memory_bytes}"
            )
        self.limits = Limits(cpus=cpus, memory_bytes=memory)

    def join_function(self) -> Callable[[], None]:
        """A `preexec_fn` that moves the new child into every directory of the group
        before it runs anything, so none of its own children start outside."""
        files = [str(d / "cgroup.procs") for d in dict.fromkeys(self.dirs.values())]

        def join() -> None:
            for f in files:
                fd = os.open(f, os.O_WRONLY)
                try:
                    os.write(fd, b"0")  # "0" means the writing process
                finally:
                    os.close(fd)

        return join

    def pids(self) -> list[int]:
        return _procs(self.dirs["cpu"]) if self.dirs else []

    def cpu_stat(self) -> CgroupCpuStat | None:
        return cgroups.cpu_stat(self.dirs)

    def cpu_pressure(self) -> Pressure | None:
        return cgroups.cpu_pressure(self.dirs)

    def close(self) -> None:
        """Stop everything inside and remove the group; idempotent."""
        dirs = list(dict.fromkeys(self.dirs.values()))
        left = _empty_and_remove(dirs) if dirs else []
        self.dirs = {}
        if self.layout.v2_root is not None and self.layout.mode == "v2":
            for controller in self._enabled_v2_controllers:
                try:
                    _write(self.layout.v2_root / "cgroup.subtree_control", f"-{controller}")
                except OSError:
                    pass  # another group uses it now; leave it on
        if left:
            raise ContendError(f"could not remove cgroup {', '.join(map(str, left))}")

    def __enter__(self) -> Sandbox:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
