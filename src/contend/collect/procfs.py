"""The procfs backend: unprivileged sampling of /proc, schedstat, cgroup cpu.stat and PSI.

Parsers are small pure functions over file text, each citing the kernel code it follows;
`ProcFS` reads files under an overridable root so tests can point it at a fixture tree.
A process or thread that vanishes between two reads yields None, never an exception.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from contend.model import CgroupCpuStat, Pressure, ProcessIO, TaskStat

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ProcGone(Exception):
    """The task exited (or its PID was reused) while being read."""


# --- parsers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatFields:
    comm: str
    state: str
    ppid: int
    utime_ticks: int
    stime_ticks: int
    start_ticks: int
    threads: int = 1


def parse_stat(text: str) -> StatFields:
    """/proc/PID/stat, fs/proc/array.c do_task_stat().

    `comm` is printed inside parentheses and may itself contain spaces, parentheses and
    newlines, so it runs from the first '(' to the LAST ')'. Fields after it are
    space-separated: state(3) ppid(4) ... utime(14) stime(15) ... num_threads(20)
    ... starttime(22).
    """
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    comm = text[open_paren + 1 : close_paren]
    rest = text[close_paren + 2 :].split()
    # rest[0] is field 3 (state), so field N is rest[N - 3].
    return StatFields(
        comm=comm,
        state=rest[0],
        ppid=int(rest[1]),
        utime_ticks=int(rest[11]),
        stime_ticks=int(rest[12]),
        start_ticks=int(rest[19]),
        threads=int(rest[17]),
    )


def parse_status_switches(text: str) -> tuple[int, int]:
    """(voluntary, involuntary) context switches from /proc/PID/status.

    fs/proc/array.c task_context_switch_counts(): these are the counts of that one task
    (thread), not of its thread group.
    """
    voluntary = involuntary = -1
    for line in text.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            voluntary = int(line.split(":", 1)[1])
        elif line.startswith("nonvoluntary_ctxt_switches:"):
            involuntary = int(line.split(":", 1)[1])
    if voluntary < 0 or involuntary < 0:
        raise ValueError("status has no ctxt_switches lines")
    return voluntary, involuntary


def parse_schedstat(text: str) -> tuple[int, int, int]:
    """/proc/PID/schedstat, fs/proc/base.c proc_pid_schedstat():
    time on CPU (ns), time waiting on a run queue (ns), number of timeslices run.
    """
    on_cpu, wait, slices = text.split()[:3]
    return int(on_cpu), int(wait), int(slices)


def parse_io(text: str) -> dict[str, int]:
    """/proc/PID/io, fs/proc/base.c do_io_accounting(): `name: value` lines."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            values[name.strip()] = int(value)
    return values


def parse_pressure(text: str) -> Pressure:
    """/proc/pressure/cpu or a cgroup's cpu.pressure, kernel/sched/psi.c psi_show():

        some avg10=0.00 avg60=0.00 avg300=0.00 total=0
        full avg10=0.00 avg60=0.00 avg300=0.00 total=0

    Only `total` (us) is used: the avg10 window lags a short experiment arm.
    The system-wide `full` line for CPU exists since 5.13; older kernels have only `some`.
    """
    totals: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        for part in parts[1:]:
            if part.startswith("total="):
                totals[parts[0]] = int(part[len("total=") :])
    if "some" not in totals:
        raise ValueError("pressure file has no 'some' line")
    return Pressure(some_us=totals["some"], full_us=totals.get("full"))


def parse_cpu_stat(text: str) -> CgroupCpuStat:
    """A cgroup's cpu.stat, v1 or v2.

    v1 (kernel/sched/core.c cpu_cfs_stat_show()): nr_periods, nr_throttled,
    throttled_time (ns). v2 (cpu_extra_stat_show() + cgroup_base_stat_cputime_show()):
    usage_usec, ..., nr_periods, nr_throttled, throttled_usec. A v2 group without the cpu
    controller (the hybrid layout's unified tree) has only the usage lines: periods are 0.
    """
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            values[parts[0]] = int(parts[1])
    if "throttled_time" in values:
        throttled_ns = values["throttled_time"]
    else:
        throttled_ns = values.get("throttled_usec", 0) * 1000
    usage_us = values.get("usage_usec")
    burst_ns = values.get("burst_time")  # v1, ns
    if burst_ns is None and "burst_usec" in values:
        burst_ns = values["burst_usec"] * 1000
    return CgroupCpuStat(
        nr_periods=values.get("nr_periods", 0),
        nr_throttled=values.get("nr_throttled", 0),
        throttled_ns=throttled_ns,
        usage_ns=usage_us * 1000 if usage_us is not None else None,
        nr_bursts=values.get("nr_bursts"),
        burst_ns=burst_ns,
    )


# --- reading ------------------------------------------------------------------------------


class ProcFS:
    """Reads tasks and processes under `root` (default /proc)."""

    def __init__(self, root: str | os.PathLike[str] = "/proc") -> None:
        self.root = Path(root)

    def _read(self, *parts: str | int) -> str:
        path = self.root.joinpath(*(str(p) for p in parts))
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                return f.read()
        except (FileNotFoundError, ProcessLookupError) as e:
            raise ProcGone(str(path)) from e
        except OSError as e:
            # ESRCH from a task reaped between open and read.
            if e.errno == 3:
                raise ProcGone(str(path)) from e
            raise

    def stat(self, pid: int) -> StatFields:
        return parse_stat(self._read(pid, "stat"))

    def tids(self, pid: int) -> list[int]:
        try:
            return sorted(int(name) for name in os.listdir(self.root / str(pid) / "task"))
        except (FileNotFoundError, ProcessLookupError):
            return []

    def task(self, pid: int, tid: int) -> TaskStat | None:
        """One thread's counters, or None if it vanished while being read."""
        base = (pid, "task", tid)
        try:
            st = parse_stat(self._read(*base, "stat"))
            voluntary, involuntary = parse_status_switches(self._read(*base, "status"))
            try:
                on_cpu, wait, slices = parse_schedstat(self._read(*base, "schedstat"))
                sched: tuple[int | None, int | None, int | None] = (on_cpu, wait, slices)
            except ProcGone:
                if not (self.root / str(pid) / "task" / str(tid)).exists():
                    raise
                sched = (None, None, None)  # kernel without CONFIG_SCHED_INFO
            # Re-read stat's start time: if the tid was reused between the reads above, the
            # counters belong to two tasks; drop the sample rather than mix them.
            if parse_stat(self._read(*base, "stat")).start_ticks != st.start_ticks:
                return None
        except ProcGone:
            return None
        return TaskStat(
            pid=pid,
            tid=tid,
            comm=st.comm,
            start_ticks=st.start_ticks,
            utime_ticks=st.utime_ticks,
            stime_ticks=st.stime_ticks,
            voluntary_switches=voluntary,
            involuntary_switches=involuntary,
            on_cpu_ns=sched[0],
            run_queue_wait_ns=sched[1],
            slices=sched[2],
            ppid=st.ppid,
        )

    def blocked_in(self, pid: int, tid: int) -> int | None:
        """The syscall a sleeping thread is blocked in (-1: asleep outside any syscall),
        or None when it is running or gone. /proc/PID/task/TID/syscall (needs ptrace
        access, root here): "running", "-1 ...", or "NR args... sp pc"
        (fs/proc/base.c proc_pid_syscall)."""
        try:
            first = self._read(pid, "task", tid, "syscall").split(maxsplit=1)
        except (ProcGone, PermissionError):
            return None
        if not first or first[0] == "running":
            return None
        try:
            return int(first[0])
        except ValueError:
            return None

    def tasks(self, pids: Iterable[int]) -> Iterator[TaskStat]:
        for pid in pids:
            for tid in self.tids(pid):
                t = self.task(pid, tid)
                if t is not None:
                    yield t

    def io(self, pid: int) -> ProcessIO | None:
        """syscr/syscw of a process, or None if it vanished or /proc/PID/io is not ours
        to read (it needs ptrace-read access: same user, or root)."""
        try:
            st = self.stat(pid)
            values = parse_io(self._read(pid, "io"))
        except (ProcGone, PermissionError):
            return None
        return ProcessIO(
            pid=pid,
            start_ticks=st.start_ticks,
            syscr=values["syscr"],
            syscw=values["syscw"],
            rchar=values.get("rchar", 0),
            wchar=values.get("wchar", 0),
            comm=st.comm,
        )

    def children(self, pid: int) -> list[int]:
        """Direct children of every thread of `pid` (fs/proc/array.c, CONFIG_PROC_CHILDREN)."""
        out: list[int] = []
        for tid in self.tids(pid):
            try:
                out.extend(int(c) for c in self._read(pid, "task", tid, "children").split())
            except ProcGone:
                continue
        return out

    def descendants(self, pid: int) -> list[int]:
        """`pid` and all its descendants, found through the children files."""
        seen: list[int] = []
        stack = [pid]
        while stack:
            p = stack.pop()
            if p in seen:
                continue
            seen.append(p)
            stack.extend(self.children(p))
        return seen

    def owner(self, tid: int) -> tuple[int, str] | None:
        """(pid, comm) of a live thread: /proc/TID resolves a thread ID too, and its
        status names the thread group (fs/proc/array.c task_state(): Tgid)."""
        try:
            comm = self.stat(tid).comm
            status = self._read(tid, "status")
        except (ProcGone, ValueError):
            return None
        for line in status.splitlines():
            if line.startswith("Tgid:"):
                return int(line.split()[1]), comm
        return None

    def pids(self) -> list[int]:
        return [int(n) for n in os.listdir(self.root) if n.isdigit()]

    def pids_with_comm(self, comm: str) -> list[int]:
        """Processes whose main thread is named `comm` (what pgrep -x matches)."""
        out = []
        for pid in self.pids():
            try:
                if self.stat(pid).comm == comm:
                    out.append(pid)
            except (ProcGone, ValueError, OSError):
                continue
        return out

    def system_pressure(self) -> Pressure | None:
        try:
            return parse_pressure(self._read("pressure", "cpu"))
        except (ProcGone, OSError, ValueError):
            return None  # kernel without CONFIG_PSI, or psi=0 on the command line


def read_small(path: str | os.PathLike[str]) -> str:
    """A small kernel file (/proc, cgroupfs), without pathlib's overhead: `top` and the
    exporter read thousands each second."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 65536).decode()
    finally:
        os.close(fd)


Read = Callable[[str], str]


class HeldFiles:
    """Small kernel files kept open between readings, for readers that read the same
    thousands of files every second (`top`, the exporter).

    /proc/PID/schedstat, stat and cgroup, cpu.stat and cpu.pressure are seq_files: a read
    at offset 0 makes their text anew (fs/seq_file.c seq_read_iter restarts at pos 0),
    so `pread(fd, 0)` on a held descriptor gives the current counters for one syscall
    instead of three (measured here: 0.95 us against 5.0 us for open, read, close). A held descriptor
    stays bound to the task or group it was opened on: once that ends, its reads fail
    (ESRCH, ENODEV), and the path is opened afresh, so a reused tid or a group made anew
    under the same path is read as itself. At most `budget` files are held (beside the
    process's other descriptors, under RLIMIT_NOFILE, which is left as it is); past it,
    files are opened and closed as `read_small` does. `sweep()` closes the files that
    were not read in the last `idle_sweeps` sweeps (a reader that reads some files only
    every few readings keeps them)."""

    def __init__(self, budget: int | None = None, idle_sweeps: int = 1) -> None:
        if budget is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            budget = 1 << 16 if soft == resource.RLIM_INFINITY else min(soft, 1 << 16)
            budget = max(budget - 256, 0)  # room for the process's own descriptors
        self.budget = budget
        self.idle_sweeps = idle_sweeps
        self._fds: dict[str, int] = {}
        self._last: dict[str, int] = {}  # path -> the sweep count when it was last read
        self._sweeps = 0

    def read(self, path: str) -> str:
        fd = self._fds.get(path)
        if fd is not None:
            self._last[path] = self._sweeps
            try:
                return os.pread(fd, 65536, 0).decode()
            except OSError:
                del self._fds[path], self._last[path]
                os.close(fd)  # its task or group ended: the path may hold another now
        if len(self._fds) >= self.budget:
            return read_small(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.pread(fd, 65536, 0).decode()
        except BaseException:
            os.close(fd)
            raise
        self._fds[path] = fd
        self._last[path] = self._sweeps
        return text

    def sweep(self) -> None:
        for path in [p for p, n in self._last.items() if self._sweeps - n >= self.idle_sweeps]:
            del self._last[path]
            os.close(self._fds.pop(path))
        self._sweeps += 1

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._last.clear()

    def __len__(self) -> int:
        return len(self._fds)


def read_pressure_file(path: str | os.PathLike[str], read: Read = read_small) -> Pressure | None:
    try:
        return parse_pressure(read(str(path)))
    except (OSError, ValueError):
        return None


def read_cpu_stat_file(
    path: str | os.PathLike[str], read: Read = read_small
) -> CgroupCpuStat | None:
    try:
        return parse_cpu_stat(read(str(path)))
    except (OSError, ValueError):
        return None
