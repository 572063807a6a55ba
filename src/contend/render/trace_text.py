"""`contend trace` as text: the original document's output blocks, as aligned tables
sorted by count, with the columns a performance engineer expects beside them."""

from __future__ import annotations

import time
from collections.abc import Sequence

from contend.model import HistBucket, IoEvent, ProcessEvent, SchedEvent, TraceEvent, TraceResult

# bpftrace's nsecs is CLOCK_MONOTONIC; the original document prints wall-clock time.
_MONOTONIC_TO_WALL_NS = time.time_ns() - time.monotonic_ns()


def wall(monotonic_ns: int) -> str:
    return time.strftime(
        "%Y-%m-%d %H:%M:%S", time.localtime((monotonic_ns + _MONOTONIC_TO_WALL_NS) / 1e9)
    )


def format_event(ev: TraceEvent) -> str:
    """One event in the original document's per-event formats."""
    stamp = wall(ev.ts_ns)
    if isinstance(ev, SchedEvent):
        if ev.on_cpu:
            return f"[{stamp}] {ev.comm} (PID:{ev.pid}) on CPU"
        return f"[{stamp}] {ev.comm} (PID:{ev.pid}) off CPU after {ev.ran_ns} nanoseconds"
    if isinstance(ev, IoEvent):
        return f"[{stamp}] {ev.comm} (PID:{ev.pid}) -> {ev.op}()\n       Result: {ev.result} bytes"
    assert isinstance(ev, ProcessEvent)
    if ev.event == "fork":
        return f"[{stamp}] New process: {ev.comm} (PID:{ev.pid}, PPID:{ev.ppid})"
    if ev.event == "thread":
        return f"[{stamp}] New thread created in {ev.comm} (PID:{ev.pid}, TID:{ev.tid})"
    if ev.event == "exec":
        return f"[{stamp}] Exec: {ev.comm} (PID:{ev.pid})"
    if ev.signal:
        how = f"signal {ev.signal}"
    elif ev.exit_code is None:
        how = "exit code unknown"
    else:
        how = f"exit code {ev.exit_code}"
    what = "Process" if ev.pid == ev.tid else "Thread"
    return f"[{stamp}] {what} exit: {ev.comm} (PID:{ev.pid}, TID:{ev.tid}) {how}"


def _table(rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> list[str]:
    if len(rows) <= 1:
        return ["(none)"]
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    out = []
    for r in cells:
        parts = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        out.append("  ".join(parts).rstrip())
    return out


def _ns(ns: float | None) -> str:
    return "-" if ns is None else f"{ns:.0f}"


def hist_lines(buckets: Sequence[HistBucket], unit: str, width: int = 40) -> list[str]:
    """bpftrace/DTrace-style log2 histogram: [low, high+1) bucket, count, bar."""
    nonzero = [b for b in buckets if b.count]
    if not nonzero:
        return ["  (no samples)"]
    first = buckets.index(nonzero[0])
    last = buckets.index(nonzero[-1])
    peak = max(b.count for b in nonzero)
    shown = buckets[first : last + 1]
    labels = [f"[{b.low}, {b.high + 1})" for b in shown]
    pad = max(len(label) for label in labels)
    lines = []
    for label, b in zip(labels, shown, strict=True):
        bar = "@" * round(width * b.count / peak) if b.count else ""
        lines.append(f"  {label:<{pad}} {unit} {b.count:>8} |{bar:<{width}}|")
    return lines


def render(result: TraceResult, event_lines: Sequence[str] = ()) -> str:
    out: list[str] = []
    head = (
        f"contend trace {' '.join(result.monitors)}: {result.target}, backend {result.backend}, "
        f"{result.duration_s:.2f} s"
    )
    out.append(head)
    for note in result.notes:
        out.append(f"note: {note}")
    out.extend(event_lines)

    if "syscalls" in result.monitors:
        out += ["", "=== System Calls Summary ==="]
        rows: list[list[object]] = [["Process", "PID", "Function", "Count", "Errors"]]
        rows += [[r.comm, r.pid, r.syscall, r.count, r.errors] for r in result.syscalls]
        out += _table(rows, right=(1, 3, 4))
        out += ["", "=== Average Execution Time (ns) ==="]
        if result.syscall_latency != "exact":
            out.append(
                f"(latency {result.syscall_latency}: that share of calls timed; "
                "counts and errors exact)"
            )
        timed = sorted(
            (r for r in result.syscalls if r.avg_ns is not None), key=lambda r: -(r.avg_ns or 0)
        )
        rows = [["Process", "PID", "Function", "Avg", "Max", "Total", "Kind"]]
        rows += [
            [r.comm, r.pid, r.syscall, _ns(r.avg_ns), r.max_ns, r.total_ns,
             "blocking" if r.blocking else ""]
            for r in timed
        ]  # fmt: skip
        out += _table(rows, right=(1, 3, 4, 5))
        work = [r for r in result.syscalls if not r.blocking and r.avg_ns is not None]
        calls = sum(r.total_ns / r.avg_ns for r in work if r.avg_ns)
        if calls:
            avg = sum(r.total_ns for r in work) / calls
            out.append(f"Average over non-blocking calls: {avg:.0f} ns ({calls:.0f} calls)")

    if "cpu" in result.monitors:
        out += ["", "=== CPU Scheduling Summary ==="]
        rows = [["Process", "PID", "TID", "On-CPU ms", "Slices", "Avg slice us", "Vol", "Invol",
                 "Wakeups", "Runq avg us"]]  # fmt: skip
        summary = [r for r in result.cpu if r.tid == 0]
        for r in [r for r in result.cpu if r.tid != 0] + summary:
            avg_slice = r.on_cpu_ns / r.slices / 1000 if r.slices else None
            rq = r.run_queue_latency.avg_ns
            rows.append(
                [r.comm, r.pid or "", r.tid or "", f"{r.on_cpu_ns / 1e6:.1f}", r.slices,
                 "-" if avg_slice is None else f"{avg_slice:.0f}", r.voluntary_switches,
                 r.involuntary_switches, "-" if r.wakeups is None else r.wakeups,
                 "-" if rq is None else f"{rq / 1000:.0f}"]
            )  # fmt: skip
        out += _table(rows, right=(1, 2, 3, 4, 5, 6, 7, 8, 9))
        if summary:
            s = summary[0]
            out += ["", "=== On-CPU slice length (us) ===", *hist_lines(s.slice_hist, "us")]
            latency = s.run_queue_latency
            out += ["", "=== Run-queue latency (us) ===", *hist_lines(latency.hist, "us")]
            if latency.p50_ns is not None:
                out.append(
                    f"  p50 <= {latency.p50_ns / 1000:.0f} us, "
                    f"p99 <= {(latency.p99_ns or 0) / 1000:.0f} us "
                    "(log2 bucket bounds)"
                )
        if result.preemptors:
            out += ["", "=== Preempted by ==="]
            out += _table(
                [["Process", "PID", "Count"]]
                + [[p.comm, p.pid, p.count] for p in result.preemptors],
                right=(1, 2),
            )
        if result.waited_behind:
            out += ["", "=== Who held the CPU while target threads waited ==="]
            out += _table(
                [["Process", "TID", "ms"]]
                + [[o.comm, o.tid, f"{o.ns / 1e6:.1f}"] for o in result.waited_behind],
                right=(1, 2),
            )
        if result.longest_waits:
            out += ["", "=== Longest run-queue waits ==="]
            rows = [["When", "Process", "PID", "TID", "CPU", "Wait us", "CPU held by (us)"]]
            for w in result.longest_waits:
                held = ", ".join(f"{o.comm} {o.tid} ({o.ns / 1000:.0f})" for o in w.ran) or "-"
                rows.append(
                    [f"{wall(w.ts_ns)}.{w.ts_ns % 1_000_000_000 // 1000:06d}", w.comm, w.pid,
                     w.tid, w.cpu, f"{w.wait_ns / 1000:.0f}", held]
                )  # fmt: skip
            out += _table(rows, right=(2, 3, 4, 5))
        if result.fairness_index is not None:
            out.append(
                f"CPU fairness (Jain) over the busy threads (>= 1% of the target's CPU): "
                f"{result.fairness_index:.2f}"
            )

    if "process" in result.monitors:
        out += [""] + [
            format_event(e) for e in result.process if e.event != "exit" or e.pid == e.tid
        ]
        out += ["", "=== Process Activity Summary ==="]
        out += _table([[comm, pid, n] for pid, comm, n in result.process_syscalls], right=(1, 2))

    if "io" in result.monitors:
        out += ["", "=== I/O Operations Summary ==="]
        rows = [["Process", "PID", "Op", "Count", "Bytes"]]
        rows += [[r.comm, r.pid, r.op, r.count, r.bytes] for r in result.io]
        out += _table(rows, right=(1, 3, 4))
        if result.files:
            out += ["", "=== Files (top by bytes) ==="]
            rows = [["PID", "Op", "Count", "Bytes", "Path"]]
            rows += [[f.pid, f.op, f.count, f.bytes, f.path] for f in result.files[:20]]
            out += _table(rows, right=(0, 2, 3))

    cost = result.overhead
    cpu_s = "n/a" if cost.tracer_cpu_s is None else f"{cost.tracer_cpu_s:.2f} s"
    if result.backend == "procfs":
        out += ["", f"cost: sampler CPU {cpu_s}, {cost.events} samples"]
    else:
        out += [
            "",
            f"cost: tracer CPU {cpu_s} (user space; in-kernel probe time is charged to the "
            f"traced tasks), {cost.events} events counted, {result.lost_events} lost",
        ]
        if result.lost_by_cpu:
            out.append(
                "lost per CPU: "
                + ", ".join(f"cpu{i} {n}" for i, n in enumerate(result.lost_by_cpu))
            )
    if result.exit_status is not None:
        out.append(f"command exited with status {result.exit_status}")
    return "\n".join(out) + "\n"
