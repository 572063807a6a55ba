"""Two arms side by side: effect sizes and a significance test on the distributions
(request latency, run-queue wait, on-CPU slices), the headline metrics, one conclusion.

- Mann-Whitney U (two-sided, normal approximation with the tie correction; Mann &
  Whitney 1947): does one distribution tend to lie above the other? No normality assumed
  (latencies are skewed) and it works on binned data (bpftrace's log2 histograms: each
  bucket is a tie group at its midpoint).
- Cliff's delta, P(B > A) - P(B < A), from U: the effect size, -1..1, read with Romano et
  al.'s (2006) bands: negligible < 0.147 <= small < 0.33 <= medium < 0.474 <= large.

Pure functions: no kernel access.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from contend.model import (
    ArmResult,
    Comparison,
    Diagnosis,
    DistributionTest,
    HistBucket,
    MetricDelta,
)

SIGNIFICANCE = 0.01
EFFECT_BANDS = ((0.474, "large"), (0.33, "medium"), (0.147, "small"))


def mann_whitney(
    a: Sequence[tuple[float, int]], b: Sequence[tuple[float, int]]
) -> tuple[float, float] | None:
    """(U of b, two-sided p) for weighted samples [(value, count)], or None when a side is
    empty. U counts the pairs where b's value is larger (ties count half)."""
    n1 = sum(c for _, c in a)
    n2 = sum(c for _, c in b)
    if n1 == 0 or n2 == 0:
        return None
    values: dict[float, list[int]] = {}
    for v, c in a:
        values.setdefault(v, [0, 0])[0] += c
    for v, c in b:
        values.setdefault(v, [0, 0])[1] += c
    rank = 0.0
    r2 = 0.0
    ties = 0.0
    for v in sorted(values):
        ca, cb = values[v]
        t = ca + cb
        avg = rank + (t + 1) / 2.0
        r2 += cb * avg
        ties += t**3 - t
        rank += t
    u2 = r2 - n2 * (n2 + 1) / 2.0
    n = n1 + n2
    mean = n1 * n2 / 2.0
    var = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return u2, 1.0
    z = (abs(u2 - mean) - 0.5) / math.sqrt(var)  # continuity correction
    p = math.erfc(max(z, 0.0) / math.sqrt(2.0))
    return u2, min(p, 1.0)


def effect_label(delta: float) -> str:
    for bound, label in EFFECT_BANDS:
        if abs(delta) >= bound:
            return label
    return "negligible"


def _weighted_percentile(samples: Sequence[tuple[float, int]], q: float) -> float | None:
    total = sum(c for _, c in samples)
    if total == 0:
        return None
    target = q / 100.0 * total
    seen = 0
    for v, c in sorted(samples):
        seen += c
        if seen >= target:
            return v
    return sorted(samples)[-1][0]


def distribution_test(
    name: str, unit: str, a: Sequence[tuple[float, int]], b: Sequence[tuple[float, int]]
) -> DistributionTest:
    mw = mann_whitney(a, b)
    n1, n2 = sum(c for _, c in a), sum(c for _, c in b)
    med_a, med_b = _weighted_percentile(a, 50), _weighted_percentile(b, 50)
    delta = p = None
    if mw is not None:
        u2, p = mw
        delta = 2.0 * u2 / (n1 * n2) - 1.0
    return DistributionTest(
        name=name,
        unit=unit,
        n_a=n1,
        n_b=n2,
        median_a=med_a,
        median_b=med_b,
        p95_a=_weighted_percentile(a, 95),
        p95_b=_weighted_percentile(b, 95),
        median_ratio=med_b / med_a if med_a and med_b is not None else None,
        cliffs_delta=delta,
        effect=effect_label(delta) if delta is not None else "n/a",
        p_value=p,
        significant=p is not None and p < SIGNIFICANCE,
    )


def _from_values(values: Sequence[float]) -> list[tuple[float, int]]:
    return [(v, 1) for v in values]


def _from_hist(buckets: Sequence[HistBucket]) -> list[tuple[float, int]]:
    return [((b.low + b.high) / 2.0, b.count) for b in buckets if b.count]


def _delta(metric: str, unit: str, a: float | None, b: float | None) -> MetricDelta:
    return MetricDelta(metric, unit, a, b, b / a if a and b is not None else None)


def compare_arms(a: ArmResult, b: ArmResult, label_a: str = "", label_b: str = "") -> Comparison:
    la, lb = label_a or a.name, label_b or b.name
    tests = [
        distribution_test(
            "request latency", "ms", _from_values(a.latencies_ms), _from_values(b.latencies_ms)
        )
    ]
    if a.run_queue_us and b.run_queue_us:
        tests.append(
            distribution_test(
                "run-queue wait", "us", _from_hist(a.run_queue_us), _from_hist(b.run_queue_us)
            )
        )
    if a.slice_us and b.slice_us:
        tests.append(
            distribution_test("on-CPU slice", "us", _from_hist(a.slice_us), _from_hist(b.slice_us))
        )
    ma, mb = a.metrics, b.metrics
    metrics = (
        _delta("p95 latency", "ms", ma.requests.latency_ms.p95, mb.requests.latency_ms.p95),
        _delta("throughput", "req/s", ma.requests.throughput_per_s, mb.requests.throughput_per_s),
        _delta("wait/run", "", ma.wait_to_run_ratio, mb.wait_to_run_ratio),
        _delta(
            "run-queue wait per slice",
            "us",
            ma.run_queue_wait_per_slice_us,
            mb.run_queue_wait_per_slice_us,
        ),
        _delta(
            "throttled periods",
            "%",
            _pct(ma.throttled_period_ratio),
            _pct(mb.throttled_period_ratio),
        ),
        _delta("sandbox PSI full", "%", ma.psi_cgroup_cpu_full_pct, mb.psi_cgroup_cpu_full_pct),
    )
    per_slice = next(m.ratio for m in metrics if m.metric == "run-queue wait per slice")
    return Comparison(la, lb, tuple(tests), metrics, conclusion(la, lb, tests, per_slice))


def _pct(ratio: float | None) -> float | None:
    return None if ratio is None else 100.0 * ratio


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _times(ratio: float) -> str:
    return f"x{ratio:.0f}" if ratio >= 10 else f"x{ratio:.2g}"


def conclusion(
    la: str, lb: str, tests: Sequence[DistributionTest], wait_per_slice: float | None = None
) -> str:
    """One line: is B worse, better or the same as A, on what, by how much.
    `wait_per_slice`: B's mean run-queue wait per slice over A's; said beside the median's
    ratio, which a few long waits (throttling) leave unmoved."""
    lat = tests[0]
    if lat.cliffs_delta is None or lat.median_ratio is None:
        return f"{la} vs {lb}: not enough requests to compare."
    detail = (
        f"median request latency {lat.median_a:.0f} -> {lat.median_b:.0f} ms "
        f"({_times(lat.median_ratio)}, Cliff's delta {lat.cliffs_delta:+.2f} {lat.effect}, "
        f"{_fmt_p(lat.p_value)})"
    )
    rq = next((t for t in tests if t.name == "run-queue wait"), None)
    if rq is not None and rq.significant and rq.median_ratio:
        detail += f"; run-queue wait: median {_times(rq.median_ratio)} ({rq.effect})"
        if wait_per_slice is not None:
            detail += f", per slice {_times(wait_per_slice)}"
    if not lat.significant or lat.effect == "negligible":
        return f"{lb} is no different from {la}: {detail}."
    word = "slower" if lat.cliffs_delta > 0 else "faster"
    return f"{lb} is {word} than {la}: {detail}."


def _running_share(d: Diagnosis) -> float | None:
    wall = d.breakdown.wall_ns
    return 100.0 * d.breakdown.total("running") / wall if wall else None


def _throttled(d: Diagnosis) -> float | None:
    ratios = [c.throttled_periods_ratio for c in d.cgroups if c.quota_cpus is not None]
    known = [r for r in ratios if r is not None]
    return _pct(max(known)) if known else None


def compare_diagnoses(a: Diagnosis, b: Diagnosis, label_a: str, label_b: str) -> Comparison:
    """Two diagnoses (of any targets, from any backend): their run-queue wait and slice
    distributions tested, their verdict numbers side by side, one conclusion."""
    tests = []
    if a.run_queue_us and b.run_queue_us:
        tests.append(
            distribution_test(
                "run-queue wait", "us", _from_hist(a.run_queue_us), _from_hist(b.run_queue_us)
            )
        )
    if a.slice_us and b.slice_us:
        tests.append(
            distribution_test("on-CPU slice", "us", _from_hist(a.slice_us), _from_hist(b.slice_us))
        )
    metrics = (
        _delta("wait/run", "", a.verdict.wait_to_run, b.verdict.wait_to_run),
        _delta(
            "run-queue wait per slice",
            "us",
            a.verdict.wait_per_slice_us,
            b.verdict.wait_per_slice_us,
        ),
        _delta("running", "% of wall", _running_share(a), _running_share(b)),
        _delta("throttled periods", "%", _throttled(a), _throttled(b)),
        _delta("system PSI some", "%", _pct(a.psi_system_some), _pct(b.psi_system_some)),
    )
    return Comparison(
        label_a, label_b, tuple(tests), metrics, diagnosis_conclusion(a, b, label_a, label_b, tests)
    )


def diagnosis_conclusion(
    a: Diagnosis, b: Diagnosis, la: str, lb: str, tests: Sequence[DistributionTest]
) -> str:
    verdicts = f"verdicts {a.verdict.severity} -> {b.verdict.severity}"
    rq = next((t for t in tests if t.name == "run-queue wait"), None)
    if rq is None or rq.cliffs_delta is None:
        return f"{la} vs {lb}: {verdicts}; no run-queue wait distribution in both to test."
    times = f"{_times(rq.median_ratio)}, " if rq.median_ratio else ""
    detail = (
        f"median run-queue wait {rq.median_a or 0:.0f} -> {rq.median_b or 0:.0f} us "
        f"({times}Cliff's delta {rq.cliffs_delta:+.2f} {rq.effect}, "
        f"{_fmt_p(rq.p_value)}); {verdicts}"
    )
    if not rq.significant or rq.effect == "negligible":
        return f"{lb} waits for a CPU no differently from {la}: {detail}."
    word = "longer" if rq.cliffs_delta > 0 else "shorter"
    return f"{lb} waits {word} for a CPU than {la}: {detail}."
