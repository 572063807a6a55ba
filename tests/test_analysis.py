"""Analysis over synthetic sessions with known answers (built snapshots, a fake clock)."""

from __future__ import annotations

import pytest

from contend.analysis.metrics import arm_metrics, jain_index, percentile, task_deltas
from contend.analysis.verdict import reference_rows, separating_rows, verdict
from contend.model import (
    ArmRecord,
    CgroupCpuStat,
    Pressure,
    ProcessIO,
    RequestSample,
    Snapshot,
    TaskStat,
)

S = 1_000_000_000


def task(
    pid: int,
    tid: int,
    cpu_ms: int,
    wait_ms: int,
    slices: int,
    vol: int = 0,
    invol: int = 0,
    start: int = 1,
) -> TaskStat:
    return TaskStat(
        pid=pid, tid=tid, comm="t", start_ticks=start, utime_ticks=cpu_ms // 10, stime_ticks=0,
        voluntary_switches=vol, involuntary_switches=invol,
        on_cpu_ns=cpu_ms * 1_000_000, run_queue_wait_ns=wait_ms * 1_000_000, slices=slices,
    )  # fmt: skip


def test_percentile_and_jain() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 95) == 95.0
    assert jain_index([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert jain_index([0.0]) is None


def test_task_born_mid_window_counts_from_zero_and_vanished_task_keeps_last() -> None:
    snaps = (
        Snapshot(0, (task(1, 1, 100, 10, 10), task(1, 2, 50, 5, 5))),
        Snapshot(S, (task(1, 1, 300, 30, 20), task(1, 2, 80, 5, 8), task(1, 3, 40, 4, 4, start=9))),
        Snapshot(2 * S, (task(1, 1, 500, 50, 30),)),  # tid 2 and 3 exited
    )
    deltas = {d.tid: d for d in task_deltas(snaps, 100)}
    assert deltas[1].on_cpu_ns == 400_000_000
    assert deltas[2].on_cpu_ns == 30_000_000 and deltas[2].slices == 3
    assert deltas[3].on_cpu_ns == 40_000_000 and deltas[3].slices == 4


def test_reused_tid_is_a_new_task() -> None:
    snaps = (
        Snapshot(0, (task(1, 7, 900, 0, 90, start=1),)),
        Snapshot(S, (task(1, 7, 20, 0, 2, start=50),)),  # same tid, new start time
    )
    deltas = sorted((d.on_cpu_ns or 0) for d in task_deltas(snaps, 100))
    assert deltas == [0, 20_000_000]


def _arm(
    app_cpu_ms: int, app_wait_ms: int, noise_cpu_ms: int, throttled: int, psi_full_us: int
) -> ArmRecord:
    snaps = (
        Snapshot(
            0,
            (task(10, 10, 0, 0, 0), task(20, 20, 0, 0, 0)),
            io=(ProcessIO(10, 1, 100, 100),),
            cgroup_cpu=CgroupCpuStat(0, 0, 0),
            psi_system=Pressure(0, 0),
            psi_cgroup=Pressure(0, 0),
        ),
        Snapshot(
            2 * S,
            (
                task(10, 10, app_cpu_ms, app_wait_ms, 100, vol=300, invol=100),
                task(20, 20, noise_cpu_ms, 0, 50),
            ),
            io=(ProcessIO(10, 1, 150, 170),),
            cgroup_cpu=CgroupCpuStat(20, throttled, throttled * 40_000_000),
            psi_system=Pressure(1_000_000, 0),
            psi_cgroup=Pressure(1_600_000, psi_full_us),
        ),
    )
    requests = (
        *(RequestSample(i, (i + 1) * 1_000_000, 200) for i in range(100)),
        RequestSample(0, 5, 0, "ConnectError"),
    )
    return ArmRecord("x", 0, 2 * S, snaps, {10: "app", 20: "noise"}, requests, cpu_limit=0.5)


def test_arm_metrics_exact_numbers() -> None:
    m = arm_metrics(
        _arm(
            app_cpu_ms=200, app_wait_ms=1800, noise_cpu_ms=600, throttled=20, psi_full_us=1_500_000
        )
    )
    assert m.duration_s == 2.0
    assert m.context_switches_per_s.voluntary == 150.0
    assert m.context_switches_per_s.involuntary == 50.0
    assert m.avg_on_cpu_slice_us == pytest.approx(2000.0)
    assert m.run_queue_wait_per_slice_us == pytest.approx(18000.0)
    assert m.wait_to_run_ratio == pytest.approx(9.0)
    assert m.cpu_cores == pytest.approx({"app": 0.1, "noise": 0.3})
    assert m.cpu_share == pytest.approx({"app": 0.25, "noise": 0.75})
    assert m.fairness_index == pytest.approx((0.2 + 0.6) ** 2 / (2 * (0.04 + 0.36)))
    assert m.throttled_period_ratio == 1.0
    assert m.throttled_ms_per_s == pytest.approx(400.0)
    assert m.psi_cpu_some_pct == pytest.approx(50.0)
    assert m.psi_cgroup_cpu_some_pct == pytest.approx(80.0)
    assert m.psi_cgroup_cpu_full_pct == pytest.approx(75.0)
    assert m.syscalls_per_s == pytest.approx(60.0)  # (50 + 70) / 2 s
    assert m.avg_syscall_time_us is None
    assert (m.requests.count, m.requests.errors) == (101, 1)
    assert m.requests.error_kinds == {"ConnectError": 1}
    assert m.requests.latency_ms.p50 == pytest.approx(50.5)
    assert m.requests.latency_ms.max == pytest.approx(100.0)


def test_verdicts_and_comparison_rows() -> None:
    base = arm_metrics(
        _arm(app_cpu_ms=400, app_wait_ms=40, noise_cpu_ms=0, throttled=0, psi_full_us=0)
    )
    cont = arm_metrics(
        _arm(
            app_cpu_ms=200, app_wait_ms=1800, noise_cpu_ms=600, throttled=20, psi_full_us=1_500_000
        )
    )
    vb, vc = verdict(base, cpu_limit=0.5), verdict(cont, cpu_limit=0.5)
    assert (vb.contention, vb.severity, vb.causes) == (False, "none", ())
    assert (vc.contention, vc.severity) == (True, "severe")
    assert any("quota" in c for c in vc.causes)
    assert any("noise used 0.30 CPUs" in c for c in vc.causes)
    assert any("18.0 ms on the run queue per 2.0 ms slice" in e for e in vc.evidence)
    assert any("100% of CFS periods" in e for e in vc.evidence)

    ref = {r.metric: r for r in reference_rows(base, cont)}
    assert ref["Context switches/sec"].holds is False  # 200/s in both arms
    assert ref["Avg syscall time"].holds is None
    sep = {r.metric: r for r in separating_rows(base, cont)}
    assert sep["wait/run ratio"].separates
    assert sep["throttled periods"].separates
    assert sep["app CPU"].separates  # 0.2 -> 0.1 CPUs
    assert not sep["system PSI some"].separates  # 50% in both


def test_moderate_contention_without_throttling() -> None:
    m = arm_metrics(
        _arm(app_cpu_ms=400, app_wait_ms=300, noise_cpu_ms=600, throttled=0, psi_full_us=0)
    )
    v = verdict(m, cpu_limit=None)
    assert (v.contention, v.severity) == (True, "moderate")
    assert all("quota" not in c for c in v.causes)


def test_syscall_latency_from_traced_rows() -> None:
    from dataclasses import replace

    from contend.model import SyscallRow

    rows = (
        SyscallRow(10, "app", "futex", 10, 0, 10_000_000, 1_000_000.0, 5_000_000, True),
        SyscallRow(10, "app", "write", 100, 0, 1_000_000, 10_000.0, 50_000, False),
        # exit_group: counted, never timed
        SyscallRow(10, "app", "exit_group", 1, 0, 0, None, 0, False),
    )
    arm = replace(_arm(400, 40, 0, 0, 0), syscalls=rows, syscall_window_s=2.0)
    m = arm_metrics(arm)
    assert m.avg_syscall_time_us == pytest.approx(100.0)  # 11 ms over 110 timed calls
    assert m.avg_nonblocking_syscall_time_us == pytest.approx(10.0)
    assert m.syscalls_per_s == pytest.approx(55.5)  # 111 calls in 2 s
    assert m.sources["avg_syscall_time_us"].startswith("exact")
