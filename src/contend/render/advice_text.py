"""`contend advise`'s answer as text: the demand, a row per quota, the recommendation and
what the model leaves out."""

from __future__ import annotations

from contend.model import Advice, AdviceCheck, Prediction


def _ratio(p: Prediction) -> str:
    if p.throttled_periods_ratio is None:
        return "-"
    return f"{p.throttled_periods_ratio:6.1%} ({p.throttled_periods}/{p.periods})"


def _short(target: str, width: int = 60) -> str:
    """A target on one line (a recorded command can be a whole script)."""
    one = " ".join(target.split())
    return one if len(one) <= width else one[: width - 3] + "..."


def render(advice: Advice) -> str:
    d = advice.demand
    period_ms = advice.period_us / 1000
    lines = [
        f"contend advise: {_short(advice.target)} ({advice.duration_s:.2f} s recorded, "
        f"{advice.cpus} CPUs, period {period_ms:g} ms, slice {advice.slice_us / 1000:g} ms)",
        f"demand: {d.mean_cpus:.2f} CPUs on average, {d.p95_cpus_per_period:.2f} in the "
        f"busiest 5% of {period_ms:g} ms periods, up to {d.max_parallel} thread(s) at once; "
        f"{d.work_s:.3f} CPU-s in {d.bursts} wakeups",
        "",
        f"{'quota':>8}  {'throttled periods':<19}  {'throttled':>9}  {'added delay':>12}",
        f"{'CPUs':>8}  {'predicted':<19}  {'s':>9}  {'per CPU-s':>12}",
    ]
    for p in advice.predictions:
        quota = "none" if p.quota_cpus is None else f"{p.quota_cpus:g}"
        if p.quota_cpus is not None and p.quota_cpus == advice.recommended_quota_cpus:
            quota = "* " + quota
        lines.append(
            f"{quota:>8}  {_ratio(p):<19}  {p.throttled_s:9.3f}  {p.delay_per_cpu_s:10.3f} s"
        )
    lines.append("")
    slo = f"{advice.slo_throttled:.0%}"
    if advice.recommended_quota_cpus is None:
        lines.append(f"recommended: none: {advice.margin} (SLO {slo} of periods throttled)")
    else:
        q = advice.recommended_quota_cpus
        quota_us = round(q * advice.period_us)
        lines.append(
            f'recommended: {q:g} CPUs (cpu.max "{quota_us} {advice.period_us}", docker '
            f"--cpus={q:g}): {advice.margin} throttled, SLO {slo}"
        )
    lines += [f"note: {n}" for n in advice.notes]
    lines.append("the model leaves out:")
    lines += [f"  - {a}" for a in advice.assumptions]
    return "\n".join(lines) + "\n"


def _ms(latency: dict[str, float] | None, key: str) -> str:
    return "-" if latency is None else f"{latency[key]:.1f}"


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1%}"


def render_check(check: AdviceCheck) -> str:
    """`contend lab --verify-advice`: the advice, then predicted beside measured."""
    lines = [render(check.advice).rstrip("\n"), ""]
    rec = check.recorded_latency_ms
    lines.append(
        f"verified: {check.duration_s:g} s of load at {check.rate_per_s:.1f} requests/s per "
        f"quota; unlimited, as recorded: p50 {_ms(rec, 'p50')} ms, p95 {_ms(rec, 'p95')} ms"
    )
    lines.append(
        f"{'quota':>6}  {'throttled periods':^19}  {'p50 latency ms':^17}  {'p95 latency ms':^17}"
    )
    lines.append(
        f"{'CPUs':>6}  {'predicted':>9} {'measured':>9}  {'predicted':>9} {'measured':>7}  "
        f"{'predicted':>9} {'measured':>7}"
    )
    predicted = {p.quota_cpus: p for p in check.advice.predictions}
    for m in check.measured:
        p = predicted.get(m.quota_cpus)
        lines.append(
            f"{m.quota_cpus:>6g}  {_pct(p.throttled_periods_ratio if p else None):>9} "
            f"{_pct(m.throttled_periods_ratio):>9}  "
            f"{_ms(p.latency_ms if p else None, 'p50'):>9} {_ms(m.latency_ms, 'p50'):>7}  "
            f"{_ms(p.latency_ms if p else None, 'p95'):>9} {_ms(m.latency_ms, 'p95'):>7}"
            + (f"  ({m.errors} of {m.requests} failed)" if m.errors else "")
        )
    return "\n".join(lines) + "\n"
