"""What `contend diagnose` collects about a target: one `Observation`, from any backend.

Beside the backend's events (bpftrace: the breakdown program, in-kernel; tracefs: every
event), the target's tasks are sampled from /proc (schedstat, switches), each cgroup
they are in is read at the start and at the end (cpu.stat, cpu.pressure, the quota),
and so is every process's CPU time, to say how much the tasks that held the target's
CPUs took. procfs alone (no root) gives the same Observation without events.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from contend.collect import bpftrace as bt
from contend.collect.cgroups import (
    CgroupLayout,
    TaskGroup,
    container_in_path,
    cpu_pressure,
    cpu_stat,
    detect_layout,
    sample_group,
    task_group,
)
from contend.collect.procfs import CLOCK_TICKS, ProcFS, ProcGone
from contend.collect.sampler import Sampler
from contend.errors import ContendError
from contend.model import (
    CgroupCpuStat,
    CgroupSample,
    Observation,
    Overhead,
    Pressure,
    ProcessCpu,
    SchedTimes,
    Snapshot,
    SyscallRow,
)
from contend.monitors import TraceOptions, breakdown, run_trace_output
from contend.monitors.sampled import pid_source, run_sampled
from contend.monitors.tracefs_breakdown import run_window
from contend.monitors.tracefs_breakdown import sched_times as tracefs_sched_times
from contend.monitors.tracefs_trace import TracefsRun, check_available, run_tracefs
from contend.target import Target

BACKENDS = ("auto", "bpftrace", "tracefs", "procfs")
SAMPLE_INTERVAL_S = 0.25
MACHINE_INTERVAL_S = 1.0  # every task of the machine: sampled less often


def all_processes(fs: ProcFS, layout: CgroupLayout | None = None) -> tuple[ProcessCpu, ...]:
    """Every process's CPU time now (utime + stime, all its threads), and its cgroup when
    `layout` is given."""
    out = []
    for pid in fs.pids():
        try:
            st = fs.stat(pid)
        except (ProcGone, ValueError, OSError):
            continue
        ns = (st.utime_ticks + st.stime_ticks) * 1_000_000_000 // CLOCK_TICKS
        group = task_group(pid, layout, str(fs.root)) if layout is not None else None
        out.append(ProcessCpu(pid, st.comm, st.start_ticks, ns, group.path if group else None))
    return tuple(out)


@dataclass
class GroupWatch:
    """The cgroups of a changing set of processes, each read when first seen and at the
    end; the processes' groups remembered (pid -> path)."""

    layout: CgroupLayout
    fs: ProcFS = field(default_factory=ProcFS)
    groups: dict[str, TaskGroup] = field(default_factory=dict)
    first: dict[str, CgroupSample] = field(default_factory=dict)
    of_pid: dict[int, str] = field(default_factory=dict)

    def see(self, pids: Iterable[int]) -> None:
        now = time.monotonic_ns()
        for pid in pids:
            if pid in self.of_pid:
                continue
            group = task_group(pid, self.layout, str(self.fs.root))
            if group is None:
                continue
            self.of_pid[pid] = group.path
            if group.path not in self.groups:
                self.groups[group.path] = group
                self.first[group.path] = sample_group(group, self.layout, now)

    def primary(self) -> TaskGroup | None:
        """The group followed over time: the tightest quota's, else the one holding most
        of the processes seen."""
        limited = [
            (f.quota_us / f.period_us, path)
            for path, f in self.first.items()
            if f.quota_us is not None and f.period_us
        ]
        if limited:
            return self.groups[min(limited)[1]]
        counts: dict[str, int] = {}
        for path in self.of_pid.values():
            counts[path] = counts.get(path, 0) + 1
        return self.groups[max(counts, key=lambda p: counts[p])] if counts else None

    def pairs(self) -> tuple[tuple[CgroupSample, CgroupSample], ...]:
        now = time.monotonic_ns()
        return tuple(
            (self.first[path], sample_group(group, self.layout, now))
            for path, group in self.groups.items()
        )


class Watch:
    """The sampling that runs beside a trace: started once tracing runs, stopped just
    before it ends."""

    def __init__(
        self, target: Target, fs: ProcFS, layout: CgroupLayout, sampling: bool = True
    ) -> None:
        self.target = target
        self.sampling = sampling  # False: the backend samples the tasks itself
        self.fs = fs
        self.layout = layout
        self.groups = GroupWatch(layout, fs)
        self.sampler: Sampler | None = None
        self.snapshots: tuple[Snapshot, ...] = ()
        self.psi: tuple[Pressure | None, Pressure | None] = (None, None)
        self.processes: tuple[tuple[ProcessCpu, ...], tuple[ProcessCpu, ...]] = ((), ())
        self.start_ns = self.end_ns = 0
        self.source: Callable[[], list[int]] = list
        self.cgroups: tuple[tuple[CgroupSample, CgroupSample], ...] = ()
        self.followed: TaskGroup | None = None
        self.asleep: dict[int, int] = {}
        self.name = ""
        self.observers: set[int] = set()
        self.observer_tids: dict[int, int] = {}  # tid -> pid, threads that may end first

    def _see_observers(self, targets: list[int]) -> None:
        """contend itself and its children (the tracer), not the target's processes (a
        launched command is contend's child too); their threads, whose tids name them
        after the threads ended (the sampler's, a reader's)."""
        skip = set(targets)
        stack = [os.getpid()]
        seen: set[int] = set()
        while stack:
            pid = stack.pop()
            if pid in skip or pid in seen:
                continue
            seen.add(pid)
            self.observers.add(pid)
            try:
                for tid in self.fs.tids(pid):
                    self.observer_tids.setdefault(tid, pid)
                stack.extend(self.fs.children(pid))
            except (ProcGone, OSError):
                continue

    def started(self, launched: int | None) -> None:
        source = pid_source(self.target, self.fs, launched)

        def pids() -> list[int]:
            found = source()
            self.groups.see(found)
            return found

        self.source = pids
        self.name = self.label()  # now, while the processes live
        self.start_ns = time.monotonic_ns()
        self.processes = (all_processes(self.fs), ())
        self.psi = (self.fs.system_pressure(), None)
        found = source()
        self.groups.see(found)
        self.followed = self.groups.primary()
        # Threads asleep now, in which syscall: events say nothing of a thread that
        # sleeps through the whole window (/proc/PID/task/TID/syscall, root).
        for pid in found:
            for tid in self.fs.tids(pid):
                nr = self.fs.blocked_in(pid, tid)
                if nr is not None:
                    self.asleep[tid] = nr
        if self.sampling:
            self.sampler = Sampler(
                pids,
                interval_s=SAMPLE_INTERVAL_S,
                cgroup_cpu=self.cgroup_cpu,
                cgroup_pressure=self.cgroup_pressure,
                procfs=self.fs,
            )
            self.sampler.start()
        self._see_observers(found)

    def label(self) -> str:
        """The target as the diagnosis names it: `pid 812 (gunicorn)` for pids."""
        text = self.target.describe()
        names = sorted({c for pid in self.target.pids if (c := self._comm(pid))})
        return f"{text} ({', '.join(names)})" if names else text

    def _comm(self, pid: int) -> str:
        try:
            return self.fs.stat(pid).comm
        except (ProcGone, ValueError, OSError):
            return ""

    def surroundings(self, backend: str) -> Observation:
        """What was read around the events, as an Observation without them."""
        return _surroundings(self, backend)

    def attach(self, run: TracefsRun) -> None:
        """Give a tracefs run what was read around it, and the process of each of
        contend's own threads (one that ended is not in /proc to resolve)."""
        run.around = self.surroundings("tracefs")
        for tid, pid in self.observer_tids.items():
            run.tasks.tgid[tid] = pid

    # The followed group's counters, for each sample (None until it is known).
    def cgroup_cpu(self) -> CgroupCpuStat | None:
        return cpu_stat(self.followed.dirs) if self.followed is not None else None

    def cgroup_pressure(self) -> Pressure | None:
        return cpu_pressure(self.followed.dirs) if self.followed is not None else None

    def stopping(self) -> None:
        if not self.start_ns or self.end_ns:
            return  # never started, or stopped already
        self._see_observers(self.source())
        if self.sampler is not None:
            self.snapshots = self.sampler.stop()
            self.sampler = None
        self.cgroups = self.groups.pairs()
        self.psi = (self.psi[0], self.fs.system_pressure())
        self.processes = (self.processes[0], all_processes(self.fs, self.layout))
        self.end_ns = time.monotonic_ns()


def _surroundings(watch: Watch, backend: str) -> Observation:
    return Observation(
        system_wide=watch.target.system_wide,
        followed_cgroup=watch.followed.path if watch.followed is not None else None,
        target=watch.name or watch.target.describe(),
        backend=backend,
        start_ns=watch.start_ns,
        end_ns=watch.end_ns,
        sched_times=None,
        snapshots=watch.snapshots,
        cgroups=watch.cgroups,
        task_cgroups=dict(watch.groups.of_pid),
        psi_system=watch.psi,
        processes=watch.processes,
        asleep=dict(watch.asleep),
        observers=tuple(sorted(watch.observers)),
    )


def _resolve_holders(times: SchedTimes, fs: ProcFS, known: dict[int, int]) -> SchedTimes:
    """Each task that held a CPU while the target waited, with its process: a target
    thread's from the trace, contend's own from `known`, another's from /proc now (None
    when it is gone)."""
    own = {**known, **{t.tid: t.pid for t in times.threads}}
    occupants = []
    for o in times.occupants:
        if o.tid == 0:
            pid: int | None = 0
        elif o.tid in own:
            pid = own[o.tid]
        else:
            owner = fs.owner(o.tid)
            pid = owner[0] if owner else None
        occupants.append(replace(o, pid=pid))
    return replace(times, occupants=tuple(occupants))


def _containers(paths: Iterable[str]) -> dict[str, str]:
    return {p: c for p in paths if (c := container_in_path(p)) is not None}


def choose_backend(backend: str) -> tuple[str, str | None]:
    """The backend to run, and why auto fell back (None when it did not)."""
    if backend not in BACKENDS:
        raise ContendError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}", 2)
    if backend in ("procfs", "tracefs"):
        return backend, None
    ok, why = bt.available()
    if ok:
        return "bpftrace", None
    if backend == "bpftrace":
        raise ContendError(f"--backend bpftrace: {why}")
    return "procfs", why


def observe(
    target: Target,
    duration_s: float | None,
    backend: str = "auto",
    wait: Callable[[float], None] = time.sleep,
) -> tuple[Observation, TracefsRun | None]:
    """Watch `target` for `duration_s` (None: until Ctrl-C or the command's exit); the
    tracefs run too on that backend (its timeline is the Perfetto file)."""
    chosen, fallback = choose_backend(backend)
    if target.system_wide:
        # The whole machine: every thread's run-queue wait from schedstat (the kernel's
        # own counters, exact per thread) ranks who waited most; naming who they waited
        # behind is `diagnose --pid` on one of them.
        chosen, fallback = "procfs", None
    fs = ProcFS()
    layout = detect_layout()
    watch = Watch(target, fs, layout, sampling=chosen != "procfs")
    notes: list[str] = []
    if fallback is not None:
        notes.append(f"backend auto -> procfs: {fallback}")
    times: SchedTimes | None = None
    tracefs_run: TracefsRun | None = None
    rows: tuple[SyscallRow, ...] | None = None
    lost = 0
    overhead: Overhead | None = None
    exit_status: int | None = None
    if chosen == "bpftrace":
        opts = TraceOptions(
            ("syscalls", "breakdown"),
            target,
            duration_s,
            latency="sampled",
            on_started=watch.started,
            on_stopping=watch.stopping,
        )
        try:
            result, out = run_trace_output(opts, wait)
        finally:
            watch.stopping()
        times = breakdown.sched_times(out)
        if times is not None:
            times = _resolve_holders(times, fs, watch.observer_tids)
        else:
            notes.append(
                "bpftrace printed no scheduling maps: running and runnable time from "
                "schedstat, who held the CPU unknown"
            )
        rows = tuple(r for r in result.syscalls)
        lost = result.lost_events
        overhead = result.overhead
        exit_status = result.exit_status
        notes += [n for n in result.notes]
    elif chosen == "procfs":
        sampled = run_sampled(
            target,
            duration_s,
            interval_s=MACHINE_INTERVAL_S if target.system_wide else SAMPLE_INTERVAL_S,
            wait=wait,
            cgroup_cpu=watch.cgroup_cpu,
            cgroup_pressure=watch.cgroup_pressure,
            on_started=watch.started,
            on_stopping=watch.stopping,
        )
        exit_status = sampled.exit_status
        watch.snapshots = sampled.snapshots
        notes += [
            "whole machine: every thread's running and runnable time from schedstat, "
            "ranked; diagnose one of them (--pid) to name who it waited behind"
            if target.system_wide
            else "procfs backend: running and runnable time from schedstat; who held the "
            "CPU while it waited needs root (bpftrace or tracefs)"
        ]
        notes += [
            n for n in sampled.notes if not n.startswith(("procfs backend:", "no target given"))
        ]
        overhead = Overhead(tracer_cpu_s=sampled.tracer_cpu_s, events=0)
    else:
        check_available()
        # Not the io monitor: the diagnosis reads no file paths (they cost a read of
        # /proc per batch and the most of the analysis: 0.4 of 0.7 s on 10k round trips/s).
        opts = TraceOptions(
            ("syscalls", "cpu", "process"),
            target,
            duration_s,
            on_started=watch.started,
            on_stopping=watch.stopping,
        )
        try:
            run = run_tracefs(opts, wait)
        finally:
            watch.stopping()  # a run that failed after it started: the sampler ends too
        watch.attach(run)
        recorded = observation_of_session(run)
        return replace(recorded, notes=(*notes, *recorded.notes)), run
    around = watch.surroundings(chosen)
    observation = with_holders(
        replace(
            around,
            sched_times=times,
            syscalls=rows,
            lost_events=lost,
            overhead=overhead,
            notes=tuple(notes),
            exit_status=exit_status,
        )
    )
    return observation, tracefs_run


def with_holders(obs: Observation) -> Observation:
    """The cgroups (and containers) of the tasks that held the target's CPUs too, from
    every process's group as read at the end."""
    holders = {o.pid for o in obs.sched_times.occupants if o.pid} if obs.sched_times else set()
    task_cgroups = dict(obs.task_cgroups)
    for p in obs.processes[1]:
        if p.pid in holders and p.cgroup is not None:
            task_cgroups.setdefault(p.pid, p.cgroup)
    return replace(obs, task_cgroups=task_cgroups, containers=_containers(task_cgroups.values()))


def observation_of_session(run: TracefsRun) -> Observation:
    """A recorded session (or a finished tracefs run) as an Observation: its events'
    breakdown within what was recorded around them (`run.around`: the window, the
    threads asleep at its start, the cgroups, the samples), else within its first and
    last event."""
    around = run.around
    window = (around.start_ns, around.end_ns) if around is not None else run_window(run)
    asleep = around.asleep if around is not None else None
    times = tracefs_sched_times(run, window=window, asleep=asleep, machine=run.machine)
    r = run.result
    base = around or Observation(
        target=r.target,
        backend="tracefs",
        start_ns=window[0],
        end_ns=window[1],
        sched_times=None,
        snapshots=(),
    )
    return with_holders(
        replace(
            base,
            target=around.target if around is not None else r.target,
            backend="tracefs",
            sched_times=times,
            syscalls=r.syscalls,
            lost_events=r.lost_events,
            overhead=r.overhead,
            notes=r.notes,
            exit_status=r.exit_status,
        )
    )


def resolve_holders(run: TracefsRun) -> None:
    """Learn now (from /proc) the process and name of each task that held a CPU in the
    run, so that a session file saved next names them without this machine."""
    if run.occupancy is not None:
        for tid in np.unique(run.occupancy.tid).tolist():
            if tid:
                run.tasks.pid_of(int(tid))
                run.tasks.comm_of(int(tid))
