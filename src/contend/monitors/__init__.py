"""The four monitors of the original document, run together on one backend.

`run_trace()` builds one bpftrace program from the chosen monitors' fragments, starts
it, launches the target command if there is one (held at a gate until every probe is
attached, so it is traced from its first instruction), waits for the end (duration,
Ctrl-C, SIGTERM or the command's exit), stops the tracer and turns its maps into a
`TraceResult`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from contend.collect import bpftrace as bt
from contend.collect.launch import Launched, launch
from contend.collect.procfs import ProcFS
from contend.errors import Terminated
from contend.model import Overhead, ProcessEvent, TraceEvent, TraceResult
from contend.monitors import breakdown, cpu, io, process, syscalls
from contend.target import Target

MONITORS = ("syscalls", "cpu", "process", "io")


@dataclass
class TraceOptions:
    monitors: tuple[str, ...]
    target: Target
    duration_s: float | None = None
    events: bool = False
    buffer_pages: int | None = None  # perf ring buffer pages per CPU for events
    latency: str = "exact"  # syscalls: "exact" (every call timed) or "sampled"
    interval_s: float | None = None
    on_interval: Callable[[TraceResult], None] | None = None  # the summary so far
    on_event: Callable[[TraceEvent], None] | None = None  # --events, as they arrive
    # Told once tracing runs (with the launched command's pid, if any), and once more
    # just before the tracer stops: what runs beside the trace (diagnose's sampling).
    on_started: Callable[[int | None], None] | None = None
    on_stopping: Callable[[], None] | None = None


def _tids_of(pids: list[int], fs: ProcFS) -> dict[int, int]:
    return {tid: pid for pid in pids for tid in fs.tids(pid)}


def build_program(opts: TraceOptions, initial_pids: tuple[int, ...] = ()) -> bt.Program:
    target = opts.target
    fs = ProcFS()
    pred = bt.predicate_for(target, initial_pids)
    program = bt.Program(pred)
    chosen = set(opts.monitors)
    if opts.interval_s is not None:
        program.interval_ms = max(int(opts.interval_s * 1000), 10)
    if "syscalls" in chosen:
        if opts.latency == "sampled":
            program.fragments.append(syscalls.sampled_fragment(pred))
            program.internal_maps.extend(syscalls.SAMPLED_INTERNAL_MAPS)
            program.result_maps.extend(syscalls.SAMPLED_RESULT_MAPS)
        else:
            program.fragments.append(syscalls.fragment(pred))
            program.internal_maps.extend(syscalls.INTERNAL_MAPS)
            program.result_maps.extend(syscalls.RESULT_MAPS)
    # The target's processes now: their threads are seeded into the programs' maps.
    known: list[int] = list(target.pids) or list(initial_pids)
    if chosen & {"cpu", "breakdown"}:
        if target.comm is not None:
            known = fs.pids_with_comm(target.comm)
        elif target.cgroup is not None and not known:
            known = _cgroup_pids(target)
    if "cpu" in chosen:
        program.begin.append(cpu.seed(_tids_of(known, fs)))
        program.fragments.append(cpu.fragment(pred, events=opts.events))
        program.internal_maps.extend(cpu.INTERNAL_MAPS)
        program.result_maps.extend(cpu.RESULT_MAPS)
    if "breakdown" in chosen:
        # Threads asleep now: their sleep counts from the start, in the syscall they are in.
        # Threads running or runnable now: their first event says which.
        sleeping: dict[int, tuple[int, int]] = {}
        awake: dict[int, int] = {}
        for pid in known:
            for tid in fs.tids(pid):
                nr = fs.blocked_in(pid, tid)
                if nr is not None:
                    sleeping[tid] = (pid, nr)
                else:
                    awake[tid] = pid
        program.begin.append(breakdown.seed(sleeping, awake))
        program.fragments.append(breakdown.fragment(pred))
        program.internal_maps.extend(breakdown.INTERNAL_MAPS)
        program.result_maps.extend(breakdown.RESULT_MAPS)
    if "process" in chosen:
        program.fragments.append(process.fragment(pred, count_syscalls="syscalls" not in chosen))
        if "syscalls" not in chosen:
            program.result_maps.append("@proc_sys")
    if "io" in chosen:
        program.fragments.append(io.fragment(pred, events=opts.events))
        program.internal_maps.extend(io.INTERNAL_MAPS)
        program.result_maps.extend(io.RESULT_MAPS)
    return program


def trace_over(
    opts: TraceOptions, launched: Launched | None, deadline: float | None, notes: list[str]
) -> bool:
    """Is the trace over: the launched command exited, the duration passed, or the
    watched target (a container's init) is gone (said in `notes`)?"""
    if launched is not None and launched.proc.poll() is not None:
        return True
    if deadline is not None and time.monotonic() >= deadline:
        return True
    watched = opts.target.watch_pid
    if watched is not None and not os.path.exists(f"/proc/{watched}"):
        notes.append(f"the target stopped mid-trace (pid {watched} exited)")
        return True
    return False


def thread_owner(tid: int) -> tuple[int, str] | None:
    """(pid, comm) of a live thread."""
    return ProcFS().owner(tid)


def _cgroup_pids(target: Target) -> list[int]:
    assert target.cgroup is not None
    try:
        return [int(p) for p in (target.cgroup / "cgroup.procs").read_text().split()]
    except OSError:
        return []


@dataclass
class _Collector:
    """Turns the tracer's printf lines into events: process events are kept for the
    result; with --events every event also goes to `on_event` as it arrives."""

    opts: TraceOptions
    events: list[ProcessEvent] = field(default_factory=list)
    output: bt.Output | None = None
    started: float = 0.0

    def __call__(self, line: str) -> None:
        if line.strip() == bt.INTERVAL:
            if self.opts.on_interval is not None and self.output is not None:
                elapsed = time.monotonic() - self.started
                self.opts.on_interval(
                    _result(self.opts, self.output, self, elapsed, None, None, [])
                )
            return
        proc_ev = process.parse_event(line)
        ev: TraceEvent | None = proc_ev
        if proc_ev is not None:
            self.events.append(proc_ev)
        else:
            ev = io.parse_event(line) or cpu.parse_event(line)
        if ev is not None and self.opts.events and self.opts.on_event is not None:
            self.opts.on_event(ev)


def run_trace(opts: TraceOptions, wait: Callable[[float], None] = time.sleep) -> TraceResult:
    return run_trace_output(opts, wait)[0]


def run_trace_output(
    opts: TraceOptions, wait: Callable[[float], None] = time.sleep
) -> tuple[TraceResult, bt.Output]:
    """run_trace, and the tracer's maps as they were at its end."""
    launched = launch(opts.target.command) if opts.target.command else None
    try:
        initial: tuple[int, ...] = (launched.proc.pid,) if launched else ()
        if opts.target.cgroup is not None and opts.target.cgroup_id is None:
            initial = tuple(_cgroup_pids(opts.target))
        collector = _Collector(opts)
        tracer = bt.Bpftrace(
            build_program(opts, initial), on_printf=collector, buffer_pages=opts.buffer_pages
        )
    except BaseException:
        if launched is not None:
            launched.abort()
        raise
    collector.output = tracer.output
    exit_status: int | None = None
    notes: list[str] = []
    started = time.monotonic()
    try:
        tracer.start()
        started = collector.started = time.monotonic()
        if launched is not None:
            launched.release()
        if opts.on_started is not None:
            opts.on_started(launched.proc.pid if launched is not None else None)
        deadline = started + opts.duration_s if opts.duration_s else None
        try:
            while not trace_over(opts, launched, deadline, notes):
                wait(0.05)
        except (KeyboardInterrupt, Terminated):
            # Ctrl-C or SIGTERM ends the trace, as with bpftrace and perf: report it.
            notes.append("stopped by a signal before the end")
    finally:
        ended = time.monotonic()
        try:
            try:
                if opts.on_stopping is not None:
                    opts.on_stopping()
            finally:
                out = tracer.stop()
            # Who owns each call still in flight: asked now, while those threads live.
            owners = {int(t): thread_owner(int(t)) for t in out.maps.get("@contend_sys_start", {})}
        finally:
            # Whatever failed above, the launched command does not outlive the run.
            if launched is not None:
                exit_status = launched.finish()
    if opts.target.system_wide:
        notes.append("no target given: the whole system was traced")
    if out.lost_events:
        notes.append(f"{out.lost_events} events were lost: results are incomplete")
    if out.errors:
        notes.append(f"{len(out.errors)} tracer output records not understood: {out.errors[0]}")
    if out.killed_after_s is not None:
        notes.append(f"bpftrace had not ended {out.killed_after_s:g} s after SIGINT and was"
                     " killed: the counts it prints at its exit are missing")  # fmt: skip
    result = _result(
        opts, out, collector, ended - started, tracer.tracer_cpu_s, exit_status, notes, owners
    )
    return result, out


def _result(
    opts: TraceOptions,
    out: bt.Output,
    collector: _Collector,
    duration_s: float,
    tracer_cpu_s: float | None,
    exit_status: int | None,
    notes: list[str],
    owners: dict[int, tuple[int, str] | None] | None = None,
) -> TraceResult:
    chosen = set(opts.monitors)
    resolve = owners.get if owners is not None else thread_owner
    sys_rows = syscalls.rows(out, resolve=resolve) if "syscalls" in chosen else []
    cpu_rows, preempt, fairness = cpu.rows(out) if "cpu" in chosen else ([], [], None)
    io_rows, file_rows = io.rows(out) if "io" in chosen else ([], [])
    events = (
        sum(r.count for r in sys_rows)
        + sum(r.slices for r in cpu_rows if r.tid)
        + sum(r.count for r in io_rows)
    )
    return TraceResult(
        backend="bpftrace",
        target=opts.target.describe(),
        monitors=tuple(m for m in MONITORS if m in chosen),
        duration_s=duration_s,
        lost_events=out.lost_events,
        overhead=Overhead(tracer_cpu_s=tracer_cpu_s, events=events + len(collector.events)),
        syscalls=tuple(sys_rows),
        cpu=tuple(cpu_rows),
        preemptors=tuple(preempt),
        fairness_index=fairness,
        process=tuple(sorted(collector.events, key=lambda e: e.ts_ns)),
        process_syscalls=tuple(process.syscall_totals(out, sys_rows))
        if "process" in chosen
        else (),
        io=tuple(io_rows),
        files=tuple(file_rows),
        notes=tuple(notes),
        exit_status=exit_status,
        syscall_latency=(
            f"sampled 1/{syscalls.SAMPLE_EVERY}" if opts.latency == "sampled" else "exact"
        ),
    )
