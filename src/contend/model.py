"""The data that flows between the parts: immutable, stdlib only, JSON-friendly.

Collection produces `Snapshot`s and `RequestSample`s, grouped per experiment arm in an
`ArmRecord`; analysis turns an `ArmRecord` into `ArmMetrics` and a `Verdict`; renderers
only ever see those results (`LabResult`).

JSON schemas, with their changelog:
- ``contend.lab/1`` (0.1.0): first version; see README "Lab JSON".
- ``contend.lab/2`` (0.2.0): each arm gains `breakdown` (where the target's time went),
  `diagnosis` (ranked causes with their numbers), `series` (per-sample CPU, throttling
  and PSI), `latencies_ms` (every request) and `histograms`; `unlimited` arms; the
  result gains `comparisons` (baseline vs each other arm: effect sizes, tests).
- ``contend.trace/1``: additive fields of the tracefs backend: ``lost_by_cpu``,
  ``longest_waits``, ``waited_behind`` (empty lists from the other backends).
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

_T = TypeVar("_T")

SCHEMA_LAB = "contend.lab/2"

# Where a metric came from, said by every report (ARCHITECTURE.md: exact, sampled, unavailable).
EXACT = "exact"
SAMPLED = "sampled"
UNAVAILABLE = "unavailable"


# --- what the procfs backend reads ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskStat:
    """One thread at one moment: /proc/PID/task/TID/{stat,status,schedstat}.

    `start_ticks` (field 22 of stat) with `tid` identifies the thread across PID reuse.
    The schedstat fields are None on kernels built without CONFIG_SCHED_INFO.
    """

    pid: int
    tid: int
    comm: str
    start_ticks: int
    utime_ticks: int
    stime_ticks: int
    voluntary_switches: int
    involuntary_switches: int
    on_cpu_ns: int | None
    run_queue_wait_ns: int | None
    slices: int | None
    ppid: int | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.tid, self.start_ticks)


@dataclass(frozen=True, slots=True)
class ProcessIO:
    """/proc/PID/io: syscall counts for read-like and write-like calls, whole process."""

    pid: int
    start_ticks: int
    syscr: int
    syscw: int
    rchar: int = 0  # bytes passed to read-like calls (also from the page cache)
    wchar: int = 0
    comm: str = ""

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start_ticks)


@dataclass(frozen=True, slots=True)
class CgroupCpuStat:
    """A cgroup's CPU bandwidth counters (v1 cpu.stat or v2 cpu.stat, normalised).

    cgroup v1 `throttled_time` is in ns, v2 `throttled_usec` in us; both sum the throttled
    time of the group's per-CPU run queues (so may exceed wall time). Stored here in ns. `usage_ns` is None where the hierarchy does not give it.
    """

    nr_periods: int
    nr_throttled: int
    throttled_ns: int
    usage_ns: int | None = None
    # Burst (sched-bwc.rst "Burst feature", 5.14+): v1 burst_time (ns), v2 burst_usec.
    nr_bursts: int | None = None
    burst_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Pressure:
    """PSI `total` counters (microseconds of stall since boot or cgroup creation)."""

    some_us: int
    full_us: int | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the procfs backend read at one moment (monotonic `t_ns`)."""

    t_ns: int
    tasks: tuple[TaskStat, ...]
    io: tuple[ProcessIO, ...] = ()
    cgroup_cpu: CgroupCpuStat | None = None
    psi_system: Pressure | None = None
    psi_cgroup: Pressure | None = None


@dataclass(frozen=True, slots=True)
class RequestSample:
    """One request of the load: latency measured from its intended start (as wrk2 does).

    `status` is the HTTP status, or 0 when no response came (refused, reset, timeout).
    """

    intended_ns: int
    latency_ns: int
    status: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ArmRecord:
    """The raw data of one experiment arm: snapshots, which pid plays which role, requests."""

    name: str
    start_ns: int
    end_ns: int
    snapshots: tuple[Snapshot, ...]
    roles: dict[int, str]
    requests: tuple[RequestSample, ...]
    target_role: str = "app"
    cpu_limit: float | None = None
    # The target's syscalls, when a tracer ran beside the sampling (exact counts, latency).
    syscalls: tuple[SyscallRow, ...] | None = None
    syscall_window_s: float | None = None
    # Where the target's time went, from scheduler events (bpftrace), when traced.
    sched_times: SchedTimes | None = None

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


# --- what analysis produces -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LatencySummary:
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


@dataclass(frozen=True, slots=True)
class RequestMetrics:
    count: int
    errors: int
    throughput_per_s: float | None
    latency_ms: LatencySummary
    # "unfinished" (still waiting when the drain ended), "HTTP 500", "ConnectError", ...
    error_kinds: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SwitchRates:
    voluntary: float | None
    involuntary: float | None

    @property
    def total(self) -> float | None:
        if self.voluntary is None or self.involuntary is None:
            return None
        return self.voluntary + self.involuntary


@dataclass(frozen=True, slots=True)
class ArmMetrics:
    """Metrics of one arm. Scheduling figures are of the target role (the app).

    None means unknown (not measurable by the backend that ran), never zero.
    """

    duration_s: float
    requests: RequestMetrics
    context_switches_per_s: SwitchRates
    avg_on_cpu_slice_us: float | None
    run_queue_wait_per_slice_us: float | None
    wait_to_run_ratio: float | None
    avg_syscall_time_us: float | None
    avg_nonblocking_syscall_time_us: float | None
    syscalls_per_s: float | None
    cpu_cores: dict[str, float]
    cpu_share: dict[str, float]
    fairness_index: float | None
    throttled_period_ratio: float | None
    throttled_ms_per_s: float | None
    psi_cpu_some_pct: float | None
    psi_cgroup_cpu_some_pct: float | None
    psi_cgroup_cpu_full_pct: float | None
    sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ThreadTime:
    """One thread's time in the window, from scheduler events (monitors/breakdown.py)."""

    pid: int
    tid: int
    comm: str
    running_ns: int
    runnable_ns: int
    sleeping_ns: dict[str, int]  # syscall it slept in -> ns
    wall_ns: int  # its part of the window (born or died inside it: less)


@dataclass(frozen=True, slots=True)
class BreakdownOccupant:
    """A task that held the CPU while target threads waited for it (tid 0: idle)."""

    tid: int
    comm: str
    wait_ns: int  # target-thread waiting time charged to it
    pid: int | None = None  # its process, when it could be found (tid 0: the idle task)


@dataclass(frozen=True, slots=True)
class SchedTimes:
    """The raw material of a time breakdown, traced over `window_ns`."""

    window_ns: int
    threads: tuple[ThreadTime, ...]
    occupants: tuple[BreakdownOccupant, ...]
    run_queue_us: tuple[HistBucket, ...] = ()  # every wait, log2 buckets
    slice_us: tuple[HistBucket, ...] = ()  # every on-CPU slice, log2 buckets


@dataclass(frozen=True, slots=True)
class TimeShare:
    """One part of a breakdown: state running | throttled | queued | wakeup | sleeping |
    runnable (not split) | unaccounted; `detail` names whom it queued behind or the
    syscall it slept in."""

    state: str
    detail: str
    ns: int
    pct: float  # of the threads' wall time
    pid: int | None = None  # queued: the process that held the CPU (0: idle)


@dataclass(frozen=True, slots=True)
class Breakdown:
    """Where the wall time of a set of threads went; the shares add up to 100%."""

    label: str  # "app (pid 812)", "app"
    threads: int
    wall_ns: int
    shares: tuple[TimeShare, ...]
    source: str  # exact (scheduler events) | schedstat (runnable not split, no syscalls)

    def total(self, state: str) -> int:
        return sum(s.ns for s in self.shares if s.state == state)


@dataclass(frozen=True, slots=True)
class Cause:
    """One cause of waiting, ranked by `share_of_demand`: the part of the time the target
    wanted a CPU (running + runnable) that this cause took."""

    kind: str  # quota | neighbour | own_threads | observer | wakeup_latency | runnable_unsplit
    who: str
    ns: int
    share_of_demand: float
    share_of_wall: float
    sentence: str
    pids: tuple[int, ...] = ()  # the holders (neighbour), the target's own (own_threads)
    comms: tuple[str, ...] = ()
    cgroup: str | None = None  # the quota's group, or the neighbours' group or container
    advice: str = ""  # one line of what to do about it


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One sampling interval of an arm, for plots over time."""

    t_s: float  # end of the interval, from the start of the arm
    cpu_cores: dict[str, float]  # role -> CPUs used in the interval
    throttled_ms_per_s: float | None
    psi_some_pct: float | None  # the sandbox's (else the system's) cpu some
    psi_full_pct: float | None


@dataclass(frozen=True, slots=True)
class Verdict:
    contention: bool
    severity: str  # none | moderate | severe
    evidence: tuple[str, ...]
    causes: tuple[str, ...] = ()
    ranked: tuple[Cause, ...] = ()  # from the time breakdown, when traced


@dataclass(frozen=True, slots=True)
class ArmResult:
    name: str
    metrics: ArmMetrics
    verdict: Verdict
    breakdown: tuple[Breakdown, ...] = ()  # the target as a whole first, then per process
    series: tuple[SeriesPoint, ...] = ()
    latencies_ms: tuple[float, ...] = ()  # every successful request, in order of start
    run_queue_us: tuple[HistBucket, ...] = ()
    slice_us: tuple[HistBucket, ...] = ()


@dataclass(frozen=True, slots=True)
class ReferenceRow:
    """One row of the original document's "Contention vs No Contention" table, measured."""

    metric: str
    reference_baseline: str
    reference_contention: str
    baseline: str
    contention: str
    holds: bool | None  # None: not measurable here
    note: str


@dataclass(frozen=True, slots=True)
class SeparatingRow:
    metric: str
    baseline: float | None
    contention: float | None
    unit: str
    separates: bool


@dataclass(frozen=True, slots=True)
class DistributionTest:
    """Mann-Whitney U and Cliff's delta of one distribution, A vs B (analysis/compare.py)."""

    name: str
    unit: str
    n_a: int
    n_b: int
    median_a: float | None
    median_b: float | None
    p95_a: float | None
    p95_b: float | None
    median_ratio: float | None  # B / A
    cliffs_delta: float | None  # P(B > A) - P(B < A)
    effect: str  # negligible | small | medium | large | n/a
    p_value: float | None
    significant: bool


@dataclass(frozen=True, slots=True)
class MetricDelta:
    metric: str
    unit: str
    a: float | None
    b: float | None
    ratio: float | None  # b / a


@dataclass(frozen=True, slots=True)
class Comparison:
    a: str
    b: str
    tests: tuple[DistributionTest, ...]
    metrics: tuple[MetricDelta, ...]
    conclusion: str


@dataclass(frozen=True, slots=True)
class LabConfig:
    cpus: float | None
    memory_bytes: int | None
    noise_workers: int
    rate_per_s: float
    duration_s: float
    backend: str
    concurrency: int
    compute_n: int
    cost_per_request_ms: float | None
    cgroup_mode: str | None
    # `contend lab --engine`: the engine that ran each arm as a container; None: the bare
    # cgroup sandbox.
    engine: str | None = None


@dataclass(frozen=True, slots=True)
class LabResult:
    config: LabConfig
    arms: tuple[ArmResult, ...]
    reference: tuple[ReferenceRow, ...]
    separating: tuple[SeparatingRow, ...]
    comparisons: tuple[Comparison, ...] = ()  # baseline vs each other arm
    schema: str = SCHEMA_LAB

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "config": asdict(self.config),
            "arms": [
                {
                    "name": arm.name,
                    "metrics": _metrics_dict(arm.metrics),
                    "verdict": {
                        "contention": arm.verdict.contention,
                        "severity": arm.verdict.severity,
                        "evidence": list(arm.verdict.evidence),
                        "causes": list(arm.verdict.causes),
                    },
                    "diagnosis": [asdict(c) for c in arm.verdict.ranked],
                    "breakdown": [asdict(b) for b in arm.breakdown],
                    "series": [asdict(p) for p in arm.series],
                    "latencies_ms": list(arm.latencies_ms),
                    "histograms": {
                        "run_queue_us": [asdict(b) for b in arm.run_queue_us],
                        "slice_us": [asdict(b) for b in arm.slice_us],
                    },
                }
                for arm in self.arms
            ],
            "reference": [asdict(r) for r in self.reference],
            "separating": [asdict(r) for r in self.separating],
            "comparisons": [asdict(c) for c in self.comparisons],
        }


class SchemaError(ValueError):
    """A JSON document that is not what its schema says."""


def _build(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value) if len(inner) == 1 else value
    if is_dataclass(tp) and isinstance(tp, type):
        return from_dict(tp, value)
    if origin is tuple:
        item = args[0] if args else Any
        return tuple(_build(item, v) for v in value)
    if origin is dict:
        return {k: _build(args[1], v) for k, v in value.items()}
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls: type[_T], data: Any) -> _T:
    """A dataclass (nested ones, tuples, dicts and optionals included) from its asdict()
    form; keys it does not know are ignored, so newer files still load."""
    if not isinstance(data, dict):
        raise SchemaError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = _build(hints[f.name], data[f.name])
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise SchemaError(f"{cls.__name__}: {e}") from e


def lab_from_json_dict(d: dict[str, Any]) -> LabResult:
    """The inverse of LabResult.to_json_dict (contend.lab/1 and /2)."""
    schema = d.get("schema")
    if schema not in ("contend.lab/1", SCHEMA_LAB):
        raise SchemaError(f"not a contend lab result (schema {schema!r})")
    arms = []
    for a in d.get("arms", []):
        metrics = dict(a["metrics"])
        metrics["context_switches_per_s"] = {
            k: v for k, v in metrics["context_switches_per_s"].items() if k != "total"
        }
        verdict = dict(a["verdict"], ranked=a.get("diagnosis", []))
        hist = a.get("histograms", {})
        arms.append(
            ArmResult(
                name=a["name"],
                metrics=from_dict(ArmMetrics, metrics),
                verdict=from_dict(Verdict, verdict),
                breakdown=tuple(from_dict(Breakdown, b) for b in a.get("breakdown", [])),
                series=tuple(from_dict(SeriesPoint, p) for p in a.get("series", [])),
                latencies_ms=tuple(float(x) for x in a.get("latencies_ms", [])),
                run_queue_us=tuple(from_dict(HistBucket, b) for b in hist.get("run_queue_us", [])),
                slice_us=tuple(from_dict(HistBucket, b) for b in hist.get("slice_us", [])),
            )
        )
    return LabResult(
        config=from_dict(LabConfig, d["config"]),
        arms=tuple(arms),
        reference=tuple(from_dict(ReferenceRow, r) for r in d.get("reference", [])),
        separating=tuple(from_dict(SeparatingRow, r) for r in d.get("separating", [])),
        comparisons=tuple(from_dict(Comparison, c) for c in d.get("comparisons", [])),
    )


def _metrics_dict(m: ArmMetrics) -> dict[str, Any]:
    d = asdict(m)
    d["context_switches_per_s"]["total"] = m.context_switches_per_s.total
    return d


# --- contend diagnose (schema contend.diagnosis/1) --------------------------------------
#
# Changelog: contend.diagnosis/1 (0.3.0): first version; see README "Diagnosis JSON".

SCHEMA_DIAGNOSIS = "contend.diagnosis/1"


@dataclass(frozen=True, slots=True)
class CgroupSample:
    """One cgroup read at one moment: its CPU bandwidth counters, PSI and quota.

    `path` is the group's path within its hierarchy, as /proc/PID/cgroup prints it;
    `quota_us`/`period_us` are None without a quota (v2 `max`, v1 -1)."""

    path: str
    t_ns: int
    cpu: CgroupCpuStat | None
    pressure: Pressure | None
    quota_us: int | None
    period_us: int | None
    quota_from: str | None = None  # an ancestor whose quota is tighter than the group's
    burst_us: int | None = None  # cpu.max.burst / cpu.cfs_burst_us of the quota's group


@dataclass(frozen=True, slots=True)
class ProcessCpu:
    """A process's CPU time (utime + stime of all its threads) at one moment."""

    pid: int
    comm: str
    start_ticks: int
    cpu_ns: int
    cgroup: str | None = None  # its cpu cgroup path (v2 when there is one)


@dataclass(frozen=True, slots=True)
class Observation:
    """What a backend saw of a target over a window: the one input of a diagnosis.

    `sched_times`: scheduler events (bpftrace, tracefs), None from procfs. `snapshots`:
    the target's tasks sampled from /proc (schedstat, switches). `cgroups`: each cgroup
    of the target's tasks, read at the start and at the end. `task_cgroups`: pid ->
    cgroup path of the target's processes and of the tasks that held their CPUs.
    `roles`: pid -> a name for it (the lab's "noise"); `processes`: every process's CPU
    time at the start and the end (who took how much)."""

    target: str
    backend: str
    start_ns: int
    end_ns: int
    sched_times: SchedTimes | None
    snapshots: tuple[Snapshot, ...]
    cgroups: tuple[tuple[CgroupSample, CgroupSample], ...] = ()
    task_cgroups: dict[int, str] = field(default_factory=dict)
    psi_system: tuple[Pressure | None, Pressure | None] = (None, None)
    syscalls: tuple[SyscallRow, ...] | None = None
    roles: dict[int, str] = field(default_factory=dict)
    processes: tuple[tuple[ProcessCpu, ...], tuple[ProcessCpu, ...]] = ((), ())
    containers: dict[str, str] = field(default_factory=dict)  # cgroup path -> container
    lost_events: int = 0
    overhead: Overhead | None = None
    notes: tuple[str, ...] = ()
    exit_status: int | None = None
    system_wide: bool = False  # no target: rank the machine's processes and cgroups
    followed_cgroup: str | None = None  # the group whose counters each snapshot carries
    asleep: dict[int, int] = field(default_factory=dict)  # tid -> syscall nr at the start
    # contend's own processes (itself, its tracer): waits behind them are the measurement's
    observers: tuple[int, ...] = ()

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True, slots=True)
class TargetVerdict:
    contention: bool
    severity: str  # none | mild | moderate | severe
    # Run-queue wait that others caused (throttled, queued, or a holder procfs cannot
    # name; not wake-up latency on an idle CPU) per ns on a CPU, of all the target's threads.
    wait_to_run: float | None
    summary: str  # one sentence
    wait_per_slice_us: float | None = None  # that wait per slice on a CPU


@dataclass(frozen=True, slots=True)
class CgroupReport:
    """One cgroup of the target's tasks over the window (ratios 0..1 of the window)."""

    path: str
    container: str | None
    quota_cpus: float | None
    period_us: int | None
    usage_cpus: float | None
    throttled_periods_ratio: float | None
    throttled_s: float | None  # v1 sums over CPUs; v2 is wall time
    psi_some: float | None
    psi_full: float | None
    pids: tuple[int, ...]
    quota_from: str | None = None
    # The target's threads in this group (the machine's, with no target).
    running_ns: int = 0
    runnable_ns: int = 0
    wait_to_run: float | None = None
    severity: str = "none"


@dataclass(frozen=True, slots=True)
class ThreadReport:
    tid: int
    comm: str
    running_ns: int
    runnable_ns: int
    sleeping_ns: int
    wait_to_run: float | None
    slices: int | None = None  # times it went on a CPU (schedstat), when known per thread


@dataclass(frozen=True, slots=True)
class ProcessReport:
    pid: int
    comm: str
    cgroup: str | None
    breakdown: dict[str, int]  # state -> ns
    wait_to_run: float | None
    threads: tuple[ThreadReport, ...]
    severity: str = "none"
    wait_per_slice_us: float | None = None


@dataclass(frozen=True, slots=True)
class Indicator:
    """One row of the original document's table, measured for this target: whether the
    document's contention value is met, and whether that agrees with the verdict."""

    metric: str
    reference_contention: str
    measured: str
    value: float | None
    indicates_contention: bool | None  # None: not measurable on this backend
    agrees: bool | None
    note: str


@dataclass(frozen=True, slots=True)
class Diagnosis:
    target: str
    backend: str
    duration_s: float
    verdict: TargetVerdict
    causes: tuple[Cause, ...]
    breakdown: Breakdown
    processes: tuple[ProcessReport, ...]
    cgroups: tuple[CgroupReport, ...]
    psi_system_some: float | None
    indicators: tuple[Indicator, ...]
    sources: dict[str, str]
    run_queue_us: tuple[HistBucket, ...] = ()
    slice_us: tuple[HistBucket, ...] = ()
    lost_events: int = 0
    overhead: Overhead | None = None
    notes: tuple[str, ...] = ()
    exit_status: int | None = None
    system_wide: bool = False  # no target: `processes` and `cgroups` are the top waiters
    # Per sample: the target's CPUs "running" and "waiting" (cpu_cores), its group's
    # throttling and PSI.
    series: tuple[SeriesPoint, ...] = ()
    schema: str = SCHEMA_DIAGNOSIS

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "target": self.target,
            "system_wide": self.system_wide,
            "backend": self.backend,
            "duration_s": self.duration_s,
            "verdict": asdict(self.verdict),
            "causes": [asdict(c) for c in self.causes],
            "breakdown": breakdown_states(self.breakdown),
            "shares": [asdict(s) for s in self.breakdown.shares],
            "wall_ns": self.breakdown.wall_ns,
            "threads": self.breakdown.threads,
            "breakdown_source": self.breakdown.source,
            "processes": [asdict(p) for p in self.processes],
            "cgroups": [asdict(c) for c in self.cgroups],
            "psi_system_some": self.psi_system_some,
            "indicators": [asdict(i) for i in self.indicators],
            "sources": dict(self.sources),
            "histograms": {
                "run_queue_us": [asdict(b) for b in self.run_queue_us],
                "slice_us": [asdict(b) for b in self.slice_us],
            },
            "lost_events": self.lost_events,
            "overhead": asdict(self.overhead) if self.overhead is not None else None,
            "notes": list(self.notes),
            "exit_status": self.exit_status,
            "series": [asdict(p) for p in self.series],
        }


# The breakdown's states, in the order they are listed (and stacked in plots).
BREAKDOWN_STATES = (
    "running", "throttled", "queued", "wakeup", "runnable", "sleeping", "unaccounted",
)  # fmt: skip


def breakdown_states(b: Breakdown) -> dict[str, int]:
    """{state: ns} of a breakdown, every state present (0 where none)."""
    return {state: b.total(state) for state in BREAKDOWN_STATES}


def diagnosis_from_json_dict(d: dict[str, Any]) -> Diagnosis:
    """The inverse of Diagnosis.to_json_dict."""
    if d.get("schema") != SCHEMA_DIAGNOSIS:
        raise SchemaError(f"not a contend diagnosis (schema {d.get('schema')!r})")
    hist = d.get("histograms", {})
    overhead = d.get("overhead")
    return Diagnosis(
        target=str(d["target"]),
        backend=str(d["backend"]),
        duration_s=float(d["duration_s"]),
        verdict=from_dict(TargetVerdict, d["verdict"]),
        causes=tuple(from_dict(Cause, c) for c in d.get("causes", [])),
        breakdown=Breakdown(
            label=str(d["target"]),
            threads=int(d.get("threads", 0)),
            wall_ns=int(d.get("wall_ns", 0)),
            shares=tuple(from_dict(TimeShare, s) for s in d.get("shares", [])),
            source=str(d.get("breakdown_source", "")),
        ),
        processes=tuple(from_dict(ProcessReport, p) for p in d.get("processes", [])),
        cgroups=tuple(from_dict(CgroupReport, c) for c in d.get("cgroups", [])),
        psi_system_some=d.get("psi_system_some"),
        indicators=tuple(from_dict(Indicator, i) for i in d.get("indicators", [])),
        sources=dict(d.get("sources", {})),
        run_queue_us=tuple(from_dict(HistBucket, b) for b in hist.get("run_queue_us", [])),
        slice_us=tuple(from_dict(HistBucket, b) for b in hist.get("slice_us", [])),
        lost_events=int(d.get("lost_events", 0)),
        overhead=from_dict(Overhead, overhead) if overhead is not None else None,
        notes=tuple(d.get("notes", [])),
        exit_status=d.get("exit_status"),
        system_wide=bool(d.get("system_wide", False)),
        series=tuple(from_dict(SeriesPoint, p) for p in d.get("series", [])),
    )


# --- contend trace (schema contend.trace/1) ----------------------------------------------

SCHEMA_TRACE = "contend.trace/1"


@dataclass(frozen=True, slots=True)
class HistBucket:
    """One log2 bucket: values in [low, high] (inclusive, as bpftrace prints them)."""

    low: int
    high: int
    count: int


@dataclass(frozen=True, slots=True)
class SyscallRow:
    pid: int
    comm: str
    syscall: str
    count: int
    errors: int
    total_ns: int
    avg_ns: float | None
    max_ns: int
    blocking: bool
    timed: int = 0  # calls whose latency was measured (all that returned, or the sample)


@dataclass(frozen=True, slots=True)
class RunQueueLatency:
    count: int
    avg_ns: float | None
    p50_ns: float | None
    p99_ns: float | None
    hist: tuple[HistBucket, ...]  # microseconds


@dataclass(frozen=True, slots=True)
class CpuRow:
    pid: int
    tid: int
    comm: str
    on_cpu_ns: int
    slices: int
    voluntary_switches: int
    involuntary_switches: int
    wakeups: int | None  # None: the backend cannot see wakeups (procfs)
    run_queue_latency: RunQueueLatency
    slice_hist: tuple[HistBucket, ...]  # microseconds


@dataclass(frozen=True, slots=True)
class PreemptorRow:
    """Who took the CPU when a target thread was preempted."""

    comm: str
    pid: int
    count: int


@dataclass(frozen=True, slots=True)
class ProcessEvent:
    ts_ns: int
    event: str  # fork | exec | thread | exit
    pid: int
    tid: int
    ppid: int | None
    comm: str
    exit_code: int | None = None
    signal: int | None = None


@dataclass(frozen=True, slots=True)
class IoRow:
    pid: int
    comm: str
    op: str
    count: int
    bytes: int


@dataclass(frozen=True, slots=True)
class FileRow:
    pid: int
    path: str
    op: str
    count: int
    bytes: int


@dataclass(frozen=True, slots=True)
class SampledTrace:
    """What the procfs backend of `contend trace` collected: snapshots of the target's
    tasks and the lifecycle events seen between them."""

    snapshots: tuple[Snapshot, ...]
    events: tuple[ProcessEvent, ...]
    duration_s: float
    exit_status: int | None
    notes: tuple[str, ...]
    tracer_cpu_s: float | None


@dataclass(frozen=True, slots=True)
class Overhead:
    tracer_cpu_s: float | None
    events: int


@dataclass(frozen=True, slots=True)
class Occupant:
    """A task that held a CPU while a target thread waited for it (tracefs backend)."""

    comm: str
    tid: int
    ns: int


@dataclass(frozen=True, slots=True)
class WaitRow:
    """One run-queue wait of a target thread: runnable at `ts_ns`, on CPU `cpu` after
    `wait_ns`; who ran on that CPU meanwhile (longest first)."""

    ts_ns: int  # CLOCK_MONOTONIC
    pid: int
    tid: int
    comm: str
    cpu: int
    wait_ns: int
    ran: tuple[Occupant, ...]


@dataclass(frozen=True, slots=True)
class TraceResult:
    backend: str
    target: str
    monitors: tuple[str, ...]
    duration_s: float
    lost_events: int
    overhead: Overhead
    syscalls: tuple[SyscallRow, ...] = ()
    cpu: tuple[CpuRow, ...] = ()
    preemptors: tuple[PreemptorRow, ...] = ()
    fairness_index: float | None = None
    process: tuple[ProcessEvent, ...] = ()
    process_syscalls: tuple[tuple[int, str, int], ...] = ()  # (pid, comm, syscalls)
    io: tuple[IoRow, ...] = ()
    files: tuple[FileRow, ...] = ()
    notes: tuple[str, ...] = ()
    exit_status: int | None = None
    syscall_latency: str = "exact"  # or "sampled 1/16": counts and errors stay exact
    # tracefs backend only (empty elsewhere): records lost per CPU, the longest run-queue
    # waits of target threads with who held the CPU, and who held it over all waits.
    lost_by_cpu: tuple[int, ...] = ()
    longest_waits: tuple[WaitRow, ...] = ()
    waited_behind: tuple[Occupant, ...] = ()
    schema: str = SCHEMA_TRACE

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["process_syscalls"] = [
            {"pid": pid, "comm": comm, "syscalls": n} for pid, comm, n in self.process_syscalls
        ]
        return d


@dataclass(frozen=True, slots=True)
class SchedEvent:
    """A target thread going on or off CPU (cpu monitor --events)."""

    ts_ns: int  # CLOCK_MONOTONIC
    on_cpu: bool
    pid: int
    tid: int
    comm: str
    ran_ns: int | None = None  # off-CPU events: how long the slice was


@dataclass(frozen=True, slots=True)
class IoEvent:
    """One read/write-like call of a target (io monitor --events)."""

    ts_ns: int
    pid: int
    op: str
    result: int
    comm: str


TraceEvent = ProcessEvent | SchedEvent | IoEvent


# --- contend dtrace --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AggregationSpec:
    """A D aggregation as the script defines it: how to print what bpftrace returns.

    `key_kinds` per key: "int", "str", "syscall" (a syscall number to print by name) or
    "walltime"; `order` is its place of first definition in the script (DTrace prints
    the aggregations at exit in that order).
    """

    name: str
    func: str  # count | sum | avg | min | max | quantize | lquantize
    key_kinds: tuple[str, ...]
    order: int
    lquantize: tuple[int, int, int] | None = None  # (lo, hi, step)


# --- the timeline (tracefs backend; rendered as a Chrome/Perfetto trace) -----------------


@dataclass(frozen=True, slots=True)
class CpuSlice:
    """A task on a CPU from `start_ns` to `end_ns` (CLOCK_MONOTONIC)."""

    pid: int
    tid: int
    cpu: int
    start_ns: int
    end_ns: int


@dataclass(frozen=True, slots=True)
class Wakeup:
    ts_ns: int
    pid: int
    tid: int
    waker_tid: int
    cpu: int


@dataclass(frozen=True, slots=True)
class CounterSample:
    ts_ns: int
    cpu: int
    value: int


@dataclass(frozen=True, slots=True)
class Timeline:
    """What a person looks at: each target thread's slices, its wakeups, who held each
    CPU (`cpu_slices`, named by `names[tid]`) and the target threads waiting per CPU."""

    threads: tuple[tuple[int, int, str], ...]  # (pid, tid, comm) of the target threads
    slices: tuple[CpuSlice, ...]
    wakeups: tuple[Wakeup, ...]
    cpu_slices: tuple[CpuSlice, ...]
    names: dict[int, str]
    runnable: tuple[CounterSample, ...]


@dataclass(frozen=True, slots=True)
class ArmTimeline:
    """One lab arm's scheduler timeline (tracefs), for the lab's Perfetto file: the arm's
    window, its `Timeline`, the run-queue waits of the traced threads (`pid`, `tid`, the
    CPU it then ran on), who plays which role (pid -> app, noise, ...) and the arm's
    samples (throttling, PSI)."""

    name: str
    start_ns: int
    end_ns: int
    timeline: Timeline
    waits: tuple[CpuSlice, ...]
    roles: dict[int, str]
    snapshots: tuple[Snapshot, ...]


# --- the continuous per-cgroup accounting (top, exporter) --------------------------------


@dataclass(frozen=True, slots=True)
class TaskCounters:
    """One thread's scheduler counters since it started (/proc/PID/task/TID/schedstat:
    on-CPU ns, run-queue wait ns, slices on a CPU)."""

    pid: int
    tid: int
    on_cpu_ns: int
    wait_ns: int
    slices: int


@dataclass(frozen=True)
class SchedInterval:
    """What the in-kernel accounting saw between two readings (bpftrace, root): per
    thread, its run-queue waits that ended (total ns, and counts per log2 bucket keyed
    by the bucket's low bound in us), and per (waiting thread, holder thread) the ns it
    waited while that thread held its CPU (holder 0: the CPU was idle; -1: a part of a
    wait older than the CPU's recent switches, which is not split)."""

    wait_ns: dict[int, int] = field(default_factory=dict)
    buckets: dict[int, dict[int, int]] = field(default_factory=dict)
    behind: dict[tuple[int, int], int] = field(default_factory=dict)
    lost_events: int = 0


@dataclass(frozen=True, slots=True)
class GroupNames:
    """Who a cgroup path says runs there (None where it says nothing)."""

    container: str | None = None  # the short id
    unit: str | None = None  # a systemd unit
    pod_uid: str | None = None  # a Kubernetes pod
    container_name: str | None = None  # where an engine on the machine knows the id


@dataclass(frozen=True)
class MachineSample:
    """Every thread's counters and every cgroup holding a task, read at one moment.

    `cgroup_of`: pid -> the cgroup path of the process (the cpu controller's on v1);
    `groups`: path -> that group's counters; `own_cpu_ns`: the reader's own CPU time."""

    t_ns: int
    tasks: tuple[TaskCounters, ...]
    cgroup_of: dict[int, str]
    comms: dict[int, str]
    groups: dict[str, CgroupSample]
    psi: Pressure | None
    own_cpu_ns: int
    read_ns: int = 0  # how long the reading took
    names: dict[str, GroupNames] = field(default_factory=dict)
    sched: SchedInterval | None = None  # the in-kernel accounting's, with root


@dataclass(frozen=True, slots=True)
class CgroupAccount:
    """One cgroup as the accounting engine keeps it: counters since the engine first saw
    it (they only go up), the state now, and rates over the last interval.

    `path` is "other" for the groups beyond `--max-cgroups`, summed."""

    path: str
    container: str | None
    unit: str | None
    pod_uid: str | None
    processes: int
    # counters (seconds, periods) since first seen
    usage_s: float | None
    periods: int
    throttled_periods: int
    throttled_s: float
    throttled_below_limit_periods: int
    bursts: int | None
    burst_s: float | None
    psi_some_s: float | None
    psi_full_s: float | None
    run_s: float  # on-CPU time of its tasks (schedstat), exited tasks' included
    wait_s: float  # their run-queue wait (schedstat), exited tasks' included
    slices: int
    # now
    quota_cpus: float | None
    quota_from: str | None
    burst_limit_s: float | None
    # the last interval
    cpu_cores: float | None
    throttled_ratio: float | None  # of its periods
    psi_some_ratio: float | None
    psi_full_ratio: float | None
    wait_per_s: float
    wait_to_run: float | None
    wait_per_slice_us: float | None
    severity: str
    reason: str  # none | quota | runqueue: why it is starved, if it is
    # With the in-kernel accounting (root): each wait's duration (counts per log2 bucket,
    # keyed by the bucket's low bound in us), and holder -> seconds waited behind it (a
    # cgroup's path, "other", "idle", "quota" or "unknown"), since first seen.
    container_name: str | None = None
    wait_source: str = "schedstat"  # or "bpftrace"
    waits: int | None = None
    wait_buckets: tuple[tuple[int, int], ...] = ()
    behind: tuple[tuple[str, float], ...] = ()
    top_holder: str | None = None  # who it waited behind most in the last interval


@dataclass(frozen=True)
class AccountingSnapshot:
    """The engine's state after its latest sample."""

    t_ns: int
    interval_s: float  # of the last step (0 before a second sample)
    samples: int
    cgroups: tuple[CgroupAccount, ...]
    psi_some_s: float | None  # the machine's, since the engine started
    psi_some_ratio: float | None  # the machine's, over the last interval
    own_cpu_s: float  # the engine's own CPU time since it started
    read_s: float  # the last sample's read time
    dropped_cgroups: int  # groups summed into "other" by --max-cgroups
    cpus: int
    backend: str = "procfs"
    lost_events: int = 0  # since the engine started
    unnamed_waits_s: float = 0.0  # waits of threads that exited before they were named


@dataclass(frozen=True, slots=True)
class TaskRow:
    """A process (or a thread) over the last interval, for `top`'s drill-down."""

    id: int  # pid, or tid
    comm: str
    cgroup: str
    threads: int
    cpu_cores: float
    wait_per_s: float
    wait_to_run: float | None
    severity: str
    top_holder: str | None  # "comm (PID n)", "idle", "unknown"; None without root


# --- contend advise (schema contend.advice/1) ---------------------------------------------

# Changelog: contend.advice/1 (0.4.0): first version; see README "advise".
SCHEMA_ADVICE = "contend.advice/1"


@dataclass(frozen=True, slots=True)
class ThreadDemand:
    """One thread's demand for a CPU, from a recording: each time it wanted one (woke, or
    was born runnable), when that was and how much CPU it then used before it slept."""

    tid: int
    pid: int
    comm: str
    arrivals_ns: tuple[int, ...]  # from the start of the window
    work_ns: tuple[int, ...]  # CPU time of each


@dataclass(frozen=True, slots=True)
class Demand:
    """A group's demand: its threads', over a window, on a machine of `cpus` CPUs."""

    target: str
    window_ns: int
    cpus: int
    threads: tuple[ThreadDemand, ...]
    # CLOCK_MONOTONIC at the window's start: a group's periods fall on multiples of the
    # period of that clock (its timer is forwarded from 0 by whole periods).
    start_ns: int = 0


@dataclass(frozen=True, slots=True)
class Prediction:
    quota_cpus: float | None  # None: unlimited, the baseline the delays are measured from
    burst_cpus: float | None
    periods: int
    throttled_periods: int
    throttled_periods_ratio: float | None
    throttled_s: float  # summed over CPUs, as cpu.stat's throttled time
    delay_per_cpu_s: float  # added completion delay per CPU-second of work
    latency_ms: dict[str, float] | None = None  # {p50, p95} where requests were recorded


@dataclass(frozen=True, slots=True)
class DemandSummary:
    mean_cpus: float
    p95_cpus_per_period: float
    max_parallel: int
    work_s: float
    bursts: int


@dataclass(frozen=True, slots=True)
class Advice:
    target: str
    duration_s: float
    period_us: int
    slice_us: int
    cpus: int
    slo_throttled: float
    demand: DemandSummary
    predictions: tuple[Prediction, ...]
    recommended_quota_cpus: float | None  # None: no quota up to the machine's CPUs meets it
    margin: str
    assumptions: tuple[str, ...]
    notes: tuple[str, ...] = ()  # about the recording (events lost)
    schema: str = SCHEMA_ADVICE

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


SCHEMA_ADVICE_CHECK = "contend.advice-check/1"


@dataclass(frozen=True, slots=True)
class MeasuredQuota:
    """What the kernel did to the lab's app at one quota (`contend lab --verify-advice`):
    its group's cpu.stat over the arm, and the load's latency (answered requests)."""

    quota_cpus: float
    periods: int
    throttled_periods: int
    throttled_periods_ratio: float | None
    latency_ms: dict[str, float] | None
    requests: int
    errors: int


@dataclass(frozen=True)
class AdviceCheck:
    """The lab's advice, from a recording of its app unlimited under load, beside what
    arms at those quotas then measured."""

    advice: Advice
    measured: tuple[MeasuredQuota, ...]
    rate_per_s: float
    duration_s: float
    recorded_latency_ms: dict[str, float] | None
    schema: str = SCHEMA_ADVICE_CHECK

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)
