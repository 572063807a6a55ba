"""The verdict of an arm, and the baseline-vs-contention comparison.

The verdict rests on what separated the conditions when measured (see thresholds.py):
the target's run-queue wait against its run time, backed by throttling and PSI. The
original document's four rows are shown measured beside its reference values, with a
plain statement of whether each held.
"""

from __future__ import annotations

from contend.analysis import thresholds as th
from contend.model import ArmMetrics, Cause, ReferenceRow, SeparatingRow, Verdict


def _fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _fmt_time_us(us: float | None) -> str:
    if us is None:
        return "n/a"
    return f"{us / 1000:.1f} ms" if us >= 1000 else f"{us:.0f} us"


def verdict(
    m: ArmMetrics,
    target: str = "the target",
    cpu_limit: float | None = None,
    ranked: tuple[Cause, ...] = (),
) -> Verdict:
    """`ranked`: the causes measured from the time breakdown; when given (and the target is
    contended) they replace the causes inferred from throttling and CPU use."""
    evidence: list[str] = []
    causes: list[str] = []
    ratio = m.wait_to_run_ratio
    contended = False
    severity = "none"
    if ratio is not None:
        contended = ratio >= th.WAIT_TO_RUN_CONTENDED
        if ratio >= th.WAIT_TO_RUN_SEVERE:
            severity = "severe"
        elif contended:
            severity = "moderate"
        evidence.append(
            f"{target} waited {_fmt_time_us(m.run_queue_wait_per_slice_us)} on the run queue "
            f"per {_fmt_time_us(m.avg_on_cpu_slice_us)} slice on CPU "
            f"(wait/run {ratio:.2f}; contended from {th.WAIT_TO_RUN_CONTENDED})."
        )
    elif m.psi_cgroup_cpu_full_pct is not None or m.psi_cpu_some_pct is not None:
        # Without schedstat, fall back on pressure stall information.
        full = m.psi_cgroup_cpu_full_pct
        some = m.psi_cpu_some_pct
        contended = (full is not None and full >= th.PSI_CGROUP_FULL_NOTABLE) or (
            some is not None and some >= th.PSI_SYSTEM_SOME_NOTABLE
        )
        severity = "moderate" if contended else "none"
    else:
        evidence.append("no run-queue or pressure data: cannot tell (schedstat and PSI missing).")

    throttled = m.throttled_period_ratio
    if throttled is not None and cpu_limit is not None:
        quota = f"{cpu_limit:g}-CPU quota"
        if throttled >= th.THROTTLED_PERIODS_NOTABLE:
            evidence.append(
                f"The sandbox hit its {quota} in {throttled:.0%} of CFS periods "
                f"({_fmt(m.throttled_ms_per_s, '.0f')} ms throttled per second, summed over CPUs)."
            )
            if contended:
                causes.append(
                    f"cgroup CPU quota ({quota}, throttled in {throttled:.0%} of periods)"
                )
        else:
            evidence.append(
                f"The sandbox was throttled in {throttled:.0%} of CFS periods ({quota})."
            )

    others = {role: cores for role, cores in m.cpu_cores.items() if role != "app" and cores >= 0.05}
    if contended and others:
        app_cores = m.cpu_cores.get("app", 0.0)
        for role, cores in sorted(others.items(), key=lambda kv: -kv[1]):
            causes.append(
                f"neighbours: {role} used {cores:.2f} CPUs beside the app's {app_cores:.2f}"
            )
    if m.psi_cgroup_cpu_some_pct is not None:
        evidence.append(
            f"Sandbox CPU pressure: some {m.psi_cgroup_cpu_some_pct:.0f}%, "
            f"full {_fmt(m.psi_cgroup_cpu_full_pct, '.0f')}% of the time "
            f"(system-wide some {_fmt(m.psi_cpu_some_pct, '.0f')}%)."
        )
    elif m.psi_cpu_some_pct is not None:
        evidence.append(f"System CPU pressure: some {m.psi_cpu_some_pct:.0f}% of the time.")
    if ranked and contended:
        causes = [
            c.sentence
            for c in ranked
            if c.kind not in ("wakeup_latency", "runnable_unsplit", "observer")
        ] or causes
    return Verdict(contended, severity, tuple(evidence), tuple(causes), ranked)


def reference_rows(base: ArmMetrics, cont: ArmMetrics) -> tuple[ReferenceRow, ...]:
    """The original document's table, measured, with whether each row held."""
    rows = []

    b_cs, c_cs = base.context_switches_per_s.total, cont.context_switches_per_s.total
    holds = None if b_cs is None or c_cs is None else (b_cs < 100 and c_cs > 1000)
    note = "not measured"
    if b_cs is not None and c_cs is not None:
        if holds:
            note = "holds"
        elif c_cs < b_cs:
            note = "contradicted: fewer switches under contention"
        else:
            note = "contradicted: not in the ranges"
    rows.append(
        ReferenceRow(
            "Context switches/sec",
            "< 100",
            "> 1000",
            _fmt(b_cs, ".0f"),
            _fmt(c_cs, ".0f"),
            holds,
            note,
        )
    )

    b_sys, c_sys = base.avg_syscall_time_us, cont.avg_syscall_time_us
    holds = None if b_sys is None or c_sys is None else (b_sys <= 10 and c_sys >= 100)

    def syscall_time(m: ArmMetrics) -> str:
        if m.avg_syscall_time_us is None:
            return "n/a"
        return (
            f"{_fmt_time_us(m.avg_syscall_time_us)} "
            f"(non-blocking {_fmt_time_us(m.avg_nonblocking_syscall_time_us)})"
        )

    if holds is None:
        note = "not measured: procfs has no syscall latency"
    elif holds:
        note = "holds"
    elif b_sys is not None and b_sys > 10:
        note = "contradicted: blocking waits dominate the average in both"
    else:
        note = "contradicted: not in the ranges"
    rows.append(
        ReferenceRow(
            "Avg syscall time",
            "1-10 us",
            "100+ us",
            syscall_time(base),
            syscall_time(cont),
            holds,
            note,
        )
    )

    b_sl, c_sl = base.avg_on_cpu_slice_us, cont.avg_on_cpu_slice_us
    holds = None if b_sl is None or c_sl is None else (100 <= b_sl <= 1000 and 10 <= c_sl <= 100)
    rows.append(
        ReferenceRow(
            "Process run time (avg slice)",
            "100-1000 us",
            "10-100 us",
            _fmt(b_sl, ".0f", " us"),
            _fmt(c_sl, ".0f", " us"),
            holds,
            "not measured"
            if holds is None
            else ("holds" if holds else "contradicted: not in the ranges"),
        )
    )

    def fairness(m: ArmMetrics) -> str:
        share = " / ".join(f"{role} {frac:.0%}" for role, frac in m.cpu_share.items())
        return f"{share} (Jain {_fmt(m.fairness_index, '.2f')})" if share else "n/a"

    b_j, c_j = base.fairness_index, cont.fairness_index
    holds = None if b_j is None or c_j is None else (c_j < 0.9)
    rows.append(
        ReferenceRow(
            "CPU fairness",
            "~50-50%",
            "Imbalanced",
            fairness(base),
            fairness(cont),
            holds,
            "not measured"
            if holds is None
            else ("holds" if holds else "contradicted: CFS shares per task, not per process"),
        )
    )
    return tuple(rows)


def separating_rows(base: ArmMetrics, cont: ArmMetrics) -> tuple[SeparatingRow, ...]:
    """The measurements that tell the arms apart, each marked if it did here."""

    def factor(b: float | None, c: float | None) -> bool:
        if b is None or c is None:
            return False
        return c >= th.SEPARATION_FACTOR * b and c > 0 if b > 0 else c > 0

    def points(b: float | None, c: float | None) -> bool:
        return b is not None and c is not None and c - b >= th.SEPARATION_POINTS

    def pct(x: float | None) -> float | None:
        return None if x is None else 100.0 * x

    rows = [
        ("wait/run ratio", base.wait_to_run_ratio, cont.wait_to_run_ratio, "", factor),
        (
            "run-queue wait per slice",
            base.run_queue_wait_per_slice_us,
            cont.run_queue_wait_per_slice_us,
            "us",
            factor,
        ),
        ("request p50", base.requests.latency_ms.p50, cont.requests.latency_ms.p50, "ms", factor),
        ("request p95", base.requests.latency_ms.p95, cont.requests.latency_ms.p95, "ms", factor),
        ("request p99", base.requests.latency_ms.p99, cont.requests.latency_ms.p99, "ms", factor),
        (
            "throttled periods",
            pct(base.throttled_period_ratio),
            pct(cont.throttled_period_ratio),
            "%",
            points,
        ),
        (
            "sandbox PSI some",
            base.psi_cgroup_cpu_some_pct,
            cont.psi_cgroup_cpu_some_pct,
            "%",
            points,
        ),
        (
            "sandbox PSI full",
            base.psi_cgroup_cpu_full_pct,
            cont.psi_cgroup_cpu_full_pct,
            "%",
            points,
        ),
        ("system PSI some", base.psi_cpu_some_pct, cont.psi_cpu_some_pct, "%", points),
        (
            "app syscall avg, non-blocking",
            base.avg_nonblocking_syscall_time_us,
            cont.avg_nonblocking_syscall_time_us,
            "us",
            factor,
        ),
        ("app CPU", base.cpu_cores.get("app"), cont.cpu_cores.get("app"), "CPUs", None),
    ]
    out = []
    for name, b, c, unit, test in rows:
        separates = False
        if test is not None:
            separates = test(b, c)
        elif b is not None and c is not None and b > 0:
            separates = c <= b / th.SEPARATION_FACTOR  # the app got starved of CPU
        out.append(SeparatingRow(name, b, c, unit, separates))
    return tuple(out)
