"""The procfs backend of `contend trace`: no root, no tracer; sampling instead.

The target's tasks are read every `interval_s` from /proc (schedstat, status, io).
Lifecycle events come from comparing samples: a task seen for the first time is a new
process or thread, a task gone is an exit. Tasks that live shorter than one interval
are missed, exit codes are unknown (except the launched command's own), and there is
no syscall latency: every result says so.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from contend.collect.launch import launch
from contend.collect.procfs import ProcFS
from contend.collect.sampler import Sampler
from contend.errors import Terminated
from contend.model import CgroupCpuStat, Pressure, ProcessEvent, SampledTrace, Snapshot
from contend.target import Target

DEFAULT_INTERVAL_S = 0.1


def pid_source(target: Target, fs: ProcFS, launched: int | None) -> Callable[[], list[int]]:
    if target.pids:
        return lambda: list(target.pids)
    if target.comm is not None:
        comm = target.comm
        return lambda: fs.pids_with_comm(comm)
    if target.cgroup is not None:
        procs = target.cgroup / "cgroup.procs"

        def members() -> list[int]:
            try:
                return [int(p) for p in procs.read_text().split()]
            except OSError:  # the group was removed meanwhile
                return []

        return members
    if launched is not None:
        return lambda: fs.descendants(launched) if (fs.root / str(launched)).exists() else []
    return fs.pids


def _events(previous: Snapshot, current: Snapshot) -> list[ProcessEvent]:
    """Lifecycle events between two samples."""
    before = {t.key: t for t in previous.tasks}
    after = {t.key: t for t in current.tasks}
    known_pids = {t.pid for t in previous.tasks}
    out = []
    for key, t in after.items():
        if key in before:
            continue
        if t.tid == t.pid and t.pid not in known_pids:
            out.append(ProcessEvent(current.t_ns, "fork", t.pid, t.tid, t.ppid, t.comm))
        elif t.tid != t.pid:
            out.append(ProcessEvent(current.t_ns, "thread", t.pid, t.tid, t.pid, t.comm))
    for key, t in before.items():
        if key not in after:
            out.append(ProcessEvent(current.t_ns, "exit", t.pid, t.tid, None, t.comm))
    return out


def run_sampled(
    target: Target,
    duration_s: float | None,
    interval_s: float = DEFAULT_INTERVAL_S,
    wait: Callable[[float], None] = time.sleep,
    on_started: Callable[[int | None], None] | None = None,
    on_stopping: Callable[[], None] | None = None,
    cgroup_cpu: Callable[[], CgroupCpuStat | None] | None = None,
    cgroup_pressure: Callable[[], Pressure | None] | None = None,
) -> SampledTrace:
    """`on_started`/`on_stopping`: told when sampling runs (with the launched command's
    pid) and just before it ends."""
    fs = ProcFS()
    # Held at its gate until sampling runs, and ended with what it started (as on the
    # other backends): collect.launch.
    launched = launch(target.command) if target.command else None
    try:
        source = pid_source(target, fs, launched.proc.pid if launched else None)
        sampler = Sampler(
            source,
            interval_s=interval_s,
            cgroup_cpu=cgroup_cpu,
            cgroup_pressure=cgroup_pressure,
            procfs=fs,
        )
    except BaseException:
        if launched is not None:
            launched.abort()
        raise
    notes = [
        "procfs backend: sampled every "
        f"{interval_s * 1000:.0f} ms; tasks shorter than that are missed; no syscall latency, "
        "no wakeups; exit codes unknown but the command's",
    ]
    started = time.monotonic()
    sampler.start()
    try:
        if launched is not None:
            launched.release()
        if on_started is not None:
            on_started(launched.proc.pid if launched is not None else None)
        deadline = started + duration_s if duration_s else None
        while True:
            if launched is not None and launched.proc.poll() is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            wait(min(interval_s, 0.05))
    except (KeyboardInterrupt, Terminated):
        notes.append("stopped by a signal before the end")
    finally:
        exit_status = None
        try:
            try:
                if on_stopping is not None:
                    on_stopping()
            finally:
                snapshots = sampler.stop()
        finally:
            if launched is not None:
                exit_status = launched.finish()
    events: list[ProcessEvent] = []
    for a, b in itertools.pairwise(snapshots):
        events.extend(_events(a, b))
    if launched is not None and exit_status is not None:
        pid = launched.proc.pid
        rc = launched.proc.returncode  # negative: killed by that signal (subprocess's rule)
        code, sig = (rc, 0) if rc >= 0 else (None, -rc)
        events = [e for e in events if not (e.event == "exit" and e.pid == pid and e.tid == pid)]
        events.append(
            ProcessEvent(
                snapshots[-1].t_ns, "exit", pid, pid, None, _comm(snapshots, pid), code, sig
            )
        )
    if target.system_wide:
        notes.append("no target given: the whole system was sampled")
    return SampledTrace(
        snapshots=snapshots,
        events=tuple(events),
        duration_s=time.monotonic() - started,
        exit_status=exit_status,
        notes=tuple(notes),
        tracer_cpu_s=sampler.cpu_s,
    )


def _comm(snapshots: tuple[Snapshot, ...], pid: int) -> str:
    for snap in reversed(snapshots):
        for t in snap.tasks:
            if t.pid == pid and t.tid == pid:
                return t.comm
    return ""
