"""A `TraceResult` from procfs samples: what /proc allows, the rest marked unavailable."""

from __future__ import annotations

from collections import defaultdict

from contend.analysis.metrics import CLOCK_TICKS_DEFAULT, busy_fairness, io_deltas, task_deltas
from contend.model import (
    CpuRow,
    IoRow,
    Overhead,
    RunQueueLatency,
    SampledTrace,
    TraceResult,
)


def trace_result(trace: SampledTrace, monitors: tuple[str, ...], target: str) -> TraceResult:
    deltas = task_deltas(trace.snapshots, CLOCK_TICKS_DEFAULT)
    cpu_rows = []
    for d in sorted(deltas, key=lambda d: (-(d.on_cpu_ns or 0), d.pid, d.tid)):
        slices = d.slices or 0
        wait = d.run_queue_wait_ns
        cpu_rows.append(
            CpuRow(
                pid=d.pid,
                tid=d.tid,
                comm=d.comm,
                on_cpu_ns=d.cpu_ns,
                slices=slices,
                voluntary_switches=d.voluntary_switches,
                involuntary_switches=d.involuntary_switches,
                wakeups=None,
                run_queue_latency=RunQueueLatency(
                    count=slices,
                    avg_ns=wait / slices if wait is not None and slices else None,
                    p50_ns=None,
                    p99_ns=None,
                    hist=(),
                ),
                slice_hist=(),
            )
        )
    io_rows = []
    per_process: dict[tuple[int, str], int] = defaultdict(int)
    for grew in io_deltas(trace.snapshots):
        io_rows.append(IoRow(grew.pid, grew.comm, "read-like", grew.syscr, grew.rchar))
        io_rows.append(IoRow(grew.pid, grew.comm, "write-like", grew.syscw, grew.wchar))
        per_process[(grew.pid, grew.comm)] += grew.syscr + grew.syscw
    io_rows.sort(key=lambda r: (-r.count, r.pid, r.op))
    notes = list(trace.notes)
    if "syscalls" in monitors:
        notes.append(
            "syscalls: unavailable on procfs (needs root and bpftrace); read- and write-like "
            "call counts from /proc/PID/io are under io"
        )
    if "process" in monitors:
        notes.append("process: syscall counts are read- and write-like calls only (/proc/PID/io)")
    chosen = set(monitors)
    return TraceResult(
        backend="procfs",
        target=target,
        monitors=monitors,
        duration_s=trace.duration_s,
        lost_events=0,
        overhead=Overhead(tracer_cpu_s=trace.tracer_cpu_s, events=len(trace.snapshots)),
        cpu=tuple(cpu_rows) if "cpu" in chosen else (),
        fairness_index=busy_fairness([float(r.on_cpu_ns) for r in cpu_rows])
        if "cpu" in chosen
        else None,
        process=trace.events if "process" in chosen else (),
        process_syscalls=tuple(
            sorted(((p, c, n) for (p, c), n in per_process.items()), key=lambda r: (-r[2], r[0]))
        )
        if "process" in chosen
        else (),
        io=tuple(io_rows) if "io" in chosen else (),
        notes=tuple(notes),
        exit_status=trace.exit_status,
    )
