"""One arm's record to its result: metrics, time breakdown, ranked causes, verdict, and the
series and distributions the reports plot. Pure: no kernel access."""

from __future__ import annotations

from contend.analysis import breakdown as bd
from contend.analysis import thresholds as th
from contend.analysis.metrics import CLOCK_TICKS_DEFAULT, arm_metrics, series, task_deltas
from contend.analysis.verdict import verdict
from contend.model import ArmMetrics, ArmRecord, ArmResult, Breakdown


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


def analyse_arm(record: ArmRecord, target: str = "contend-app") -> ArmResult:
    m = arm_metrics(record)
    parts = breakdowns(record, m)
    neighbour_roles: dict[str, str] = {}
    if record.sched_times is not None:
        for o in record.sched_times.occupants:
            role = record.roles.get(o.pid) if o.pid is not None else None
            if role and role != record.target_role:
                neighbour_roles[bd.occupant_name(o)] = role
    ranked = bd.causes(parts[0], target, record.cpu_limit, neighbour_roles) if parts else ()
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
