"""The accounting snapshot as Prometheus exposition: the classic text format (0.0.4) or
OpenMetrics 1.0, written by prometheus_client's own encoders from metric families built
here (names, help, labels: deploy/prometheus/rules.yml and the README's reference use
them).

Every family has the same labels on every sample; a label a group does not have is
empty (Prometheus drops empty labels). Label values are cgroup paths, container ids,
systemd units and pod uids: bounded by `--max-cgroups` (the rest are `cgroup="other"`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from contend.model import AccountingSnapshot, CgroupAccount

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

LABELS = ["cgroup", "container", "container_name", "unit", "pod_uid"]
WAIT_BUCKETS = 25  # le = 1 us .. 2^24 us (16.8 s), then +Inf
REASONS = ("quota", "runqueue")


@dataclass(frozen=True)
class ExporterStats:
    """The exporter's own numbers, beside the snapshot."""

    scrapes: int
    last_scrape_s: float
    read_errors: int


def _labels(c: CgroupAccount) -> list[str]:
    return [c.path, c.container or "", c.container_name or "", c.unit or "", c.pod_uid or ""]


def _families(snap: AccountingSnapshot, stats: ExporterStats) -> Iterator[Metric]:
    groups = snap.cgroups

    def counter(name: str, doc: str, values: list[tuple[CgroupAccount, float | None]]) -> Metric:
        m = CounterMetricFamily(name, doc, labels=LABELS)
        for c, v in values:
            if v is not None:
                m.add_metric(_labels(c), v)
        return m

    def gauge(name: str, doc: str, values: list[tuple[CgroupAccount, float | None]]) -> Metric:
        m = GaugeMetricFamily(name, doc, labels=LABELS)
        for c, v in values:
            if v is not None:
                m.add_metric(_labels(c), v)
        return m

    yield counter(
        "contend_cgroup_cpu_usage_seconds",
        "CPU time the cgroup's tasks used (cpu.stat usage), since the exporter first saw it.",
        [(c, c.usage_s) for c in groups],
    )
    yield counter(
        "contend_cgroup_cpu_periods",
        "CFS bandwidth periods that elapsed with the group runnable (cpu.stat nr_periods).",
        [(c, c.periods) for c in groups],
    )
    yield counter(
        "contend_cgroup_cpu_throttled_periods",
        "CFS periods in which the group ran out of quota (cpu.stat nr_throttled); the "
        "counts of the group whose quota binds (a parent's, where that is tighter).",
        [(c, c.throttled_periods) for c in groups],
    )
    yield counter(
        "contend_cgroup_cpu_throttled_seconds",
        "Time the group's run queues spent throttled, summed over CPUs (cpu.stat).",
        [(c, c.throttled_s) for c in groups],
    )
    yield counter(
        "contend_cgroup_throttled_below_limit_periods",
        "Throttled periods in intervals whose CPU use stayed at or under 80% of the quota: "
        "its threads drain each period's quota early (kubernetes issue 67577).",
        [(c, c.throttled_below_limit_periods) for c in groups],
    )
    yield gauge(
        "contend_cgroup_cpu_quota_cpus",
        "The tightest CPU quota over the group and its ancestors, in CPUs.",
        [(c, c.quota_cpus) for c in groups],
    )
    yield counter(
        "contend_cgroup_cpu_bursts",
        "Periods in which the group used burst beyond its quota (cpu.stat nr_bursts, 5.14+).",
        [(c, c.bursts) for c in groups],
    )
    yield counter(
        "contend_cgroup_cpu_burst_seconds",
        "CPU time the group used beyond its quota as burst (cpu.stat burst_usec/burst_time).",
        [(c, c.burst_s) for c in groups],
    )
    yield gauge(
        "contend_cgroup_cpu_burst_limit_seconds",
        "The burst the group may bank per period (cpu.max.burst / cpu.cfs_burst_us).",
        [(c, c.burst_limit_s) for c in groups],
    )
    yield counter(
        "contend_cgroup_pressure_cpu_some_seconds",
        "Time at least one of the group's tasks was runnable and not running (cpu.pressure some).",
        [(c, c.psi_some_s) for c in groups],
    )
    yield counter(
        "contend_cgroup_pressure_cpu_full_seconds",
        "Time all of the group's non-idle tasks were stalled on CPU (cpu.pressure full).",
        [(c, c.psi_full_s) for c in groups],
    )
    yield counter(
        "contend_cgroup_runqueue_wait_seconds",
        "Time the group's threads waited on a run queue: in-kernel with root (every wait "
        "that ended), else schedstat run_delay (threads that exited keep what they had at "
        "the last reading).",
        [(c, c.wait_s) for c in groups],
    )
    hist = HistogramMetricFamily(
        "contend_cgroup_runqueue_wait_duration_seconds",
        "Each run-queue wait of the group's threads (in-kernel, root): log2 buckets from "
        "1 us. (Not _wait_seconds: that name is the counter's family in OpenMetrics.)",
        labels=LABELS,
    )
    for c in groups:
        if c.waits is None:
            continue
        counts = dict(c.wait_buckets)
        cumulative, buckets = 0, []
        for k in range(WAIT_BUCKETS):
            # bpftrace's log2 bucket [2^(k-1), 2^k) us; waits under 1 us are bucket 0.
            cumulative += counts.get(0, 0) if k == 0 else counts.get(1 << (k - 1), 0)
            buckets.append((f"{(1 << k) / 1e6:g}", cumulative))
        buckets.append(("+Inf", c.waits))
        hist.add_metric(_labels(c), buckets, c.wait_s)
    yield hist
    behind = CounterMetricFamily(
        "contend_cgroup_waited_behind_seconds",
        "Time the group's threads waited while a task of cgroup `holder` held their CPU "
        "(in-kernel, root). holder=self: its own threads; quota: while the group was "
        "throttled, the CPU idle or the wait older than its CPU's last 8 switches; idle: "
        "idle otherwise (wake-up latency); unknown: the holder exited before it was named, "
        "or (not throttled) the wait was older than its CPU's last 8 switches; other: "
        "holders past the top 5 of the group.",
        labels=[*LABELS, "holder"],
    )
    for c in groups:
        for holder, seconds in c.behind:
            behind.add_metric([*_labels(c), holder], seconds)
    yield behind
    yield counter(
        "contend_cgroup_run_seconds",
        "On-CPU time of the group's threads (schedstat), the denominator of wait/run.",
        [(c, c.run_s) for c in groups],
    )
    yield gauge(
        "contend_cgroup_wait_to_run_ratio",
        "Run-queue wait per second on a CPU over the last interval (contended from 0.5).",
        [(c, c.wait_to_run if c.wait_to_run != float("inf") else None) for c in groups],
    )
    starved = GaugeMetricFamily(
        "contend_cgroup_cpu_starved",
        "1 when the group is starved of CPU over the last interval (contend diagnose's "
        "verdict: moderate or severe), with why: reason=quota (throttled in >= 25% of "
        "periods) or runqueue (waited behind other tasks).",
        labels=[*LABELS, "reason"],
    )
    for c in groups:
        for reason in REASONS:
            starved.add_metric([*_labels(c), reason], 1.0 if c.reason == reason else 0.0)
    yield starved
    yield gauge(
        "contend_cgroup_processes",
        "Processes in the group at the last reading.",
        [(c, c.processes) for c in groups],
    )
    unnamed = CounterMetricFamily(
        "contend_exporter_unnamed_wait_seconds",
        "Run-queue waits of threads that exited before /proc named their cgroup.",
    )
    unnamed.add_metric([], snap.unnamed_waits_s)
    yield unnamed
    if snap.psi_some_s is not None:
        m = CounterMetricFamily(
            "contend_pressure_cpu_some_seconds",
            "The machine's CPU pressure (/proc/pressure/cpu some), since the exporter started.",
        )
        m.add_metric([], snap.psi_some_s)
        yield m
    own = CounterMetricFamily(
        "contend_exporter_cpu_seconds", "CPU time the exporter itself used since it started."
    )
    own.add_metric([], snap.own_cpu_s)
    yield own
    for name, doc, value in (
        ("contend_exporter_read_seconds", "How long the last reading of the machine took.", snap.read_s),
        ("contend_exporter_last_scrape_seconds", "How long the previous scrape took to answer.", stats.last_scrape_s),
        ("contend_exporter_dropped_cgroups", "Groups summed into cgroup=\"other\" by --max-cgroups.", snap.dropped_cgroups),
    ):  # fmt: skip
        g = GaugeMetricFamily(name, doc)
        g.add_metric([], value)
        yield g
    for name, doc, count in (
        ("contend_exporter_scrapes", "Scrapes answered.", stats.scrapes),
        ("contend_exporter_read_errors", "Readings of the machine that failed (skipped).", stats.read_errors),
        ("contend_exporter_lost_events", "Scheduler events the kernel dropped.", snap.lost_events),
        ("contend_exporter_samples", "Readings of the machine folded.", snap.samples),
    ):  # fmt: skip
        total = CounterMetricFamily(name, doc)
        total.add_metric([], count)
        yield total
    info = GaugeMetricFamily(
        "contend_exporter_info", "The exporter's backend and interval.", labels=["backend"]
    )
    info.add_metric([snap.backend], 1.0)
    yield info


class _Snapshot:
    def __init__(self, snap: AccountingSnapshot, stats: ExporterStats) -> None:
        self.snap = snap
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        return _families(self.snap, self.stats)


def exposition(
    snap: AccountingSnapshot, stats: ExporterStats, openmetrics: bool = False
) -> tuple[bytes, str]:
    """(body, content type) of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(snap, stats))
    if openmetrics:
        return generate_openmetrics(registry), OPENMETRICS  # type: ignore[no-untyped-call]
    return generate_latest(registry), TEXT
