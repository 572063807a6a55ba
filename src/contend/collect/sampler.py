"""Periodic procfs sampling of a changing set of processes, in a background thread.

Sampling (not only start and end) keeps the counters of threads and processes that exit
mid-window: their last sample before they vanished still counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from contend.collect.procfs import ProcFS
from contend.model import CgroupCpuStat, Pressure, Snapshot


class Sampler:
    def __init__(
        self,
        pids: Callable[[], Iterable[int]],
        interval_s: float = 0.25,
        cgroup_cpu: Callable[[], CgroupCpuStat | None] | None = None,
        cgroup_pressure: Callable[[], Pressure | None] | None = None,
        procfs: ProcFS | None = None,
    ) -> None:
        self._pids = pids
        self._interval_s = interval_s
        self._cgroup_cpu = cgroup_cpu
        self._cgroup_pressure = cgroup_pressure
        self._procfs = procfs or ProcFS()
        self._snapshots: list[Snapshot] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpu_s = 0.0  # CPU time the sampling itself used

    def _timed_snapshot(self) -> Snapshot:
        started = time.thread_time()
        snap = self.snapshot()
        self.cpu_s += time.thread_time() - started
        return snap

    def snapshot(self) -> Snapshot:
        pids = sorted(set(self._pids()))
        fs = self._procfs
        # Cgroup and PSI counters first and last, bracketing the per-task reads.
        cgroup_cpu = self._cgroup_cpu() if self._cgroup_cpu else None
        psi_cgroup = self._cgroup_pressure() if self._cgroup_pressure else None
        psi_system = fs.system_pressure()
        tasks = tuple(fs.tasks(pids))
        io = tuple(i for i in (fs.io(pid) for pid in pids) if i is not None)
        return Snapshot(
            t_ns=time.monotonic_ns(),
            tasks=tasks,
            io=io,
            cgroup_cpu=cgroup_cpu,
            psi_system=psi_system,
            psi_cgroup=psi_cgroup,
        )

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._snapshots.append(self._timed_snapshot())

    def start(self) -> None:
        self._snapshots = [self._timed_snapshot()]
        self._thread = threading.Thread(target=self._run, name="contend-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> tuple[Snapshot, ...]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._snapshots.append(self._timed_snapshot())
        return tuple(self._snapshots)
