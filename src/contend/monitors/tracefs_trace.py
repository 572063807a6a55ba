"""`contend trace --backend tracefs`: the monitors on every event, read from ftrace.

One private instance records the target's events (`set_event_pid` with event-fork: the
target's threads at the start, a launched command's gate process, and everything they
create); the reader drains the per-CPU buffers every `READ_INTERVAL_S` without blocking
and decodes each batch at once; at the end `timeline` turns the events into the same
rows as the bpftrace backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contend.collect import tracefs as tf
from contend.collect.launch import Launched, launch
from contend.collect.procfs import ProcFS
from contend.errors import ContendError, Terminated
from contend.model import (
    CpuRow,
    FileRow,
    IoEvent,
    IoRow,
    Observation,
    Occupant,
    Overhead,
    PreemptorRow,
    SchedEvent,
    SyscallRow,
    Timeline,
    TraceEvent,
    TraceResult,
    WaitRow,
)
from contend.monitors import MONITORS, TraceOptions, thread_owner, trace_over
from contend.monitors import timeline as tl
from contend.monitors.io import READS, WRITES
from contend.target import ftrace_string

# The loop's tick: the end of the target (or of --duration) is seen within it. The
# buffers are drained at most that often and at least every MAX_READ_INTERVAL_S: as
# often as keeps the fullest CPU's buffer about FILL_TARGET full at the rate of the last
# batch (each batch costs a fixed part, so fewer, larger batches cost less CPU; at 60k
# events/s over 2 CPUs, ~2 MiB/s a CPU, the default 4 MiB buffers are read every 0.5 s).
# With the io monitor, every tick: opened files' paths are read from /proc meanwhile.
READ_INTERVAL_S = 0.1
MAX_READ_INTERVAL_S = 1.0
FILL_TARGET = 0.25
PAGE_KB = 4
RUNTIME_MIN_NS = 10_000


def event_specs(monitors: tuple[str, ...], machine: str | None = None) -> list[tf.EventSpec]:
    chosen = set(monitors)
    specs = [tf.EventSpec("task", "task_newtask", ("pid", "comm", "clone_flags"))]
    specs += [
        tf.EventSpec("sched", "sched_process_exec", ("filename", "pid")),
        tf.EventSpec("sched", "sched_process_exit", ("pid", "comm")),
    ]
    if "cpu" in chosen:
        specs += [
            tf.EventSpec(
                "sched", "sched_switch",
                ("prev_comm", "prev_pid", "prev_state", "next_comm", "next_pid"),
            ),
            tf.EventSpec("sched", "sched_wakeup", ("pid", "target_cpu")),
            tf.EventSpec("sched", "sched_wakeup_new", ("pid", "target_cpu")),
            # Where a slice began when its switch-in is missing (see timeline.on_cpu). Not
            # the updates under RUNTIME_MIN_NS: a thread reading its own CPU clock
            # (clock_gettime(CLOCK_THREAD_CPUTIME_ID): Python's time.thread_time) makes
            # one per call, ~1.8M/s from one busy loop here, which no buffer holds.
            tf.EventSpec(
                "sched", "sched_stat_runtime", ("pid", "runtime"),
                f"runtime > {RUNTIME_MIN_NS}", optional=True,
            ),
        ]  # fmt: skip
    if "process" in chosen:
        specs.append(tf.EventSpec("signal", "signal_deliver", ("sig", "sa_handler")))
    if chosen & {"syscalls", "process", "io"}:
        # Only the io monitor: only its calls, by number (integers only in the filter).
        only = None
        if not chosen & {"syscalls", "process"}:
            only = tf.id_filter(tl.io_numbers(machine))
        specs += [
            tf.EventSpec("raw_syscalls", "sys_enter", ("id", "args[0]"), only),
            tf.EventSpec("raw_syscalls", "sys_exit", ("id", "ret"), only),
        ]
    return specs


@dataclass
class TracefsRun:
    """What a tracefs run gives besides its result: the events and the analysis that
    the timeline outputs (Perfetto, longest waits) are drawn from."""

    result: TraceResult
    capture: tf.Capture
    tasks: tl.Tasks
    slices: tl.OnCpu | None
    occupancy: tl.Occupancy | None = None
    paths: dict[tuple[int, int], str] = dataclasses.field(default_factory=dict)
    calls: tl.Calls | None = None
    machine: str | None = None  # the recording machine (its syscall numbers)
    # What was read around the events (diagnose, record): the window, cgroups, samples.
    around: Observation | None = None

    def events(self, machine: str | None = None) -> list[TraceEvent]:
        """The original document's per-event lines (--events), in time order, from the
        whole run: the cpu monitor's on/off CPU, the io monitor's reads and writes with
        their results, the process monitor's events."""
        out: list[TraceEvent] = []
        chosen = set(self.result.monitors)
        tasks = self.tasks
        if self.slices is not None:
            s = self.slices
            for tid, start, end in zip(
                s.tid.tolist(), s.start.tolist(), s.end.tolist(), strict=True
            ):
                pid, comm = tasks.pid_of(tid), tasks.comm_of(tid)
                out.append(SchedEvent(start, True, pid, tid, comm))
                out.append(SchedEvent(end, False, pid, tid, comm, ran_ns=end - start))
        if "io" in chosen and self.calls is not None:
            names = tl.io_numbers(machine)
            c = self.calls
            for tid, nr, ts, ret in zip(
                c.tid.tolist(), c.nr.tolist(), c.exit.tolist(), c.ret.tolist(), strict=True
            ):
                op = names.get(nr)
                if ts >= 0 and op in READS + WRITES:
                    out.append(IoEvent(ts, tasks.pid_of(tid), op, ret, tasks.comm_of(tid)))
        if "process" in chosen:
            out.extend(self.result.process)
        out.sort(key=lambda ev: ev.ts_ns)
        return out

    def timeline(self) -> Timeline:
        """The cpu monitor's events as a timeline (needs the cpu monitor)."""
        if self.slices is None or self.occupancy is None:
            raise ContendError("the timeline needs the cpu monitor")
        return tl.build_timeline(self.capture, self.tasks, self.slices, self.occupancy)


def _initial(opts: TraceOptions, launched: Launched | None, fs: ProcFS) -> dict[int, int] | None:
    """tid -> tgid of the target's tasks at the start; None: the whole system."""
    target = opts.target
    pids: list[int]
    if launched is not None:
        return {launched.proc.pid: launched.proc.pid}
    if target.pids:
        pids = list(target.pids)
    elif target.comm is not None:
        pids = fs.pids_with_comm(target.comm)
    elif target.cgroup is not None:
        pids = _cgroup_pids(target.cgroup)
    else:
        return None
    initial = {tid: pid for pid in pids for tid in fs.tids(pid)}
    if not initial and target.comm is None:
        # An empty set_event_pid would record every task of the machine.
        raise ContendError(f"{target.describe()}: no process to trace")
    return initial


def _cgroup_pids(cgroup: Path) -> list[int]:
    """The processes of a cgroup and of the cgroups below it (a container's parent
    cgroup may hold none itself)."""
    pids: list[int] = []
    for directory, _, _ in os.walk(cgroup):
        try:
            pids += [int(p) for p in Path(directory, "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            continue
    return pids


def _resolve_opens(tracer: tf.Tracer, paths: dict[tuple[int, int], str], seen: list[int]) -> None:
    """Paths of files opened since the last batch, read from /proc/TID/fd while the
    task lives: syscall events carry the filename as a user pointer only. An fd that was
    closed or opened again later in the batch names another file by now: left out."""
    chunks = tracer.chunks("sys_exit")
    enters = tracer.chunks("sys_enter")
    names = tl.io_numbers()
    opens = np.fromiter((nr for nr, n in names.items() if n in ("open", "openat")), np.int64)
    closes = np.fromiter((nr for nr, n in names.items() if n == "close"), np.int64)
    owner: dict[int, int] = {}

    def tgid(tid: int) -> int:
        if tid not in owner:
            who = thread_owner(tid)
            owner[tid] = who[0] if who else tid
        return owner[tid]

    for chunk in chunks[seen[0] :]:
        ids, rets = chunk["id"].astype(np.int64), chunk["ret"].astype(np.int64)
        tids, stamps = chunk["common_pid"], chunk["ts"]
        hit = np.isin(ids, opens) & (rets >= 0)
        # The last open of each (process, fd) in the batch, and when each fd was closed.
        last: dict[tuple[int, int], tuple[int, int]] = {}
        for tid, fd, ts in zip(
            tids[hit].tolist(), rets[hit].tolist(), stamps[hit].tolist(), strict=True
        ):
            last[(tgid(tid), fd)] = (tid, ts)
        closed: dict[tuple[int, int], int] = {}
        for ech in enters[seen[1] :]:
            shut = np.isin(ech["id"].astype(np.int64), closes)
            for tid, fd, ts in zip(
                ech["common_pid"][shut].tolist(),
                ech["args[0]"][shut].astype(np.int64).tolist(),
                ech["ts"][shut].tolist(),
                strict=True,
            ):
                key = (tgid(tid), fd)
                closed[key] = max(closed.get(key, ts), ts)
        for (_, fd), (tid, ts) in last.items():
            if closed.get((tgid(tid), fd), -1) > ts:
                continue
            try:
                path = os.readlink(f"/proc/{tid}/fd/{fd}")
            except OSError:
                continue
            # Keyed by the enter: the latest enter of this thread before the exit.
            for ech in reversed(enters):
                mine = (ech["common_pid"] == tid) & (ech["ts"].astype(np.int64) <= ts)
                if np.any(mine):
                    paths[(tid, int(ech["ts"][mine][-1]))] = path
                    break
    seen[0], seen[1] = len(chunks), len(enters)


def read_interval(elapsed: float, fill: float) -> float:
    """The wait before the next read: `fill` of the fullest buffer came in `elapsed`."""
    if fill <= 0:
        return MAX_READ_INTERVAL_S
    return min(MAX_READ_INTERVAL_S, max(READ_INTERVAL_S, elapsed * FILL_TARGET / fill))


def _tasks(initial: dict[int, int] | None, comm: str | None) -> tl.Tasks:
    """Who the target is at the start (None: everyone); the analysis grows it."""
    return tl.Tasks(
        tgid=dict(initial or {}),
        targets=set(initial or {}) if comm is None else set(),  # by name: each thread's own
        everyone=initial is None,
        resolve=thread_owner,
        by_comm=comm,
    )


@contextlib.contextmanager
def _draining(tracer: tf.Tracer) -> Iterator[None]:
    """Meanwhile, a thread reads the buffers every READ_INTERVAL_S."""
    halt = threading.Event()

    def drain() -> None:
        while not halt.wait(READ_INTERVAL_S):
            tracer.poll()

    thread = threading.Thread(target=drain, name="contend-tracefs-drain", daemon=True)
    thread.start()
    try:
        yield
    finally:
        halt.set()
        thread.join()


def run_tracefs(opts: TraceOptions, wait: Callable[[float], None] = time.sleep) -> TracefsRun:
    if opts.target.comm is not None:
        ftrace_string(opts.target.comm)  # refused before anything touches the kernel
    machine = platform.machine()
    buffer_kb = (opts.buffer_pages or tf.DEFAULT_BUFFER_KB // PAGE_KB) * PAGE_KB
    tracer = tf.Tracer(event_specs(opts.monitors, machine), buffer_kb=buffer_kb)
    fs = ProcFS()
    launched = launch(opts.target.command) if opts.target.command else None
    notes: list[str] = []
    exit_status: int | None = None
    paths: dict[tuple[int, int], str] = {}
    seen = [0, 0]  # the sys_exit and sys_enter batches whose opens were resolved
    cpu0 = time.process_time()
    try:
        initial = _initial(opts, launched, fs)
        comm = opts.target.comm
        # --comm: matched in the kernel on every event; else the tasks and their children.
        tracer.open(follow=None if initial is None or comm else list(initial), comm=comm)
        started = time.monotonic()
        tracer.start()
        if launched is not None:
            launched.release()
        if opts.on_started is not None:
            opts.on_started(launched.proc.pid if launched is not None else None)
        deadline = started + opts.duration_s if opts.duration_s else None
        last_read = next_read = started
        every = opts.interval_s if opts.on_interval is not None else None
        next_summary = started + every if every else None
        try:
            while not trace_over(opts, launched, deadline, notes):
                wait(READ_INTERVAL_S)
                now = time.monotonic()
                summary = next_summary is not None and now >= next_summary
                if now < next_read and not summary:
                    continue
                tracer.poll()
                if "io" in opts.monitors:
                    _resolve_opens(tracer, paths, seen)
                else:
                    next_read = now + read_interval(now - last_read, tracer.fill)
                last_read = now
                if summary and every and opts.on_interval is not None:
                    # The summary so far: everything decoded, analysed as at the end,
                    # while a thread keeps draining the buffers (it can take seconds).
                    snap = tracer.snapshot()
                    with _draining(tracer):
                        so_far = analyse(
                            opts.monitors,
                            snap,
                            _tasks(initial, opts.target.comm),
                            dict(paths),
                            machine,
                        )
                    opts.on_interval(
                        dataclasses.replace(
                            so_far.result,
                            target=opts.target.describe(),
                            duration_s=time.monotonic() - started,
                        )
                    )
                    while next_summary is not None and next_summary <= time.monotonic():
                        next_summary += every
        except (KeyboardInterrupt, Terminated):
            notes.append("stopped by a signal before the end")
        ended = time.monotonic()
        if opts.on_stopping is not None:
            opts.on_stopping()
        capture = tracer.finish()
        reading_cpu_s = time.process_time() - cpu0
    finally:
        try:
            tracer.close()
        finally:
            if launched is not None:
                exit_status = launched.finish()
    run = analyse(opts.monitors, capture, _tasks(initial, opts.target.comm), paths, machine)
    cpu_s = time.process_time() - cpu0
    notes.append(
        f"tracefs: tracer CPU {reading_cpu_s:.2f} s setting up, reading and decoding, "
        f"{cpu_s - reading_cpu_s:.2f} s analysing"
    )
    if opts.target.system_wide:
        notes.append("no target given: the whole system was traced")
    if opts.target.comm is not None:
        notes.append(
            "tracefs: --comm is matched in the kernel on every event (ftrace filters), as "
            "bpftrace's comm == does: processes of that name started later are in, children "
            "renamed by exec are not"
        )
    run.paths = paths
    run.result = dataclasses.replace(
        run.result,
        target=opts.target.describe(),
        duration_s=ended - started,
        overhead=Overhead(tracer_cpu_s=cpu_s, events=capture.records),
        notes=(*notes, *run.result.notes),
        exit_status=exit_status,
    )
    return run


def analyse(
    monitors: tuple[str, ...],
    capture: tf.Capture,
    tasks: tl.Tasks,
    paths: dict[tuple[int, int], str] | None = None,
    machine: str | None = None,
) -> TracefsRun:
    """Events to a TraceResult (the same code path for a live run and a saved session)."""
    # The analysis's temporaries: reused, not fresh pages (not while reading: measured
    # slower there).
    with tl.reusing_freed_memory():
        return _analyse(monitors, capture, tasks, paths, machine)


def _analyse(
    monitors: tuple[str, ...],
    capture: tf.Capture,
    tasks: tl.Tasks,
    paths: dict[tuple[int, int], str] | None,
    machine: str | None,
) -> TracefsRun:
    chosen = set(monitors)
    tl.learn_tasks(capture, tasks)
    notes: list[str] = []
    calls = tl.pair_calls(capture, tasks)
    sys_rows = (
        tl.syscall_rows(calls, tasks, tl.exited_tids(capture), machine)
        if "syscalls" in chosen
        else []
    )
    slices = None
    occ = None
    longest: list[WaitRow] = []
    behind: list[Occupant] = []
    cpu_rows: list[CpuRow] = []
    preempt: list[PreemptorRow] = []
    if "cpu" in chosen:
        slices = tl.on_cpu(capture, tasks)
        cpu_rows, preempt = tl.cpu_rows(capture, tasks, slices)
        occ = tl.occupancy(capture, slices)
        longest, behind = tl.waits_behind(slices, occ, tasks)
        if slices.inferred:
            rest = slices.inferred - slices.inferred_exactly
            notes.append(
                f"cpu: {slices.inferred} slices began with a switch that ftrace did not "
                f"record (from idle); {slices.inferred_exactly} start where their first "
                f"sched_stat_runtime says, {rest} at the latest wakeup or switch before them"
            )
    io_rows: list[IoRow] = []
    file_rows: list[FileRow] = []
    if "io" in chosen:
        io_rows, file_rows, unresolved = tl.io_rows(calls, tasks, paths or {}, machine)
        if unresolved:
            notes.append(
                f"io: {unresolved} opened files have no path (syscall events carry only a "
                "pointer; paths are read from /proc/PID/fd while the process lives)"
            )
    if capture.lost_events:
        notes.append(f"{capture.lost_events} events were lost: results are incomplete")
    lost = ", ".join(f"cpu{c} {n}" for c, n in sorted(capture.lost_by_cpu.items()))
    notes.append(f"tracefs: events lost per CPU: {lost}")
    result = TraceResult(
        backend="tracefs",
        target="",
        monitors=tuple(m for m in MONITORS if m in chosen),
        duration_s=0.0,
        lost_events=capture.lost_events,
        overhead=Overhead(tracer_cpu_s=None, events=capture.records),
        syscalls=tuple(sys_rows),
        cpu=tuple(cpu_rows),
        preemptors=tuple(preempt),
        process=tuple(tl.process_events(capture, tasks, calls, machine))
        if "process" in chosen
        else (),
        process_syscalls=tuple(tl_totals(sys_rows) if sys_rows else tl.syscall_totals(calls, tasks))
        if "process" in chosen
        else (),
        io=tuple(io_rows),
        files=tuple(file_rows),
        notes=tuple(notes),
        syscall_latency="exact",
        lost_by_cpu=tuple(capture.lost_by_cpu[c] for c in sorted(capture.lost_by_cpu)),
        longest_waits=tuple(longest),
        waited_behind=tuple(behind),
    )
    return TracefsRun(result, capture, tasks, slices, occ, calls=calls, machine=machine)


def tl_totals(rows: list[SyscallRow]) -> list[tuple[int, str, int]]:
    counts: dict[tuple[int, str], int] = {}
    for r in rows:
        counts[(r.pid, r.comm)] = counts.get((r.pid, r.comm), 0) + r.count
    return sorted(((p, c, n) for (p, c), n in counts.items()), key=lambda r: (-r[2], r[0]))


def check_available() -> None:
    ok, why = tf.available()
    if not ok:
        raise ContendError(f"--backend tracefs: {why}")


class Recorder:
    """A tracefs capture of some processes (every thread of them, and every task they
    create: event-fork) running beside other work: a thread drains the buffers every
    `READ_INTERVAL_S` until `halt()`; `stop()` then decodes what is left and analyses it.
    `close()` (idempotent, in a ``finally``) removes the instance whatever happened."""

    def __init__(self, monitors: tuple[str, ...], buffer_kb: int = tf.DEFAULT_BUFFER_KB) -> None:
        self.monitors = monitors
        self.machine = platform.machine()
        self.tracer = tf.Tracer(event_specs(monitors, self.machine), buffer_kb=buffer_kb)
        self.initial: dict[int, int] = {}
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._thread_cpu_s = 0.0
        self._started = 0.0
        self._ended: float | None = None

    def start(self, pids: Iterable[int]) -> None:
        """Follow these processes (all their threads now, and what they create)."""
        fs = ProcFS()
        self.initial = {tid: pid for pid in pids for tid in fs.tids(pid)}
        if not self.initial:
            raise ContendError("tracefs: no running process to record")
        self.tracer.open(follow=list(self.initial))
        self._started = time.monotonic()
        self.tracer.start()
        self._thread = threading.Thread(target=self._drain, name="contend-tracefs", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            while not self._halt.wait(READ_INTERVAL_S):
                self.tracer.poll()
        except BaseException as e:  # handed to stop(): the main thread reports it
            self._error = e
        finally:
            self._thread_cpu_s = time.thread_time()

    def halt(self) -> None:
        """Stop recording now (what is in the buffers is kept for `stop()`)."""
        if self._ended is None:
            self._ended = time.monotonic()
        self._halt.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self.tracer.instance.stop()
        except ContendError:
            pass  # never opened, or already given back: nothing records

    def stop(self, target: str) -> TracefsRun:
        """Halt, drain, remove the instance and analyse (while the tasks still live, so
        that /proc names the ones the events did not)."""
        self.halt()
        if self._error is not None:
            raise self._error
        cpu0 = time.thread_time()
        try:
            capture = self.tracer.finish()
        finally:
            self.tracer.close()
        tasks = tl.Tasks(tgid=dict(self.initial), targets=set(self.initial), resolve=thread_owner)
        run = analyse(self.monitors, capture, tasks, {}, self.machine)
        cpu_s = self._thread_cpu_s + time.thread_time() - cpu0
        ended = self._ended if self._ended is not None else time.monotonic()
        run.result = dataclasses.replace(
            run.result,
            target=target,
            duration_s=ended - self._started,
            overhead=Overhead(tracer_cpu_s=cpu_s, events=capture.records),
        )
        return run

    def close(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.tracer.close()
