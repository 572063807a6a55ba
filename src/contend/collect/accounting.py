"""One reading of the whole machine for the continuous accounting (`top`, `exporter`):
every thread's scheduler counters and every cgroup that holds a process.

Unprivileged: /proc/PID/task/TID/schedstat (on-CPU ns, run-queue wait ns, slices;
Documentation/scheduler/sched-stats.rst), /proc/PID/cgroup and stat (name, thread
count), and each group's cpu.stat, cpu.pressure and quota files (collect/cgroups.py). Processes of other users are read as
far as /proc lets; a task that ends while it is read is simply not in the sample.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from contend.collect.cgroups import (
    CgroupLayout,
    GroupLimits,
    TaskGroup,
    group_limits,
    group_of_cgroup_file,
    names_in_path,
    sample_group,
)
from contend.collect.containers import ContainerNames
from contend.collect.procfs import HeldFiles, parse_schedstat, parse_stat, read_pressure_file
from contend.collect.sched_accounting import SchedAccounting
from contend.model import CgroupSample, GroupNames, MachineSample, TaskCounters

# A process's cgroup, name and thread list are re-read every REFRESH readings (staggered
# by pid), its threads' counters at every reading. A thread born meanwhile is counted
# from its start once seen (the fold counts a new thread's whole life), so nothing is
# lost; a process moved to another group is seen there within REFRESH readings.
REFRESH = 5


@dataclass
class _Process:
    group: TaskGroup
    comm: str
    tasks: list[tuple[int, str]]  # (tid, its schedstat's path)


class MachineReader:
    """Reads a MachineSample; keeps each group's directories between readings (a group's
    files are found once, not per process per reading)."""

    def __init__(
        self,
        layout: CgroupLayout,
        proc_root: str = "/proc",
        sched: SchedAccounting | None = None,
        containers: ContainerNames | None = None,
    ) -> None:
        """`sched`: the in-kernel accounting (root), drained at each reading;
        `containers`: names for the container ids in cgroup paths."""
        self.layout = layout
        self.sched = sched
        self.containers = containers
        self.proc = Path(proc_root)
        self._groups: dict[str, TaskGroup] = {}
        self._names: dict[str, GroupNames] = {}
        # /proc/PID/cgroup text -> its group: most processes share a few groups, so the
        # text is parsed (and the group's directories looked up) once per reading.
        self._by_text: dict[str, TaskGroup | None] = {}
        self._processes: dict[tuple[int, int], _Process] = {}
        self._limits: dict[str, GroupLimits] = {}
        # schedstat, cgroup, stat, cpu.stat and cpu.pressure stay open between readings
        # (one pread each); those read every REFRESH readings are kept that long.
        self.files = HeldFiles(idle_sweeps=REFRESH + 1)
        self.readings = 0

    def _group_of(self, text: str) -> TaskGroup | None:
        if text not in self._by_text:
            group = group_of_cgroup_file(text, self.layout)
            if group is not None:
                group = self._groups.setdefault(group.path, group)
            self._by_text[text] = group
        return self._by_text[text]

    def read(self) -> MachineSample:
        start = time.monotonic_ns()
        # First what the kernel counted, then /proc: every thread in it is still alive
        # at this reading, or has exited (and is counted as unnamed).
        sched = self.sched.drain() if self.sched is not None else None
        tasks: list[TaskCounters] = []
        cgroup_of: dict[int, str] = {}
        comms: dict[int, str] = {}
        self.readings += 1
        proc = str(self.proc)
        read = self.files.read
        known: dict[tuple[int, int], _Process] = {}
        with os.scandir(proc) as entries:
            for entry in entries:
                if not entry.name.isdigit():
                    continue
                pid = int(entry.name)
                base = f"{proc}/{entry.name}"
                # /proc/PID's inode is the process's own (a reused pid has another):
                # its group, name and thread list are re-read every REFRESH readings.
                key = (pid, entry.inode())
                cached = self._processes.get(key)
                try:
                    if cached is None or (self.readings + pid) % REFRESH == 0:
                        group = self._group_of(read(f"{base}/cgroup"))
                        if group is None:
                            continue  # a kernel without a hierarchy contend reads
                        # stat has the name and the thread count: a process of one
                        # thread needs no listing of its task/ (a costly readdir of /proc).
                        stat = parse_stat(read(f"{base}/stat"))
                        tids = os.listdir(f"{base}/task") if stat.threads > 1 else [entry.name]
                        cached = _Process(
                            group,
                            stat.comm,
                            [(int(tid), f"{base}/task/{tid}/schedstat") for tid in tids],
                        )
                except (OSError, ValueError):
                    continue  # gone
                mine = []
                for tid, path in cached.tasks:
                    try:
                        run, wait, slices = parse_schedstat(read(path))
                    except (OSError, ValueError):
                        continue  # the thread ended, or schedstat is off
                    mine.append(TaskCounters(pid, tid, run, wait, slices))
                if mine:
                    known[key] = cached
                    self._groups.setdefault(cached.group.path, cached.group)
                    tasks.extend(mine)
                    cgroup_of[pid] = cached.group.path
                    comms[pid] = cached.comm
        self._processes = known
        now = time.monotonic_ns()
        groups: dict[str, CgroupSample] = {}
        for path in set(cgroup_of.values()):
            group = self._groups[path]
            # Quotas are re-read every REFRESH readings (staggered), counters every time.
            limits = self._limits.get(path)
            if limits is None or (self.readings + hash(path)) % REFRESH == 0:
                limits = self._limits[path] = group_limits(group, self.layout)
            groups[path] = sample_group(group, self.layout, now, limits, self.files.read)
        self._limits = {p: lim for p, lim in self._limits.items() if p in groups}
        # Groups that emptied are forgotten (a new group of that path is found afresh).
        self._groups = {p: g for p, g in self._groups.items() if p in groups}
        self._by_text = {t: g for t, g in self._by_text.items() if g is None or g.path in groups}
        self._names = {p: self._names.get(p) or self._name(p) for p in groups}
        psi = read_pressure_file(f"{proc}/pressure/cpu", self.files.read)
        self.files.sweep()  # the files of tasks and groups that ended
        return MachineSample(
            t_ns=now,
            tasks=tuple(tasks),
            cgroup_of=cgroup_of,
            comms=comms,
            groups=groups,
            psi=psi,
            own_cpu_ns=time.process_time_ns() + self._tracer_cpu_ns(),
            read_ns=time.monotonic_ns() - start,
            names=dict(self._names),
            sched=sched,
        )

    def close(self) -> None:
        """Closes the files held between readings (a later `read` opens them again)."""
        self.files.close()

    def _name(self, path: str) -> GroupNames:
        names = names_in_path(path)
        if names.container is not None and self.containers is not None:
            names = replace(names, container_name=self.containers.name_of(names.container))
        return names

    def _tracer_cpu_ns(self) -> int:
        seconds = self.sched.cpu_seconds() if self.sched is not None else None
        return int(seconds * 1e9) if seconds is not None else 0
