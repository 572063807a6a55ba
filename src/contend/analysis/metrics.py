"""From an arm's snapshots and requests to its metrics (procfs-sampled data)."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from contend.analysis.thresholds import FAIRNESS_MIN_SHARE
from contend.model import (
    EXACT,
    SAMPLED,
    UNAVAILABLE,
    ArmMetrics,
    ArmRecord,
    LatencySummary,
    ProcessIO,
    RequestMetrics,
    RequestSample,
    SeriesPoint,
    Snapshot,
    SwitchRates,
    SyscallRow,
    TaskStat,
)

CLOCK_TICKS_DEFAULT = 100


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    frac = rank - low
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac)


def jain_index(values: Sequence[float]) -> float | None:
    """Jain's fairness index: (sum x)^2 / (n * sum x^2); 1 is perfectly even, 1/n is one
    taker of everything. None for no values or all zeros."""
    if not values:
        return None
    square_sum = sum(v * v for v in values)
    if square_sum == 0:
        return None
    return sum(values) ** 2 / (len(values) * square_sum)


def busy_fairness(cpu_times: Sequence[float]) -> float | None:
    """Jain's index over the tasks that used at least FAIRNESS_MIN_SHARE of the total, so
    that an idle parent or master process does not read as unfairness."""
    total = sum(cpu_times)
    return jain_index([t for t in cpu_times if total and t >= FAIRNESS_MIN_SHARE * total])


def request_metrics(requests: Sequence[RequestSample], duration_s: float) -> RequestMetrics:
    ok = sorted(r.latency_ns / 1e6 for r in requests if 200 <= r.status < 300)
    kinds: dict[str, int] = defaultdict(int)
    for r in requests:
        if not 200 <= r.status < 300:
            kinds[r.error or f"HTTP {r.status}"] += 1
    return RequestMetrics(
        count=len(requests),
        errors=sum(kinds.values()),
        throughput_per_s=len(ok) / duration_s if duration_s > 0 else None,
        latency_ms=LatencySummary(
            p50=percentile(ok, 50),
            p95=percentile(ok, 95),
            p99=percentile(ok, 99),
            max=ok[-1] if ok else None,
        ),
        error_kinds=dict(sorted(kinds.items())),
    )


@dataclass(frozen=True, slots=True)
class TaskDelta:
    """What one thread did within the window."""

    pid: int
    tid: int
    comm: str
    cpu_ns: int
    voluntary_switches: int
    involuntary_switches: int
    on_cpu_ns: int | None
    run_queue_wait_ns: int | None
    slices: int | None


def _sub(last: int | None, first: int | None) -> int | None:
    if last is None or first is None:
        return None
    return max(last - first, 0)


def task_deltas(snapshots: Sequence[Snapshot], clock_ticks: int) -> list[TaskDelta]:
    """Per-thread deltas between its first and last observation in the window.

    A thread absent from the first snapshot was born inside the window: all of its
    counters count. A thread that vanished keeps its last observed counters.
    """
    if not snapshots:
        return []
    first_seen: dict[tuple[int, int], TaskStat] = {t.key: t for t in snapshots[0].tasks}
    last_seen: dict[tuple[int, int], TaskStat] = {}
    for snap in snapshots:
        for t in snap.tasks:
            last_seen[t.key] = t
    out = []
    for key, last in last_seen.items():
        first = first_seen.get(key)
        if first is None:
            first = TaskStat(
                pid=last.pid, tid=last.tid, comm=last.comm, start_ticks=last.start_ticks,
                utime_ticks=0, stime_ticks=0, voluntary_switches=0, involuntary_switches=0,
                on_cpu_ns=0 if last.on_cpu_ns is not None else None,
                run_queue_wait_ns=0 if last.run_queue_wait_ns is not None else None,
                slices=0 if last.slices is not None else None,
            )  # fmt: skip
        on_cpu = _sub(last.on_cpu_ns, first.on_cpu_ns)
        ticks = (last.utime_ticks + last.stime_ticks) - (first.utime_ticks + first.stime_ticks)
        out.append(
            TaskDelta(
                pid=last.pid,
                tid=last.tid,
                comm=last.comm,
                # schedstat's ns clock is far finer than the 10 ms ticks of stat.
                cpu_ns=on_cpu
                if on_cpu is not None
                else max(ticks, 0) * 1_000_000_000 // clock_ticks,
                voluntary_switches=max(last.voluntary_switches - first.voluntary_switches, 0),
                involuntary_switches=max(last.involuntary_switches - first.involuntary_switches, 0),
                on_cpu_ns=on_cpu,
                run_queue_wait_ns=_sub(last.run_queue_wait_ns, first.run_queue_wait_ns),
                slices=_sub(last.slices, first.slices),
            )
        )
    return out


def io_deltas(snapshots: Sequence[Snapshot]) -> list[ProcessIO]:
    """Per process, what /proc/PID/io grew by within the window (a process born inside
    it counts from zero; one that exited keeps its last reading)."""
    first = {i.key: i for i in snapshots[0].io} if snapshots else {}
    last: dict[tuple[int, int], ProcessIO] = {}
    for snap in snapshots:
        for i in snap.io:
            last[i.key] = i
    out = []
    for key, io in last.items():
        base = first.get(key) or ProcessIO(io.pid, io.start_ticks, 0, 0)
        out.append(
            ProcessIO(
                pid=io.pid,
                start_ticks=io.start_ticks,
                syscr=io.syscr - base.syscr,
                syscw=io.syscw - base.syscw,
                rchar=io.rchar - base.rchar,
                wchar=io.wchar - base.wchar,
                comm=io.comm,
            )
        )
    return out


def io_syscalls(snapshots: Sequence[Snapshot], pids: set[int]) -> int | None:
    """syscr + syscw made by `pids` within the window, or None if never readable."""
    mine = [d for d in io_deltas(snapshots) if d.pid in pids]
    return sum(d.syscr + d.syscw for d in mine) if mine else None


def avg_latency_us(rows: Sequence[SyscallRow]) -> float | None:
    """Mean latency over every timed call (avg_ns weights each row by its timed calls)."""
    timed = sum(r.total_ns / r.avg_ns for r in rows if r.avg_ns)
    return sum(r.total_ns for r in rows) / timed / 1e3 if timed else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _sum_optional(values: Sequence[int | None]) -> int | None:
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def arm_metrics(arm: ArmRecord, clock_ticks: int = CLOCK_TICKS_DEFAULT) -> ArmMetrics:
    snaps = arm.snapshots
    window_s = (snaps[-1].t_ns - snaps[0].t_ns) / 1e9 if len(snaps) >= 2 else 0.0
    deltas = task_deltas(snaps, clock_ticks)
    role_of = arm.roles

    cpu_by_pid: dict[int, int] = defaultdict(int)
    cpu_by_role: dict[str, int] = defaultdict(int)
    for d in deltas:
        cpu_by_pid[d.pid] += d.cpu_ns
        cpu_by_role[role_of.get(d.pid, "other")] += d.cpu_ns
    total_cpu = sum(cpu_by_role.values())

    target = [d for d in deltas if role_of.get(d.pid) == arm.target_role]
    voluntary = sum(d.voluntary_switches for d in target)
    involuntary = sum(d.involuntary_switches for d in target)
    on_cpu = _sum_optional([d.on_cpu_ns for d in target])
    wait = _sum_optional([d.run_queue_wait_ns for d in target])
    slices = _sum_optional([d.slices for d in target])

    per_s = (lambda v: v / window_s) if window_s > 0 else (lambda v: None)

    first_cg, last_cg = (
        snaps[0].cgroup_cpu if snaps else None,
        snaps[-1].cgroup_cpu if snaps else None,
    )
    throttled_ratio = throttled_ms = None
    if first_cg is not None and last_cg is not None and arm.cpu_limit is not None:
        periods = last_cg.nr_periods - first_cg.nr_periods
        throttled_ratio = (
            (last_cg.nr_throttled - first_cg.nr_throttled) / periods if periods else 0.0
        )
        throttled_ms = per_s((last_cg.throttled_ns - first_cg.throttled_ns) / 1e6)

    def psi_pct(attr: str, which: str) -> float | None:
        a = getattr(snaps[0], attr) if snaps else None
        b = getattr(snaps[-1], attr) if snaps else None
        if a is None or b is None or window_s <= 0:
            return None
        x, y = getattr(a, which), getattr(b, which)
        if x is None or y is None:
            return None
        return 100.0 * float(y - x) / 1e6 / window_s

    target_pids = {pid for pid, role in role_of.items() if role == arm.target_role}
    io_calls = io_syscalls(snaps, target_pids)
    syscalls_per_s = per_s(io_calls) if io_calls is not None else None
    syscall_source = SAMPLED + ": /proc/PID/io syscr+syscw (read- and write-like calls only)"
    avg_all = avg_work = None
    latency_source = UNAVAILABLE + ": procfs has no syscall latency (needs bpftrace or tracefs)"
    if arm.syscalls is not None:
        rows = arm.syscalls
        avg_all = avg_latency_us([r for r in rows])
        avg_work = avg_latency_us([r for r in rows if not r.blocking])
        window = arm.syscall_window_s or arm.duration_s
        syscalls_per_s = sum(r.count for r in rows) / window if window else None
        syscall_source = EXACT + ": bpftrace raw_syscalls, every call of the target"
        latency_source = EXACT + ": bpftrace, sys_enter to sys_exit of every call"

    sources = {
        "context_switches_per_s": SAMPLED + ": /proc/PID/task/TID/status",
        "avg_on_cpu_slice_us": SAMPLED + ": /proc/PID/task/TID/schedstat",
        "run_queue_wait_per_slice_us": SAMPLED + ": /proc/PID/task/TID/schedstat",
        "avg_syscall_time_us": latency_source,
        "syscalls_per_s": syscall_source,
        "throttled_period_ratio": SAMPLED + ": cgroup cpu.stat",
        "psi_cpu_some_pct": SAMPLED + ": /proc/pressure/cpu total",
        "psi_cgroup_cpu_some_pct": SAMPLED + ": cgroup cpu.pressure total",
    }
    return ArmMetrics(
        duration_s=window_s,
        requests=request_metrics(arm.requests, arm.duration_s),
        context_switches_per_s=SwitchRates(per_s(voluntary), per_s(involuntary)),
        avg_on_cpu_slice_us=_ratio(on_cpu / 1e3 if on_cpu is not None else None, slices),
        run_queue_wait_per_slice_us=_ratio(wait / 1e3 if wait is not None else None, slices),
        wait_to_run_ratio=_ratio(wait, on_cpu),
        avg_syscall_time_us=avg_all,
        avg_nonblocking_syscall_time_us=avg_work,
        syscalls_per_s=syscalls_per_s,
        cpu_cores={role: ns / 1e9 / window_s for role, ns in sorted(cpu_by_role.items())}
        if window_s > 0
        else {},
        cpu_share={role: ns / total_cpu for role, ns in sorted(cpu_by_role.items())}
        if total_cpu
        else {},
        fairness_index=busy_fairness([float(ns) for ns in cpu_by_pid.values()]),
        throttled_period_ratio=throttled_ratio,
        throttled_ms_per_s=throttled_ms,
        psi_cpu_some_pct=psi_pct("psi_system", "some_us"),
        psi_cgroup_cpu_some_pct=psi_pct("psi_cgroup", "some_us"),
        psi_cgroup_cpu_full_pct=psi_pct("psi_cgroup", "full_us"),
        sources=sources,
    )


def series(arm: ArmRecord, clock_ticks: int = CLOCK_TICKS_DEFAULT) -> tuple[SeriesPoint, ...]:
    """Per sampling interval: CPUs used per role, throttled ms/s, CPU pressure (the
    sandbox's when known, else the system's)."""
    snaps = arm.snapshots
    points = []
    for prev, cur in itertools.pairwise(snaps):
        dt_s = (cur.t_ns - prev.t_ns) / 1e9
        if dt_s <= 0:
            continue
        cores: dict[str, float] = defaultdict(float)
        for d in task_deltas((prev, cur), clock_ticks):
            cores[arm.roles.get(d.pid, "other")] += d.cpu_ns / 1e9 / dt_s
        throttled = None
        if prev.cgroup_cpu is not None and cur.cgroup_cpu is not None:
            throttled = (cur.cgroup_cpu.throttled_ns - prev.cgroup_cpu.throttled_ns) / 1e6 / dt_s
        a, b = (
            (prev.psi_cgroup, cur.psi_cgroup)
            if prev.psi_cgroup is not None and cur.psi_cgroup is not None
            else (prev.psi_system, cur.psi_system)
        )
        some = full = None
        if a is not None and b is not None:
            some = 100.0 * (b.some_us - a.some_us) / 1e6 / dt_s
            if a.full_us is not None and b.full_us is not None:
                full = 100.0 * (b.full_us - a.full_us) / 1e6 / dt_s
        points.append(
            SeriesPoint(
                t_s=round((cur.t_ns - snaps[0].t_ns) / 1e9, 3),
                cpu_cores={role: round(c, 4) for role, c in sorted(cores.items())},
                throttled_ms_per_s=throttled,
                psi_some_pct=some,
                psi_full_pct=full,
            )
        )
    return tuple(points)
