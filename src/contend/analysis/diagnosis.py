"""The diagnosis: from what a backend observed of any target (`Observation`) to the
verdict, the time breakdown, the ranked causes, the cgroups, the document's indicators
(`diagnose`); and a lab arm's record to its result through the same breakdown and
causes (`analyse_arm`). Pure: no kernel access."""

from __future__ import annotations

import itertools
from dataclasses import replace

from contend.analysis import breakdown as bd
from contend.analysis import thresholds as th
from contend.analysis.metrics import (
    CLOCK_TICKS_DEFAULT,
    arm_metrics,
    avg_latency_us,
    busy_fairness,
    series,
    task_deltas,
)
from contend.analysis.verdict import verdict
from contend.model import (
    EXACT,
    SAMPLED,
    UNAVAILABLE,
    ArmMetrics,
    ArmRecord,
    ArmResult,
    Breakdown,
    Cause,
    CgroupReport,
    CgroupSample,
    Diagnosis,
    Indicator,
    Observation,
    Pressure,
    ProcessCpu,
    ProcessReport,
    SeriesPoint,
    Snapshot,
    TargetVerdict,
    ThreadReport,
    breakdown_states,
)


def throttling(m: ArmMetrics) -> bool:
    r = m.throttled_period_ratio
    return r is not None and r >= th.IDLE_WAIT_THROTTLING_PERIODS


def breakdowns(
    record: ArmRecord, m: ArmMetrics, clock_ticks: int = CLOCK_TICKS_DEFAULT
) -> tuple[Breakdown, ...]:
    """The target role as a whole, then each of its processes, then each thread that ran."""
    role = record.target_role
    pids = sorted(pid for pid, r in record.roles.items() if r == role)
    times = record.sched_times
    if times is not None:
        whole = bd.from_events(times, role, set(pids), throttling(m))
        per = [
            bd.from_events(times, f"{role}: {_comm(times, pid)} (PID {pid})", {pid}, throttling(m))
            for pid in sorted({t.pid for t in times.threads if t.pid in set(pids)})
        ]
        threads = [
            bd.from_events(
                times, f"{role}: {t.comm or '?'} (TID {t.tid})", {t.pid}, throttling(m), {t.tid}
            )
            for t in times.threads
            if t.pid in set(pids) and t.running_ns > 0
        ]
        return (whole, *(per if len(per) > 1 else []), *threads)
    snaps = record.snapshots
    if len(snaps) < 2:
        return ()
    window = snaps[-1].t_ns - snaps[0].t_ns
    rows = [
        (window, d.on_cpu_ns, d.run_queue_wait_ns)
        for d in task_deltas(snaps, clock_ticks)
        if d.pid in set(pids) and d.on_cpu_ns is not None and d.run_queue_wait_ns is not None
    ]
    return (bd.from_schedstat(rows, role),) if rows else ()


def _comm(times: object, pid: int) -> str:
    threads = getattr(times, "threads", ())
    for t in threads:
        if t.tid == pid and t.comm:
            return str(t.comm)
    return next((str(t.comm) for t in threads if t.pid == pid and t.comm), "?")


# The lab's sandbox and containers use the kernel's default CFS period (sched-bwc.rst).
PERIOD_US = 100_000


def observation_of_arm(
    record: ArmRecord, target: str, group: str = "the lab's sandbox"
) -> Observation:
    """A lab arm as any target's Observation: the target role's tasks, the arm's group
    (sandbox or container, with the arm's quota) read at its first and last sample, the
    other roles as names for what held the CPU (the lab's "noise")."""
    role = record.target_role
    mine = {pid for pid, r in record.roles.items() if r == role}
    snaps = tuple(
        replace(s, tasks=tuple(t for t in s.tasks if t.pid in mine)) for s in record.snapshots
    )
    cgroups: tuple[tuple[CgroupSample, CgroupSample], ...] = ()
    processes: tuple[tuple[ProcessCpu, ...], tuple[ProcessCpu, ...]] = ((), ())
    psi: tuple[Pressure | None, Pressure | None] = (None, None)
    if record.snapshots:
        first, last = record.snapshots[0], record.snapshots[-1]
        quota = round(record.cpu_limit * PERIOD_US) if record.cpu_limit is not None else None
        cgroups = tuple(
            (
                CgroupSample(
                    group, first.t_ns, first.cgroup_cpu, first.psi_cgroup, quota, PERIOD_US
                ),
                CgroupSample(group, last.t_ns, last.cgroup_cpu, last.psi_cgroup, quota, PERIOD_US),
            )
            for _ in (0,)
            if first.cgroup_cpu is not None or first.psi_cgroup is not None
        )
        processes = (_process_cpu(first), _process_cpu(last))
        psi = (first.psi_system, last.psi_system)
    return Observation(
        target=target,
        backend="bpftrace" if record.sched_times is not None else "procfs",
        start_ns=record.start_ns,
        end_ns=record.end_ns,
        sched_times=record.sched_times,
        snapshots=snaps,
        cgroups=cgroups,
        task_cgroups={pid: group for pid in record.roles if record.roles[pid] != "other"}
        if cgroups
        else {},
        psi_system=psi,
        syscalls=record.syscalls,
        roles={pid: r for pid, r in record.roles.items() if r != role},
        processes=processes,
    )


def _process_cpu(snap: Snapshot) -> tuple[ProcessCpu, ...]:
    cpu: dict[tuple[int, str], int] = {}
    start: dict[int, int] = {}
    for t in snap.tasks:
        key = (t.pid, t.comm if t.tid == t.pid else "")
        cpu[key] = cpu.get(key, 0) + (t.on_cpu_ns or 0)
        if t.tid == t.pid:
            start[t.pid] = t.start_ticks
    by_pid: dict[int, ProcessCpu] = {}
    for (pid, comm), ns in cpu.items():
        old = by_pid.get(pid)
        by_pid[pid] = ProcessCpu(
            pid,
            comm or (old.comm if old else ""),
            start.get(pid, 0),
            ns + (old.cpu_ns if old else 0),
        )
    return tuple(by_pid.values())


def analyse_arm(record: ArmRecord, target: str) -> ArmResult:
    """An arm's result: its metrics and verdict's evidence (schedstat, the lab's), its
    ranked causes from `diagnose` as for any target, its breakdown by process and thread."""
    m = arm_metrics(record)
    parts = breakdowns(record, m)
    ranked = diagnose(observation_of_arm(record, target)).causes if parts else ()
    v = verdict(m, target=target, cpu_limit=record.cpu_limit, ranked=ranked)
    times = record.sched_times
    return ArmResult(
        name=record.name,
        metrics=m,
        verdict=v,
        breakdown=parts,
        series=series(record),
        latencies_ms=tuple(
            round(r.latency_ns / 1e6, 3) for r in record.requests if 200 <= r.status < 300
        ),
        run_queue_us=times.run_queue_us if times is not None else (),
        slice_us=times.slice_us if times is not None else (),
    )


# --- any target -----------------------------------------------------------------------------


def severity_of(wait_to_run: float | None, wait_per_slice_us: float | None) -> tuple[bool, str]:
    """(contention, severity) from the run-queue wait others caused per unit of on-CPU
    time (thresholds.py), when each wait is long enough to matter."""
    if wait_to_run is None:
        return False, "none"
    short = wait_per_slice_us is not None and wait_per_slice_us < th.WAIT_PER_SLICE_FLOOR_US
    if wait_to_run >= th.WAIT_TO_RUN_SEVERE and not short:
        return True, "severe"
    if wait_to_run >= th.WAIT_TO_RUN_CONTENDED and not short:
        return True, "moderate"
    if wait_to_run >= th.WAIT_TO_RUN_MILD:
        return False, "mild"
    return False, "none"


def _delta(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else max(b - a, 0)


def cgroup_reports(obs: Observation) -> tuple[CgroupReport, ...]:
    """Each cgroup of the target's tasks over the window: quota, use, throttling, PSI."""
    out = []
    pids_of: dict[str, list[int]] = {}
    for pid, path in sorted(obs.task_cgroups.items()):
        pids_of.setdefault(path, []).append(pid)
    for first, last in obs.cgroups:
        window = last.t_ns - first.t_ns
        usage = ratio = throttled = None
        if first.cpu is not None and last.cpu is not None:
            periods = last.cpu.nr_periods - first.cpu.nr_periods
            ratio = (last.cpu.nr_throttled - first.cpu.nr_throttled) / periods if periods else 0.0
            throttled = (last.cpu.throttled_ns - first.cpu.throttled_ns) / 1e9
            used = _delta(first.cpu.usage_ns, last.cpu.usage_ns)
            usage = used / window if used is not None and window > 0 else None
        some = full = None
        if first.pressure is not None and last.pressure is not None and window > 0:
            some = (last.pressure.some_us - first.pressure.some_us) * 1e3 / window
            f = _delta(first.pressure.full_us, last.pressure.full_us)
            full = f * 1e3 / window if f is not None else None
        quota = last.quota_us / last.period_us if last.quota_us and last.period_us else None
        out.append(
            CgroupReport(
                path=last.path,
                container=obs.containers.get(last.path),
                quota_cpus=quota,
                period_us=last.period_us,
                usage_cpus=usage,
                throttled_periods_ratio=ratio if quota is not None or ratio else None,
                throttled_s=throttled if quota is not None or throttled else None,
                psi_some=some,
                psi_full=full,
                pids=tuple(pids_of.get(last.path, ())),
                quota_from=last.quota_from,
            )
        )
    return tuple(out)


# Runnable time that something else caused: a quota, a task holding the CPU, or a holder
# procfs cannot name. Not wake-up latency on an idle CPU: nobody took that CPU.
CONTENDED = (bd.THROTTLED, bd.QUEUED, bd.RUNNABLE)


def _wait_to_run(b: Breakdown) -> float | None:
    """Runnable time others caused per ns on a CPU (inf: it waited but never ran)."""
    running = b.total(bd.RUNNING)
    waited = bd.contended_ns(b)
    if running > 0:
        return waited / running
    return None if waited <= 0 else float("inf")


def _states(b: Breakdown) -> dict[str, int]:
    return breakdown_states(b)


def _process_breakdowns(
    obs: Observation, throttling: bool, clock_ticks: int
) -> tuple[Breakdown, list[tuple[int, str, Breakdown, list[ThreadReport]]], str]:
    """The whole target's breakdown, then each process's (pid, comm, breakdown,
    threads), and the breakdown's source."""
    label = obs.target
    times = obs.sched_times
    if times is not None:
        observers = frozenset(obs.observers)
        whole = bd.from_events(times, label, None, throttling, observers=observers)
        procs: list[tuple[int, str, Breakdown, list[ThreadReport]]] = []
        for pid in sorted({t.pid for t in times.threads}):
            mine = [t for t in times.threads if t.pid == pid]
            comm = next((t.comm for t in mine if t.tid == pid and t.comm), "") or next(
                (t.comm for t in mine if t.comm), "?"
            )
            threads = [
                ThreadReport(
                    t.tid,
                    t.comm,
                    t.running_ns,
                    t.runnable_ns,
                    sum(t.sleeping_ns.values()),
                    t.runnable_ns / t.running_ns if t.running_ns else None,
                    None,  # the events' slice histogram is of all threads together
                )
                for t in mine
            ]
            b = bd.from_events(times, f"{comm} (PID {pid})", {pid}, throttling, observers=observers)
            procs.append((pid, comm, b, threads))
        return whole, procs, bd.SOURCE_EVENTS
    snaps = obs.snapshots
    window = snaps[-1].t_ns - snaps[0].t_ns if len(snaps) >= 2 else 0
    deltas = [
        d
        for d in task_deltas(snaps, clock_ticks)
        if d.on_cpu_ns is not None and d.run_queue_wait_ns is not None
    ]
    rows = [(window, d.on_cpu_ns or 0, d.run_queue_wait_ns or 0) for d in deltas]
    whole = bd.from_schedstat(rows, label)
    procs = []
    for pid in sorted({d.pid for d in deltas}):
        own = [d for d in deltas if d.pid == pid]
        comm = next((d.comm for d in own if d.tid == pid), own[0].comm)
        threads = [
            ThreadReport(
                d.tid,
                d.comm,
                d.on_cpu_ns or 0,
                d.run_queue_wait_ns or 0,
                max(window - (d.on_cpu_ns or 0) - (d.run_queue_wait_ns or 0), 0),
                (d.run_queue_wait_ns or 0) / d.on_cpu_ns if d.on_cpu_ns else None,
                d.slices,
            )
            for d in own
        ]
        b = bd.from_schedstat(
            [(window, t.running_ns, t.runnable_ns) for t in threads], f"{comm} (PID {pid})"
        )
        procs.append((pid, comm, b, threads))
    return whole, procs, bd.SOURCE_SCHEDSTAT


def _cpu_used(obs: Observation) -> dict[int, int]:
    """pid -> CPU time each process used in the window (born inside it: all of it)."""
    first = {(p.pid, p.start_ticks): p.cpu_ns for p in obs.processes[0]}
    used: dict[int, int] = {}
    for p in obs.processes[1]:
        used[p.pid] = max(p.cpu_ns - first.get((p.pid, p.start_ticks), 0), 0)
    return used


def _holder_groups(obs: Observation) -> dict[int, str]:
    """pid -> the cgroup (or container) of each task named in the diagnosis."""
    out = {}
    for pid, path in obs.task_cgroups.items():
        container = obs.containers.get(path)
        out[pid] = f"container {container} ({path})" if container else f"cgroup {path}"
    return out


def diagnose(obs: Observation, clock_ticks: int = CLOCK_TICKS_DEFAULT) -> Diagnosis:
    cgroups = cgroup_reports(obs)
    limited = [c for c in cgroups if c.quota_cpus is not None]
    throttling = any(
        (c.throttled_periods_ratio or 0.0) >= th.IDLE_WAIT_THROTTLING_PERIODS for c in limited
    )
    whole, procs, source = _process_breakdowns(obs, throttling, clock_ticks)
    tightest = min(limited, key=lambda c: c.quota_cpus or 0.0) if limited else None
    ctx = bd.Context(
        quota_cpus=tightest.quota_cpus if tightest else None,
        quota_cgroup=(tightest.quota_from or tightest.path) if tightest else None,
        # The events' own window where there are events: the breakdown's times are in it.
        window_ns=obs.sched_times.window_ns if obs.sched_times else obs.end_ns - obs.start_ns,
        roles=dict(obs.roles),
        groups=_holder_groups(obs),
        cpu_ns=_cpu_used(obs),
    )
    ranked = bd.causes(whole, obs.target, ctx)
    ratio = _wait_to_run(whole)
    slices = slice_count(obs, clock_ticks)
    waited = bd.contended_ns(whole)
    per_slice = waited / slices / 1e3 if slices else None
    contention, severity = severity_of(ratio, per_slice)
    psi = obs.psi_system
    window = obs.end_ns - obs.start_ns
    psi_some = (
        (psi[1].some_us - psi[0].some_us) * 1e3 / window
        if psi[0] is not None and psi[1] is not None and window > 0
        else None
    )
    times = obs.sched_times
    processes = [_process_report(obs, pid, comm, b, threads) for pid, comm, b, threads in procs]
    cgroups = _with_waits(cgroups, processes)
    summary = _summary(obs.target, contention, severity, ratio, per_slice, ranked)
    if obs.system_wide:
        processes.sort(key=lambda p: -_contended(p.breakdown))
        processes = processes[:MACHINE_TOP]
        cgroups = tuple(sorted(cgroups, key=lambda c: -c.runnable_ns)[:MACHINE_TOP])
        ranked = ()
        contention = any(p.severity in ("moderate", "severe") for p in processes)
        severity = max((p.severity for p in processes), key=SEVERITIES.index, default="none")
        summary = _machine_summary(processes, cgroups)
    return Diagnosis(
        target=obs.target,
        backend=obs.backend,
        duration_s=obs.duration_s,
        verdict=TargetVerdict(contention, severity, ratio, summary, per_slice),
        causes=ranked,
        breakdown=whole,
        processes=tuple(processes),
        cgroups=cgroups,
        psi_system_some=psi_some,
        indicators=indicators(obs, whole, procs, contention, clock_ticks),
        sources=_sources(obs, source),
        run_queue_us=times.run_queue_us if times is not None else (),
        slice_us=times.slice_us if times is not None else (),
        lost_events=obs.lost_events,
        overhead=obs.overhead,
        notes=obs.notes,
        exit_status=obs.exit_status,
        system_wide=obs.system_wide,
        series=target_series(obs.snapshots, clock_ticks),
    )


def target_series(
    snapshots: tuple[Snapshot, ...], clock_ticks: int = CLOCK_TICKS_DEFAULT
) -> tuple[SeriesPoint, ...]:
    """Per sampling interval: the target's CPUs running and waiting (schedstat), its
    followed group's throttled time and PSI (else the system's PSI)."""
    points = []
    for prev, cur in itertools.pairwise(snapshots):
        dt_ns = cur.t_ns - prev.t_ns
        if dt_ns <= 0:
            continue
        deltas = task_deltas((prev, cur), clock_ticks)
        running = sum(d.on_cpu_ns or 0 for d in deltas) / dt_ns
        waiting = sum(d.run_queue_wait_ns or 0 for d in deltas) / dt_ns
        throttled = None
        if prev.cgroup_cpu is not None and cur.cgroup_cpu is not None:
            throttled = (
                (cur.cgroup_cpu.throttled_ns - prev.cgroup_cpu.throttled_ns) / 1e3 / (dt_ns / 1e6)
            )
        a, b = (
            (prev.psi_cgroup, cur.psi_cgroup)
            if prev.psi_cgroup is not None and cur.psi_cgroup is not None
            else (prev.psi_system, cur.psi_system)
        )
        some = full = None
        if a is not None and b is not None:
            some = 100.0 * (b.some_us - a.some_us) * 1e3 / dt_ns
            if a.full_us is not None and b.full_us is not None:
                full = 100.0 * (b.full_us - a.full_us) * 1e3 / dt_ns
        points.append(
            SeriesPoint(
                t_s=round((cur.t_ns - snapshots[0].t_ns) / 1e9, 3),
                cpu_cores={"running": round(running, 4), "waiting": round(waiting, 4)},
                throttled_ms_per_s=throttled,
                psi_some_pct=some,
                psi_full_pct=full,
            )
        )
    return tuple(points)


SEVERITIES = ("none", "mild", "moderate", "severe")
MACHINE_TOP = 10  # processes and cgroups ranked with no target


def _contended(states: dict[str, int]) -> int:
    return sum(states.get(state, 0) for state in CONTENDED)


def _process_report(
    obs: Observation, pid: int, comm: str, b: Breakdown, threads: list[ThreadReport]
) -> ProcessReport:
    ratio = _wait_to_run(b)
    known = [t.slices for t in threads if t.slices is not None]
    slices = sum(known) if known and len(known) == len(threads) else None
    waited = bd.contended_ns(b)
    per_slice = waited / slices / 1e3 if slices else None
    severity = severity_of(ratio, per_slice)[1]
    window = obs.end_ns - obs.start_ns
    if window > 0 and waited < th.NOTABLE_WAIT_SHARE * window and severity != "none":
        severity = "mild"  # a kernel thread that waited 0.5 ms for its 0.1 ms of work
    return ProcessReport(
        pid,
        comm,
        obs.task_cgroups.get(pid),
        _states(b),
        ratio,
        tuple(threads),
        severity,
        per_slice,
    )


def _with_waits(
    cgroups: tuple[CgroupReport, ...], processes: list[ProcessReport]
) -> tuple[CgroupReport, ...]:
    """Each group with the running and contended runnable time of its processes."""
    out = []
    for c in cgroups:
        mine = [p for p in processes if p.cgroup == c.path]
        running = sum(p.breakdown.get(bd.RUNNING, 0) for p in mine)
        runnable = sum(_contended(p.breakdown) for p in mine)
        ratio = runnable / running if running else None
        slices = [t.slices for p in mine for t in p.threads if t.slices is not None]
        per_slice = runnable / sum(slices) / 1e3 if slices and sum(slices) else None
        out.append(
            replace(
                c,
                running_ns=running,
                runnable_ns=runnable,
                wait_to_run=ratio,
                severity=severity_of(ratio, per_slice)[1],
            )
        )
    return tuple(out)


def _machine_summary(processes: list[ProcessReport], cgroups: tuple[CgroupReport, ...]) -> str:
    if not processes or _contended(processes[0].breakdown) == 0:
        return "No process waited for a CPU in the window."
    p = processes[0]
    text = (
        f"Waited most: {p.comm} (PID {p.pid}, {p.severity}, wait/run {_fmt_ratio(p.wait_to_run)})"
    )
    if cgroups and cgroups[0].runnable_ns:
        c = cgroups[0]
        text += f"; cgroup {c.path} ({c.severity}, wait/run {_fmt_ratio(c.wait_to_run)})"
    return text + f". Run `contend diagnose --pid {p.pid}` to name who it waited behind."


def _fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _summary(
    target: str,
    contention: bool,
    severity: str,
    ratio: float | None,
    per_slice_us: float | None,
    ranked: tuple[Cause, ...],
) -> str:
    if ratio is None:
        return f"{target} did not run in the window: nothing to tell."
    how = f"{ratio:.2f} s waiting behind others per second on a CPU"
    if per_slice_us is not None:
        each = f"{per_slice_us / 1e3:.1f} ms" if per_slice_us >= 1000 else f"{per_slice_us:.0f} us"
        how += f", {each} per slice"
    if not contention:
        word = "mild waiting" if severity == "mild" else "no contention"
        return f"{target}: {word} ({how})."
    top = next((c for c in ranked if c.kind not in ("wakeup_latency", "observer")), None)
    why = f"; first cause: {top.sentence[0].lower()}{top.sentence[1:]}" if top else "."
    return f"{target} is starved of CPU, {severity}ly ({how}){why}"


def _sources(obs: Observation, breakdown_source: str) -> dict[str, str]:
    events = obs.backend in ("bpftrace", "tracefs")
    return {
        "breakdown": breakdown_source,
        "waited_behind": (
            f"{EXACT}: {obs.backend} scheduler events"
            if events
            else f"{UNAVAILABLE}: needs root (bpftrace or tracefs)"
        ),
        "cgroups": f"{SAMPLED}: cpu.stat, cpu.pressure, cpu.max / cpu.cfs_quota_us at start and end",
        "psi_system_some": f"{SAMPLED}: /proc/pressure/cpu total at start and end",
        "context_switches": f"{SAMPLED}: /proc/PID/task/TID/status",
        "syscall_time": (
            f"{SAMPLED}: {obs.backend}, 1 call in 16 timed"
            if obs.syscalls is not None
            else f"{UNAVAILABLE}: procfs has no syscall latency"
        ),
        "histograms": (
            f"{EXACT}: every wait and slice ({obs.backend})"
            if events
            else f"{UNAVAILABLE}: procfs has totals only"
        ),
    }


def slice_count(obs: Observation, clock_ticks: int = CLOCK_TICKS_DEFAULT) -> int | None:
    """How many times the target's threads went on a CPU: every slice from events,
    else schedstat's count."""
    if obs.sched_times is not None:
        return sum(b.count for b in obs.sched_times.slice_us)
    n = [d.slices for d in task_deltas(obs.snapshots, clock_ticks) if d.slices is not None]
    return sum(n) if n else None


def indicators(
    obs: Observation,
    whole: Breakdown,
    procs: list[tuple[int, str, Breakdown, list[ThreadReport]]],
    contention: bool,
    clock_ticks: int = CLOCK_TICKS_DEFAULT,
) -> tuple[Indicator, ...]:
    """The original document's four rows, measured for this target; each says whether
    the document's contention value is met here and whether that agrees with the verdict."""
    snaps = obs.snapshots
    window_s = (snaps[-1].t_ns - snaps[0].t_ns) / 1e9 if len(snaps) >= 2 else 0.0
    deltas = task_deltas(snaps, clock_ticks)

    def row(
        metric: str, ref: str, measured: str, value: float | None, hit: bool | None, note: str
    ) -> Indicator:
        agrees = None if hit is None else hit == contention
        return Indicator(metric, ref, measured, value, hit, agrees, note)

    out = []
    cs = (
        sum(d.voluntary_switches + d.involuntary_switches for d in deltas) / window_s
        if window_s > 0 and deltas
        else None
    )
    out.append(
        row(
            "Context switches/sec",
            "> 1000",
            "n/a" if cs is None else f"{cs:.0f}/s",
            cs,
            None if cs is None else cs > 1000,
            "measured: a busy server switches 270-1900 times/s uncontended, fewer when "
            "starved; this row does not separate contention",
        )
    )
    rows = obs.syscalls
    avg = avg_latency_us(list(rows)) if rows else None
    out.append(
        row(
            "Avg syscall time",
            "100+ us",
            "n/a" if avg is None else f"{avg:.1f} us (blocking calls included)",
            avg,
            None if avg is None else avg >= 100,
            "blocking calls (futex, poll, sleep) dominate the average either way"
            if avg is not None
            else "not measured: needs the bpftrace backend",
        )
    )
    running = whole.total(bd.RUNNING)
    slices = slice_count(obs, clock_ticks)
    avg_slice = running / slices / 1e3 if slices else None
    out.append(
        row(
            "Process run time (avg slice)",
            "10-100 us",
            "n/a" if avg_slice is None else f"{avg_slice:.0f} us",
            avg_slice,
            None if avg_slice is None else 10 <= avg_slice <= 100,
            "slices are as long as the work between sleeps, contended or not",
        )
    )
    busy = [float(t.running_ns) for _, _, _, threads in procs for t in threads]
    jain = busy_fairness(busy) if len(busy) > 1 else None
    out.append(
        row(
            "CPU fairness",
            "Imbalanced",
            "n/a (one busy thread)" if jain is None else f"Jain {jain:.2f} over its busy threads",
            jain,
            None if jain is None else jain < 0.9,
            "CFS shares CPU per thread: an even split says nothing of waiting",
        )
    )
    return tuple(out)
