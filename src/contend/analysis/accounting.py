"""The continuous per-cgroup accounting: machine samples folded into counters that only
go up, and each cgroup's state over the last interval. `contend exporter` exposes it to
Prometheus and `contend top` shows it; the verdict per group is `diagnose`'s
(`severity_of`, the same thresholds).

What a counter means:
- cpu.stat and cpu.pressure counters: the kernel's, summed as increases from the first
  sample that saw the group (a group seen for the first time is a baseline: its history
  before that is not counted, so a long-lived group does not spike when its first
  process arrives);
- run-queue wait and on-CPU time: each thread's schedstat increase, added to the group
  its process was in at that sample. A thread that exits keeps what it had at the last
  sample (the counter does not drop, as a sum over live threads would); only what it did
  between that sample and its exit is missed. A thread born between two samples counts
  from its start.

Groups past `max_cgroups` (in order of first sight) are summed into one `other`, so the
label set stays bounded; a group keeps its label while it lives, so every counter only
goes up. A group that vanishes disappears from the next snapshot.

Pure: no kernel access.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contend.analysis import thresholds as th
from contend.analysis.diagnosis import severity_of
from contend.model import (
    AccountingSnapshot,
    CgroupAccount,
    CgroupSample,
    GroupNames,
    MachineSample,
    TaskCounters,
    TaskRow,
)

OTHER = "other"
IDLE, QUOTA, UNKNOWN, SELF = "idle", "quota", "unknown", "self"
# Holders named per waiting group (the rest are "other"), beside idle, quota and unknown.
MAX_HOLDERS = 5


@dataclass
class _Totals:
    usage_ns: int = 0
    usage_known: bool = False
    periods: int = 0
    throttled: int = 0
    throttled_ns: int = 0
    below_limit: int = 0
    bursts: int = 0
    burst_ns: int = 0
    bursts_known: bool = False
    psi_some_us: int = 0
    psi_full_us: int = 0
    psi_known: bool = False
    full_known: bool = False
    run_ns: int = 0
    wait_ns: int = 0
    slices: int = 0
    sched: bool = False  # waits from the in-kernel accounting
    sched_wait_ns: int = 0
    waits: int = 0
    buckets: dict[int, int] = field(default_factory=dict)
    behind: dict[str, int] = field(default_factory=dict)


@dataclass
class _Step:
    """One group's (or `other`'s) increases over the last interval."""

    usage_ns: int | None = None
    periods: int = 0
    throttled: int = 0
    psi_some_us: int | None = None
    psi_full_us: int | None = None
    run_ns: int = 0
    wait_ns: int = 0
    slices: int = 0
    processes: int = 0
    sched_wait_ns: int = 0
    behind: dict[str, int] = field(default_factory=dict)


def _inc(cur: int | None, prev: int | None) -> int | None:
    """The increase of a kernel counter (a reset, i.e. a group made anew: all of it)."""
    if cur is None or prev is None:
        return None
    return cur - prev if cur >= prev else cur


def _task_inc(cur: TaskCounters, prev: TaskCounters | None) -> tuple[int, int, int]:
    if prev is None or prev.pid != cur.pid or cur.on_cpu_ns < prev.on_cpu_ns:
        return cur.on_cpu_ns, cur.wait_ns, cur.slices  # born since (or the tid reused)
    return (
        cur.on_cpu_ns - prev.on_cpu_ns,
        max(cur.wait_ns - prev.wait_ns, 0),
        max(cur.slices - prev.slices, 0),
    )


class Accounting:
    """Feed it MachineSamples in time order (`update`); each returns the snapshot."""

    def __init__(self, max_cgroups: int = 0, cpus: int = 1) -> None:
        self.max_cgroups = max_cgroups  # 0: no bound
        self.cpus = cpus
        self._prev: MachineSample | None = None
        self._first: MachineSample | None = None
        self._tasks: dict[int, TaskCounters] = {}
        self._label: dict[str, str] = {}  # path -> its own path, or OTHER
        self._totals: dict[str, _Totals] = {}
        self._psi_some_us = 0
        self._holders: dict[str, set[str]] = {}  # victim label -> holder labels named
        self._unnamed_ns = 0
        self._lost = 0
        self.samples = 0

    def _assign(self, paths: list[str]) -> None:
        for path in [p for p in self._label if p not in paths]:
            if self._label.pop(path) != OTHER:
                self._totals.pop(path, None)
                self._holders.pop(path, None)
        named = sum(1 for label in self._label.values() if label != OTHER)
        for path in sorted(p for p in paths if p not in self._label):
            if self.max_cgroups and named >= self.max_cgroups:
                self._label[path] = OTHER
            else:
                self._label[path] = path
                named += 1

    def update(self, sample: MachineSample) -> AccountingSnapshot:
        prev = self._prev
        paths = sorted(sample.groups)
        self._assign(paths)
        steps: dict[str, _Step] = {}
        for path in paths:
            step = steps.setdefault(self._label[path], _Step())
            before = prev.groups.get(path) if prev is not None else None
            if before is not None:
                self._group_step(self._label[path], sample.groups[path], before, step)
            elif self._label[path] not in self._totals:
                self._totals[self._label[path]] = _Totals()
        for pid in sample.cgroup_of:
            steps[self._label[sample.cgroup_of[pid]]].processes += 1
        tasks: dict[int, TaskCounters] = {}
        for t in sample.tasks:
            tasks[t.tid] = t
            if prev is None:
                continue  # the first sample is the baseline
            run, wait, slices = _task_inc(t, self._tasks.get(t.tid))
            label = self._label[sample.cgroup_of[t.pid]]
            step, total = steps[label], self._totals[label]
            step.run_ns += run
            step.wait_ns += wait
            step.slices += slices
            total.run_ns += run
            total.wait_ns += wait
            total.slices += slices
        self._tasks = tasks
        if sample.sched is not None:
            self._lost += sample.sched.lost_events
            if prev is not None:
                self._sched_step(sample, steps)
        if prev is not None and sample.psi is not None and prev.psi is not None:
            self._psi_some_us += _inc(sample.psi.some_us, prev.psi.some_us) or 0
        self._first = self._first or sample
        snapshot = self._snapshot(sample, prev, steps)
        self._prev = sample
        self.samples += 1
        return snapshot

    def _sched_step(self, sample: MachineSample, steps: dict[str, _Step]) -> None:
        """The in-kernel waits: each named by its thread's group at this reading."""
        assert sample.sched is not None
        pid_of = {t.tid: t.pid for t in sample.tasks}

        def label_of(tid: int) -> str | None:
            pid = pid_of.get(tid)
            return self._label[sample.cgroup_of[pid]] if pid is not None else None

        for name in steps:
            self._totals[name].sched = True
        for tid, ns in sample.sched.wait_ns.items():
            victim = label_of(tid)
            if victim is None:
                self._unnamed_ns += ns  # it exited before this reading
                continue
            total = self._totals[victim]
            total.sched_wait_ns += ns
            steps[victim].sched_wait_ns += ns
            for low, count in sample.sched.buckets.get(tid, {}).items():
                total.buckets[low] = total.buckets.get(low, 0) + count
                total.waits += count
        for (tid, holder_tid), ns in sample.sched.behind.items():
            waiter = label_of(tid)
            if waiter is None:
                continue
            label = waiter
            step = steps[label]
            throttled = (step.throttled / step.periods if step.periods else 0.0) >= (
                th.IDLE_WAIT_THROTTLING_PERIODS
            )
            if holder_tid == 0:
                # The CPU idle while it waited: its quota's doing when the group was
                # throttled (diagnose's rule), else wake-up latency.
                holder = QUOTA if throttled else IDLE
            elif holder_tid < 0:
                # Older than its CPU's last switches: a throttled group's waits are that
                # long (a period's rest, 10-100 ms) while the CPU serves others meanwhile.
                holder = QUOTA if throttled else UNKNOWN
            else:
                holder = label_of(holder_tid) or UNKNOWN
                if holder == label:
                    holder = SELF  # its own threads (label: the group's own path)
            if holder not in (IDLE, QUOTA, UNKNOWN, OTHER, SELF):
                named = self._holders.setdefault(label, set())
                if holder not in named:
                    if len(named) >= MAX_HOLDERS:
                        holder = OTHER
                    else:
                        named.add(holder)
            total = self._totals[label]
            total.behind[holder] = total.behind.get(holder, 0) + ns
            step.behind[holder] = step.behind.get(holder, 0) + ns

    def _group_step(self, label: str, cur: CgroupSample, before: CgroupSample, step: _Step) -> None:
        total = self._totals.setdefault(label, _Totals())
        if cur.cpu is not None and before.cpu is not None:
            a, b = cur.cpu, before.cpu
            periods = _inc(a.nr_periods, b.nr_periods) or 0
            throttled = _inc(a.nr_throttled, b.nr_throttled) or 0
            usage = _inc(a.usage_ns, b.usage_ns)
            total.periods += periods
            total.throttled += throttled
            total.throttled_ns += _inc(a.throttled_ns, b.throttled_ns) or 0
            step.periods += periods
            step.throttled += throttled
            if usage is not None:
                total.usage_ns += usage
                total.usage_known = True
                step.usage_ns = (step.usage_ns or 0) + usage
            bursts = _inc(a.nr_bursts, b.nr_bursts)
            if bursts is not None:
                total.bursts += bursts
                total.burst_ns += _inc(a.burst_ns, b.burst_ns) or 0
                total.bursts_known = True
            window = cur.t_ns - before.t_ns
            quota = _quota_cpus(cur)
            # Throttled although it used well under its quota over the interval: its
            # threads drained each period's quota early (kubernetes issue 67577).
            if (
                throttled
                and quota
                and usage is not None
                and window > 0
                and usage / window <= th.THROTTLED_BELOW_LIMIT_USE * quota
            ):
                total.below_limit += throttled
        if cur.pressure is not None and before.pressure is not None:
            some = _inc(cur.pressure.some_us, before.pressure.some_us) or 0
            total.psi_some_us += some
            total.psi_known = True
            step.psi_some_us = (step.psi_some_us or 0) + some
            full = _inc(cur.pressure.full_us, before.pressure.full_us)
            if full is not None:
                total.psi_full_us += full
                total.full_known = True
                step.psi_full_us = (step.psi_full_us or 0) + full

    def _snapshot(
        self, sample: MachineSample, prev: MachineSample | None, steps: dict[str, _Step]
    ) -> AccountingSnapshot:
        window = sample.t_ns - prev.t_ns if prev is not None else 0
        accounts = []
        members: dict[str, list[str]] = {}
        for path, label in self._label.items():
            members.setdefault(label, []).append(path)
        for label, step in steps.items():
            total = self._totals.setdefault(label, _Totals())
            own = sample.groups.get(label) if label != OTHER else None
            names = sample.names.get(label, GroupNames()) if label != OTHER else GroupNames()
            accounts.append(_account(label, names, own, total, step, window))
        accounts.sort(key=lambda a: (-a.wait_per_s, a.path))
        psi_ratio = None
        if prev is not None and sample.psi is not None and prev.psi is not None and window:
            psi_ratio = (_inc(sample.psi.some_us, prev.psi.some_us) or 0) * 1e3 / window
        first = self._first or sample
        return AccountingSnapshot(
            t_ns=sample.t_ns,
            interval_s=window / 1e9,
            samples=self.samples + 1,
            cgroups=tuple(accounts),
            psi_some_s=self._psi_some_us / 1e6 if sample.psi is not None else None,
            psi_some_ratio=psi_ratio,
            own_cpu_s=(sample.own_cpu_ns - first.own_cpu_ns) / 1e9,
            read_s=sample.read_ns / 1e9,
            dropped_cgroups=len(members.get(OTHER, ())),
            cpus=self.cpus,
            backend="bpftrace" if sample.sched is not None else "procfs",
            lost_events=self._lost,
            unnamed_waits_s=self._unnamed_ns / 1e9,
        )


def _quota_cpus(g: CgroupSample | None) -> float | None:
    if g is None or not g.quota_us or not g.period_us:
        return None
    return g.quota_us / g.period_us


def _account(
    label: str,
    names: GroupNames,
    own: CgroupSample | None,
    total: _Totals,
    step: _Step,
    window: int,
) -> CgroupAccount:
    # The in-kernel waits where they are counted (exact), else schedstat's.
    waited = step.sched_wait_ns if total.sched else step.wait_ns
    ratio = waited / step.run_ns if step.run_ns else None
    if ratio is None and waited:
        ratio = float("inf")
    per_slice = waited / step.slices / 1e3 if step.slices else None
    severity = severity_of(ratio, per_slice)[1] if window else "none"
    if window and severity != "none" and waited < th.NOTABLE_WAIT_SHARE * window:
        severity = "mild"  # a kernel thread that waited 0.5 ms for its 0.1 ms of work
    throttled_ratio = step.throttled / step.periods if step.periods else None
    starved = severity in ("moderate", "severe")
    reason = "none"
    if starved:
        quota_bound = (throttled_ratio or 0.0) >= th.THROTTLED_PERIODS_NOTABLE
        reason = "quota" if quota_bound else "runqueue"
    burst_limit = own.burst_us / 1e6 if own is not None and own.burst_us is not None else None
    cpu = own.cpu if own is not None else None
    usage_known = total.usage_known or (cpu is not None and cpu.usage_ns is not None)
    bursts_known = total.bursts_known or (cpu is not None and cpu.nr_bursts is not None)
    pressure = own.pressure if own is not None else None
    psi_known = total.psi_known or pressure is not None
    full_known = total.full_known or (pressure is not None and pressure.full_us is not None)
    return CgroupAccount(
        path=label,
        container=names.container,
        unit=names.unit,
        pod_uid=names.pod_uid,
        container_name=names.container_name,
        processes=step.processes,
        usage_s=total.usage_ns / 1e9 if usage_known else None,
        periods=total.periods,
        throttled_periods=total.throttled,
        throttled_s=total.throttled_ns / 1e9,
        throttled_below_limit_periods=total.below_limit,
        bursts=total.bursts if bursts_known else None,
        burst_s=total.burst_ns / 1e9 if bursts_known else None,
        psi_some_s=total.psi_some_us / 1e6 if psi_known else None,
        psi_full_s=total.psi_full_us / 1e6 if full_known else None,
        run_s=total.run_ns / 1e9,
        wait_s=(total.sched_wait_ns if total.sched else total.wait_ns) / 1e9,
        slices=total.slices,
        quota_cpus=_quota_cpus(own),
        quota_from=own.quota_from if own is not None else None,
        burst_limit_s=burst_limit,
        cpu_cores=step.usage_ns / window if step.usage_ns is not None and window else None,
        throttled_ratio=throttled_ratio,
        psi_some_ratio=step.psi_some_us * 1e3 / window
        if step.psi_some_us is not None and window
        else None,
        psi_full_ratio=step.psi_full_us * 1e3 / window
        if step.psi_full_us is not None and window
        else None,
        wait_per_s=waited / window if window else 0.0,
        wait_to_run=ratio,
        wait_per_slice_us=per_slice,
        severity=severity,
        reason=reason,
        wait_source="bpftrace" if total.sched else "schedstat",
        waits=total.waits if total.sched else None,
        wait_buckets=tuple(sorted(total.buckets.items())),
        behind=tuple(
            sorted(((h, ns / 1e9) for h, ns in total.behind.items()), key=lambda x: -x[1])
        ),
        top_holder=max(step.behind, key=lambda h: step.behind[h]) if step.behind else None,
    )


def task_rows(
    prev: MachineSample, cur: MachineSample, cgroup: str | None = None, pid: int | None = None
) -> tuple[TaskRow, ...]:
    """The processes of `cgroup` (or every process), or the threads of `pid`, over the
    interval between two readings: CPU, run-queue wait, the verdict, who held their CPU
    most (in-kernel only)."""
    window = cur.t_ns - prev.t_ns
    if window <= 0:
        return ()
    before = {t.tid: t for t in prev.tasks}
    run: dict[int, int] = {}
    wait: dict[int, int] = {}
    slices: dict[int, int] = {}
    count: dict[int, int] = {}
    owner: dict[int, int] = {}
    for t in cur.tasks:
        if pid is not None and t.pid != pid:
            continue
        if pid is None and cgroup is not None and cur.cgroup_of.get(t.pid) != cgroup:
            continue
        key = t.tid if pid is not None else t.pid
        owner[t.tid] = key
        r, w, s = _task_inc(t, before.get(t.tid))
        if cur.sched is not None:
            w = cur.sched.wait_ns.get(t.tid, 0)
        run[key] = run.get(key, 0) + r
        wait[key] = wait.get(key, 0) + w
        slices[key] = slices.get(key, 0) + s
        count[key] = count.get(key, 0) + 1
    holders: dict[int, dict[str, int]] = {}
    if cur.sched is not None:
        pid_of = {t.tid: t.pid for t in cur.tasks}
        for (tid, holder), ns in cur.sched.behind.items():
            waiter = owner.get(tid)
            if waiter is None:
                continue
            if holder == 0:
                name = IDLE
            elif holder < 0 or holder not in pid_of:
                name = UNKNOWN
            else:
                hp = pid_of[holder]
                name = f"{cur.comms.get(hp, '?')} (PID {hp})"
            mine = holders.setdefault(waiter, {})
            mine[name] = mine.get(name, 0) + ns
    rows = []
    for key in run:
        ratio = wait[key] / run[key] if run[key] else (float("inf") if wait[key] else None)
        per_slice = wait[key] / slices[key] / 1e3 if slices[key] else None
        severity = severity_of(ratio, per_slice)[1]
        if severity != "none" and wait[key] < th.NOTABLE_WAIT_SHARE * window:
            severity = "mild"
        mine = holders.get(key, {})
        owner_pid = pid if pid is not None else key
        rows.append(
            TaskRow(
                id=key,
                comm=cur.comms.get(owner_pid, "?"),
                cgroup=cur.cgroup_of.get(owner_pid, ""),
                threads=count[key],
                cpu_cores=run[key] / window,
                wait_per_s=wait[key] / window,
                wait_to_run=ratio,
                severity=severity,
                top_holder=max(mine, key=lambda h: mine[h]) if mine else None,
            )
        )
    rows.sort(key=lambda r: (-r.wait_per_s, r.id))
    return tuple(rows)
