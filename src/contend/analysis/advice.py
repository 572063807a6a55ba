"""`contend advise`: what a CPU quota would do to a recorded demand, by simulating the
kernel's CFS bandwidth control on it.

The demand (`model.Demand`) says, per thread of the group, each moment it wanted a CPU and
how much CPU it then used. `simulate` replays it on the group's CPUs under a quota,
following Documentation/scheduler/sched-bwc.rst and kernel/sched/fair.c:

- a global pool (`cfs_b->runtime`) is refilled with the quota at each period by the period
  timer, and capped at quota + burst (`__refill_cfs_bandwidth_runtime`; "cpu.max.burst");
- each CPU's queue of the group takes runtime from it in slices of
  `sched_cfs_bandwidth_slice_us` when its local runtime runs out
  (`__assign_cfs_rq_runtime`, which also starts the timer and clears `idle`); a queue
  that gets none is throttled until the timer (or the slack timer) hands it runtime;
- a queue that empties gives back its local runtime above `min_cfs_rq_runtime` (1 ms),
  and the slack timer hands it to throttled queues 5 ms later (`return_cfs_rq_runtime`);
- the period timer counts `nr_periods` each time it fires, `nr_throttled` when a queue is
  throttled then, and stops after a period in which no runtime was taken
  (`do_sched_cfs_period_timer`): periods of an idle group are not counted.

Threads on one CPU share it equally; a thread's next demand waits for its previous one to
be done; runtime is charged every `STEP_NS` (the kernel charges at ticks and switches).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from contend.analysis.metrics import percentile
from contend.model import Advice, Demand, DemandSummary, Prediction

STEP_NS = 100_000  # 100 us: a thousandth of the default period
MIN_CFS_RQ_RUNTIME_NS = 1_000_000  # kernel/sched/fair.c min_cfs_rq_runtime
SLACK_DELAY_NS = 5_000_000  # cfs_bandwidth_slack_period
DEFAULT_SLICE_US = 5000  # sched_cfs_bandwidth_slice_us's default
GRID_CPUS = 0.05  # the recommendation's resolution
MAX_TAIL = 20  # a quota far below the demand: stop after 20 windows of backlog
# Where the period grid falls is where the quota will be set: unknown, so each quota is
# simulated with the grid at 0, 1/4, 1/2 and 3/4 of a period from the recording's start.
PHASES = 4

ASSUMPTIONS = (
    "the demand as recorded: each time a thread woke, it wakes at the same moment and "
    "needs the same CPU time; a changed arrival pattern (a client that waits for slower "
    "answers) is not modelled",
    "the group alone on its CPUs: other tenants' load, and cache effects of being "
    "descheduled, are left out",
    "a thread's next demand waits for its previous one to be done; threads on one CPU "
    "share it equally",
    "CFS bandwidth control as Documentation/scheduler/sched-bwc.rst describes it: a pool "
    "refilled with the quota each period (capped at quota + burst), handed to each CPU in "
    "slices, unused runtime above 1 ms given back when a CPU's queue empties, idle periods "
    "not counted; runtime charged every 0.1 ms (the kernel: at ticks and switches)",
    "the period grid falls where the quota is set, which the recording cannot know: each "
    "prediction is the mean over grids at 0, 1/4, 1/2 and 3/4 of a period",
)


@dataclass
class _Queue:
    """The group's run queue on one CPU (a cfs_rq)."""

    remaining: int = 0  # local runtime
    throttled: bool = False
    throttled_at: int = 0
    threads: list[int] = field(default_factory=list)


@dataclass
class _Run:
    """The result of one simulation."""

    periods: int = 0
    throttled_periods: int = 0
    throttled_ns: int = 0
    finish_ns: list[list[int]] = field(default_factory=list)  # per thread, per demand
    work_per_period: list[int] = field(default_factory=list)
    max_parallel: int = 0


class _Bandwidth:
    """cfs_bandwidth: the pool, its period timer and the per-CPU queues."""

    def __init__(
        self, quota: int | None, period: int, burst: int, slice_ns: int, cpus: int, phase: int
    ) -> None:
        self.quota, self.period, self.burst, self.slice = quota, period, burst, slice_ns
        self.phase = phase  # how far into a period of the grid t = 0 is
        # Set long before: the idle periods since filled the pool up to quota + burst.
        self.pool = quota + burst if quota is not None else 0
        self.active = False
        self.idle = False
        self.next_fire = 0
        self.slack_at: int | None = None
        self.queues = [_Queue() for _ in range(cpus)]
        self.run = _Run()

    def start(self, t: int) -> None:
        """start_cfs_bandwidth: the timer forwarded by whole periods (from where the quota
        was set: the grid never moves) to the first period end after t."""
        if not self.active:
            self.active = True
            self.next_fire = ((t + self.phase) // self.period + 1) * self.period - self.phase

    def assign(self, q: _Queue, t: int) -> None:
        """__assign_cfs_rq_runtime: top the queue's runtime up to a slice from the pool."""
        self.start(t)
        if self.pool > 0:
            amount = min(self.pool, self.slice - q.remaining)
            self.pool -= amount
            q.remaining += amount
            self.idle = False

    def throttle(self, q: _Queue, t: int) -> None:
        q.throttled, q.throttled_at = True, t

    def distribute(self, t: int) -> None:
        """distribute_cfs_runtime: each throttled queue gets what it is short of, plus 1."""
        for q in self.queues:
            if q.throttled and self.pool > 0:
                amount = min(self.pool, -q.remaining + 1)
                self.pool -= amount
                q.remaining += amount
                if q.remaining > 0:
                    q.throttled = False
                    self.run.throttled_ns += t - q.throttled_at

    def fire(self) -> None:
        """do_sched_cfs_period_timer at `next_fire`."""
        t = self.next_fire
        throttled = any(q.throttled for q in self.queues)
        self.run.periods += 1
        assert self.quota is not None
        self.pool = min(self.pool + self.quota, self.quota + self.burst)
        if self.idle and not throttled:
            self.active = False  # the group went idle: no more periods until it runs
            return
        self.next_fire = t + self.period
        if not throttled:
            self.idle = True
            return
        self.run.throttled_periods += 1
        self.distribute(t)
        self.idle = False

    def give_back(self, q: _Queue, t: int) -> None:
        """return_cfs_rq_runtime, when the queue's last thread leaves it."""
        slack = q.remaining - MIN_CFS_RQ_RUNTIME_NS
        if slack > 0:
            q.remaining -= slack
            self.pool += slack
            if self.pool > self.slice and any(x.throttled for x in self.queues):
                self.slack_at = t + SLACK_DELAY_NS


def simulate(
    demand: Demand,
    quota_cpus: float | None,
    period_us: int = 100_000,
    slice_us: int = DEFAULT_SLICE_US,
    burst_cpus: float = 0.0,
    phase: float = 0.0,
) -> _Run:
    """Replay the demand under a quota (None: unlimited) and count what the kernel would.
    Its periods end at `(k - phase) * period` from the recording's start (the grid of the
    group's period timer: measured here, it falls neither where the quota was written nor
    on multiples of the period of CLOCK_MONOTONIC, so a prediction is made at several)."""
    period = period_us * 1000
    quota = None if quota_cpus is None else max(1, round(quota_cpus * period))
    # tg_set_cfs_bandwidth refuses a burst above the quota: at most 2 quotas a period.
    burst = min(round(burst_cpus * period), quota) if quota is not None else 0
    phase_ns = round(phase * period) % period
    bw = _Bandwidth(quota, period, burst, slice_us * 1000, demand.cpus, phase_ns)
    run = bw.run
    # The quota was set long before: its timer starts with the first demand (the periods
    # an idle group counts after its quota is written are not the demand's).
    threads = demand.threads
    n = len(threads)
    nxt = [0] * n  # index of each thread's next demand
    left = [0] * n  # CPU time still needed by its current one
    where = [-1] * n  # the queue it is on, -1: asleep
    last = [i % max(demand.cpus, 1) for i in range(n)]
    run.finish_ns = [[] for _ in range(n)]
    # (when, thread): each thread's next demand, once its previous one is done.
    pending = [(t.arrivals_ns[0], i) for i, t in enumerate(threads) if t.arrivals_ns]
    heapq.heapify(pending)
    runnable = 0
    limit = demand.window_ns * MAX_TAIL + period
    t = 0
    while pending or runnable:
        if t > limit:
            break
        while bw.active and t >= bw.next_fire:
            bw.fire()
        if bw.slack_at is not None and t >= bw.slack_at:
            bw.slack_at = None
            bw.distribute(t)
        while pending and pending[0][0] <= t:
            _, i = heapq.heappop(pending)
            left[i] = threads[i].work_ns[nxt[i]]
            queues = bw.queues
            k = (
                last[i]
                if not queues[last[i]].threads
                else min(
                    range(len(queues)), key=lambda c: (len(queues[c].threads), queues[c].throttled)
                )
            )
            queues[k].threads.append(i)
            where[i] = last[i] = k
            runnable += 1
        run.max_parallel = max(run.max_parallel, runnable)
        ran = False
        for q in bw.queues:
            if not q.threads or q.throttled:
                continue
            if quota is not None and q.remaining <= 0:
                bw.assign(q, t)
                if q.remaining <= 0:
                    bw.throttle(q, t)
                    continue
            share = STEP_NS // len(q.threads)
            used = 0
            for i in list(q.threads):
                got = min(share, left[i])
                left[i] -= got
                used += got
                if left[i] == 0:
                    q.threads.remove(i)
                    where[i] = -1
                    runnable -= 1
                    run.finish_ns[i].append(t + STEP_NS)
                    nxt[i] += 1
                    if nxt[i] < len(threads[i].arrivals_ns):
                        when = max(threads[i].arrivals_ns[nxt[i]], t + STEP_NS)
                        heapq.heappush(pending, (when, i))
            ran = True
            p = (t + phase_ns) // period
            while len(run.work_per_period) <= p:
                run.work_per_period.append(0)
            run.work_per_period[p] += used
            if quota is not None:
                q.remaining -= used
                if not q.threads:
                    bw.give_back(q, t)
        if ran:
            t += STEP_NS
            continue
        # Nothing ran: asleep, or throttled. Jump to the next thing that can change that.
        events = [pending[0][0]] if pending else []
        if bw.active:
            events.append(bw.next_fire)
        if bw.slack_at is not None:
            events.append(bw.slack_at)
        if not events:
            break
        t = max(t + STEP_NS, min(events))
    # The periods that end in the recorded window, or until its backlog is done.
    while bw.active and quota is not None and bw.next_fire <= max(t, demand.window_ns):
        bw.fire()
    for q in bw.queues:
        if q.throttled:
            run.throttled_ns += t - q.throttled_at
    return run


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]


def _delay(run: _Run, base: _Run) -> int:
    return sum(
        f - b
        for mine, theirs in zip(run.finish_ns, base.finish_ns, strict=True)
        for f, b in zip(mine, theirs, strict=False)
    )


# The client reads an answer this long after the demand that wrote it ended, at most.
ANSWER_SLACK_NS = 1_000_000


def request_latencies(
    demand: Demand, requests: Sequence[tuple[int, int]], runs: list[_Run], base: _Run
) -> list[float]:
    """Each request's latency (ms) under the quota of `runs`, at each of their grids: as
    recorded, plus the most by which the simulation finished later a demand of the group
    that ended while the request was open (`requests`: (start, latency) in ns of
    CLOCK_MONOTONIC, as the load generator stamped them). The most, not the last: the
    thread that writes the answer (a server's event loop) waits for the one that computed
    it, a dependency the demand does not hold. A request with no demand of the group in
    it keeps its latency."""
    ends: list[tuple[int, int, int]] = []  # (base finish, thread, index)
    for i, finishes in enumerate(base.finish_ns):
        ends += [(f, i, k) for k, f in enumerate(finishes)]
    ends.sort()
    keys = [e[0] for e in ends]
    out: list[float] = []
    for run in runs:
        horizon = max((f for t in run.finish_ns for f in t), default=0)
        for start, latency in requests:
            lo = start - demand.start_ns
            hi = lo + latency + ANSWER_SLACK_NS
            shift = 0
            for j in range(bisect.bisect_left(keys, lo), bisect.bisect_right(keys, hi)):
                f, i, k = ends[j]
                mine = run.finish_ns[i]
                # Not done within the simulation's horizon: at least until it stopped.
                done = mine[k] if k < len(mine) else max(horizon, f)
                shift = max(shift, done - f)
            out.append((latency + shift) / 1e6)
    return out


def latency_summary(values: list[float]) -> dict[str, float] | None:
    """{p50, p95} of latencies (ms); None without any."""
    ordered = sorted(values)
    p50, p95 = percentile(ordered, 50), percentile(ordered, 95)
    return {"p50": p50, "p95": p95} if p50 is not None and p95 is not None else None


def _prediction(
    quota: float | None,
    burst: float | None,
    runs: list[_Run],
    base: _Run,
    work_ns: int,
    latency_ms: dict[str, float] | None = None,
) -> Prediction:
    """One quota's prediction, over its runs at each phase: the throttled ratio of all
    their periods together; counts, times and delays their means."""
    n = len(runs)
    periods = sum(r.periods for r in runs)
    throttled = sum(r.throttled_periods for r in runs)
    delay = sum(_delay(r, base) for r in runs) / n
    return Prediction(
        quota_cpus=quota,
        burst_cpus=burst,
        periods=round(periods / n),
        throttled_periods=round(throttled / n),
        throttled_periods_ratio=throttled / periods if quota is not None and periods else None,
        throttled_s=sum(r.throttled_ns for r in runs) / n / 1e9,
        delay_per_cpu_s=delay / work_ns if work_ns else 0.0,
        latency_ms=latency_ms,
    )


def advise(
    demand: Demand,
    quotas: tuple[float, ...] = (),
    *,
    slo_throttled: float = 0.05,
    period_us: int = 100_000,
    slice_us: int = DEFAULT_SLICE_US,
    burst_cpus: float = 0.0,
    notes: tuple[str, ...] = (),
    requests: Sequence[tuple[int, int]] = (),
) -> Advice:
    """Predictions at each quota asked (and unlimited), and the smallest quota on a
    0.05-CPU grid whose predicted throttled periods stay within `slo_throttled`; `notes`
    (about the recording) are passed on. With `requests` ((start, latency) ns, recorded
    beside the demand), each prediction has their latency's p50 and p95 too."""
    work_ns = sum(sum(t.work_ns) for t in demand.threads)
    base = simulate(demand, None, period_us, slice_us)
    cache: dict[float, list[_Run]] = {}

    def at(q: float) -> list[_Run]:
        if q not in cache:
            cache[q] = [
                simulate(demand, q, period_us, slice_us, burst_cpus, k / PHASES)
                for k in range(PHASES)
            ]
        return cache[q]

    def ratio(q: float) -> float:
        runs = at(q)
        periods = sum(r.periods for r in runs)
        return sum(r.throttled_periods for r in runs) / periods if periods else 0.0

    def meets(q: float) -> bool:
        return ratio(q) <= slo_throttled

    # Fewer throttled periods with more quota: the smallest grid point that meets the SLO.
    lo, hi = 1, max(1, round(demand.cpus / GRID_CPUS))
    recommended: float | None = None
    if meets(hi * GRID_CPUS):
        while lo < hi:
            mid = (lo + hi) // 2
            if meets(round(mid * GRID_CPUS, 2)):
                hi = mid
            else:
                lo = mid + 1
        recommended = round(lo * GRID_CPUS, 2)
    burst = burst_cpus or None

    def latency(runs: list[_Run]) -> dict[str, float] | None:
        return (
            latency_summary(request_latencies(demand, requests, runs, base)) if requests else None
        )

    predictions = [_prediction(None, None, [base], base, work_ns, latency([base]))]
    asked = sorted(set(quotas) | ({recommended} if recommended is not None else set()))
    predictions += [_prediction(q, burst, at(q), base, work_ns, latency(at(q))) for q in asked]
    if recommended is None:
        margin = f"no quota up to {demand.cpus} CPUs keeps throttling within the SLO"
    else:
        margin = f"{ratio(recommended):.1%} of periods"
        below = round(recommended - GRID_CPUS, 2)
        if below > 0:
            margin += f" (at {below:g}: {ratio(below):.1%})"
    window_s = demand.window_ns / 1e9
    per_period = [w / (period_us * 1000) for w in base.work_per_period]
    return Advice(
        target=demand.target,
        duration_s=window_s,
        period_us=period_us,
        slice_us=slice_us,
        cpus=demand.cpus,
        slo_throttled=slo_throttled,
        demand=DemandSummary(
            mean_cpus=work_ns / demand.window_ns if demand.window_ns else 0.0,
            p95_cpus_per_period=_percentile(per_period, 0.95),
            max_parallel=base.max_parallel,
            work_s=work_ns / 1e9,
            bursts=sum(len(t.work_ns) for t in demand.threads),
        ),
        predictions=tuple(predictions),
        recommended_quota_cpus=recommended,
        margin=margin,
        notes=notes,
        assumptions=ASSUMPTIONS,
    )
