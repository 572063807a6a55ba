"""Where the target's wall time went, and what that says about why it waited.

A thread is always running, runnable (waiting for a CPU) or sleeping. From scheduler
events (monitors/breakdown.py) the runnable time is split by who held the CPU meanwhile:

- the idle task, while the group's quota throttled it: throttled (the group is off the
  run queue, so its runnable threads wait although the CPU is free);
- the idle task otherwise: wake-up latency (the CPU was waking up to run it);
- a thread of the target itself: queued behind its own threads;
- contend's own processes (its tracer, its sampler): queued behind the observer, the
  measurement's own cost, which is not counted as contention of the target;
- anything else: queued behind that task, named with its process.

The sleeping time is split by the syscall the thread slept in. Shares are of the threads'
wall time and add up to 100% (what the events did not cover is shown as `unaccounted`).
From procfs alone (schedstat), running and runnable are known per thread, but runnable is
not split and sleeping has no syscall: the breakdown says so (`source`).

Pure functions: no kernel access.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from contend.analysis import thresholds as th
from contend.model import (
    BREAKDOWN_STATES,
    Breakdown,
    BreakdownOccupant,
    Cause,
    SchedTimes,
    ThreadTime,
    TimeShare,
)

SOURCE_EVENTS = "exact (scheduler events)"
SOURCE_SCHEDSTAT = "schedstat (runnable not split, sleeping by syscall unavailable)"

RUNNING = "running"
THROTTLED = "throttled"
QUEUED = "queued"
WAKEUP = "wakeup"
RUNNABLE = "runnable"
SLEEPING = "sleeping"
UNACCOUNTED = "unaccounted"

# The order shares are listed in (and stacked in plots): model.BREAKDOWN_STATES.
STATES = BREAKDOWN_STATES
_OWN = "behind its own threads ("
_OBSERVER = "behind contend's own "


Part = tuple[str, str, int, int | None]  # state, detail, ns, the holder's pid


def _shares(parts: Iterable[Part], wall_ns: int) -> tuple[TimeShare, ...]:
    merged: dict[tuple[str, str, int | None], int] = defaultdict(int)
    for state, detail, ns, pid in parts:
        if ns > 0:
            merged[(state, detail, pid)] += ns
    rows = [
        TimeShare(state, detail, ns, 100.0 * ns / wall_ns if wall_ns else 0.0, pid)
        for (state, detail, pid), ns in merged.items()
    ]
    rows.sort(key=lambda s: (STATES.index(s.state), -s.ns))
    return tuple(rows)


def process_name(comm: str, pid: int) -> str:
    return f"{comm} (PID {pid})"


def runnable_split(
    occupants: Sequence[BreakdownOccupant],
    runnable_ns: int,
    own_pids: set[int],
    throttling: bool,
    observers: frozenset[int] = frozenset(),
) -> list[Part]:
    """Share `runnable_ns` out over who held the CPU, in proportion to their charges;
    the holders are named by process (a process's threads together); `observers`: the
    pids of contend itself and its tracer."""
    charged = sum(o.wait_ns for o in occupants)
    if charged <= 0 or runnable_ns <= 0:
        return [(RUNNABLE, "", runnable_ns, None)]
    parts: list[Part] = []
    comms: dict[int, str] = {}
    for o in occupants:
        pid = o.pid if o.pid is not None else o.tid
        comms.setdefault(pid, o.comm)
    for o in occupants:
        ns = round(runnable_ns * o.wait_ns / charged)
        pid = o.pid if o.pid is not None else o.tid
        if o.tid == 0:
            parts.append(
                (THROTTLED, "by the CPU quota", ns, 0) if throttling else (WAKEUP, "", ns, 0)
            )
        elif pid in own_pids:
            parts.append((QUEUED, f"{_OWN}{comms[pid]})", ns, pid))
        elif pid in observers:
            parts.append((QUEUED, f"{_OBSERVER}{process_name(comms[pid], pid)}", ns, pid))
        else:
            parts.append((QUEUED, f"behind {process_name(comms[pid], pid)}", ns, pid))
    return parts


def from_events(
    times: SchedTimes,
    label: str,
    pids: set[int] | None = None,
    throttling: bool = False,
    tids: set[int] | None = None,
    observers: frozenset[int] = frozenset(),
) -> Breakdown:
    """The breakdown of the traced threads of `pids` (all traced threads if None), or
    of the threads `tids`.

    The occupants are charged for all traced threads together; a subset gets the same
    split in proportion to its own runnable time."""
    threads = [
        t
        for t in times.threads
        if (pids is None or t.pid in pids) and (tids is None or t.tid in tids)
    ]
    own = {t.pid for t in times.threads}
    return _breakdown(threads, times.occupants, label, own, throttling, observers - own)


def _breakdown(
    threads: Sequence[ThreadTime],
    occupants: Sequence[BreakdownOccupant],
    label: str,
    own_pids: set[int],
    throttling: bool,
    observers: frozenset[int],
) -> Breakdown:
    wall = sum(t.wall_ns for t in threads)
    running = sum(t.running_ns for t in threads)
    runnable = sum(t.runnable_ns for t in threads)
    parts: list[Part] = [(RUNNING, "", running, None)]
    parts += runnable_split(occupants, runnable, own_pids, throttling, observers)
    slept = 0
    for t in threads:
        for syscall, ns in t.sleeping_ns.items():
            parts.append((SLEEPING, syscall, ns, None))
            slept += max(ns, 0)
    parts.append((UNACCOUNTED, "", max(wall - running - runnable - slept, 0), None))
    total = max(wall, running + runnable + slept)
    return Breakdown(label, len(threads), total, _shares(parts, total), SOURCE_EVENTS)


def from_schedstat(
    rows: Iterable[tuple[int, int, int]], label: str, threads: int | None = None
) -> Breakdown:
    """From (wall, on-CPU, run-queue wait) per thread, as schedstat gives them."""
    wall = running = runnable = n = 0
    for w, run, wait in rows:
        wall += w
        running += run
        runnable += wait
        n += 1
    sleeping = max(wall - running - runnable, 0)
    total = max(wall, running + runnable)
    parts: list[Part] = [
        (RUNNING, "", running, None),
        (RUNNABLE, "", runnable, None),
        (SLEEPING, "", sleeping, None),
    ]
    return Breakdown(label, threads or n, total, _shares(parts, total), SOURCE_SCHEDSTAT)


# --- the diagnosis ------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{x:.0%}" if x >= 0.01 else f"{x:.1%}"


def demand_ns(b: Breakdown) -> int:
    """The time the threads wanted a CPU: running + runnable (however split)."""
    return b.total(RUNNING) + sum(
        s.ns for s in b.shares if s.state in (THROTTLED, QUEUED, WAKEUP, RUNNABLE)
    )


def observer_ns(b: Breakdown) -> int:
    """The runnable time spent behind contend's own processes (the measurement's cost)."""
    return sum(s.ns for s in b.shares if s.state == QUEUED and s.detail.startswith(_OBSERVER))


def contended_ns(b: Breakdown) -> int:
    """Runnable time that something else caused: a quota, a task holding the CPU, or a
    holder procfs cannot name. Not wake-up latency on an idle CPU (nobody took that CPU),
    nor contend's own processes (the measurement, not the workload)."""
    return sum(b.total(state) for state in (THROTTLED, QUEUED, RUNNABLE)) - observer_ns(b)


@dataclass(frozen=True)
class Context:
    """What the causes are told about the world around the breakdown (all optional).

    `quota_cpus`/`quota_cgroup`: the tightest quota over the target's cgroups; `window_ns`:
    the window (to say demand and neighbours' use in CPUs); `roles`: pid -> a name for a
    group of holders ("noise"); `groups`: pid -> the cgroup or container of a holder;
    `cpu_ns`: pid -> CPU time a holder used in the window; `own`: the target's pids."""

    quota_cpus: float | None = None
    quota_cgroup: str | None = None
    window_ns: int = 0
    roles: dict[int, str] = field(default_factory=dict)
    groups: dict[int, str] = field(default_factory=dict)
    cpu_ns: dict[int, int] = field(default_factory=dict)


def causes(b: Breakdown, target: str, ctx: Context | None = None) -> tuple[Cause, ...]:
    """The causes of the target's waiting, ranked by the share of its CPU demand (running +
    runnable) they took, each with its number, a plain sentence and one line of advice.
    Causes under CAUSE_MIN_SHARE of the demand are left out. Neighbours are grouped by
    their role where one is given (the lab's "noise"), else by process."""
    ctx = ctx or Context()
    demand = demand_ns(b)
    if demand <= 0:
        return ()
    quota_name = f"the {ctx.quota_cpus:g}-CPU quota" if ctx.quota_cpus else "the CPU quota"
    grouped: dict[tuple[str, str], int] = defaultdict(int)
    members: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    for s in b.shares:
        if s.state == THROTTLED:
            key = ("quota", quota_name)
        elif s.state == QUEUED and s.detail.startswith(_OWN):
            key = ("own_threads", "its own threads")
        elif s.state == QUEUED and s.detail.startswith(_OBSERVER):
            key = ("observer", "contend itself")
        elif s.state == QUEUED:
            name = s.detail.removeprefix("behind ")
            role = ctx.roles.get(s.pid) if s.pid is not None else None
            key = ("neighbour", f"the {role}" if role else name)
        elif s.state == WAKEUP:
            key = ("wakeup_latency", "wake-up latency")
        elif s.state == RUNNABLE:
            key = ("runnable_unsplit", "runnable")
        else:
            continue
        grouped[key] += s.ns
        if s.state == QUEUED and s.pid:
            members[key][s.pid] = _holder_comm(s.detail)
    out = []
    for (kind, who), ns in grouped.items():
        share = ns / demand
        if share < th.CAUSE_MIN_SHARE:
            continue
        out.append(_cause(kind, who, ns, share, b, target, ctx, members[(kind, who)]))
    out.sort(key=lambda c: -c.ns)
    return tuple(out)


def _holder_comm(detail: str) -> str:
    """The name in a queued share's detail (as runnable_split writes it)."""
    if detail.startswith(_OWN):
        return detail[len(_OWN) : -1]
    return detail.removeprefix(_OBSERVER).removeprefix("behind ").rsplit(" (PID ", 1)[0]


def _cpus(ns: int, window_ns: int) -> str:
    return f"{ns / window_ns:.2f} CPUs" if window_ns > 0 else "n/a"


def _cause(
    kind: str,
    who: str,
    ns: int,
    share: float,
    b: Breakdown,
    target: str,
    ctx: Context,
    holders: dict[int, str],
) -> Cause:
    wall = ns / b.wall_ns if b.wall_ns else 0.0
    of = f"{_pct(share)} of the time {target} wanted a CPU ({_pct(wall)} of its threads' wall time)"
    pids = tuple(sorted(holders))
    comms = tuple(dict.fromkeys(holders[p] for p in pids))
    names = ", ".join(process_name(holders[p], p) for p in pids[:5])
    cgroup: str | None = None
    if kind == "quota":
        quota = f"{ctx.quota_cpus:g}-CPU quota" if ctx.quota_cpus is not None else "CPU quota"
        where = f" of {ctx.quota_cgroup}" if ctx.quota_cgroup else ""
        sentence = f"Runnable but throttled by the {quota}{where}: {of}."
        cgroup = ctx.quota_cgroup
        wanted = (b.total(RUNNING) + b.total(THROTTLED)) / ctx.window_ns if ctx.window_ns else None
        if wanted is not None and ctx.quota_cpus is not None:
            advice = (
                f"It wanted {wanted:.2f} CPUs (running + throttled) against a quota of "
                f"{ctx.quota_cpus:g}: raise the quota above {wanted:.2f} CPUs, or cut its CPU use."
            )
        else:
            advice = "Raise the group's CPU quota, or cut its CPU use."
        pids = ()
        comms = ()
    elif kind == "neighbour":
        groups = sorted({ctx.groups[p] for p in pids if ctx.groups.get(p)})
        cgroup = groups[0] if len(groups) == 1 else None
        label = f"{who} ({names})" if who.startswith("the ") else who
        in_group = f" in {', '.join(groups)}" if groups else ""
        sentence = f"Queued behind {label}{in_group}: {of}."
        used = sum(ctx.cpu_ns.get(p, 0) for p in pids)
        took = f" took {_cpus(used, ctx.window_ns)} meanwhile" if used and ctx.window_ns else ""
        advice = (
            f"{names}{in_group}{took}: run them on other CPUs (cpuset, taskset), lower their "
            "weight (nice, cpu.weight / cpu.shares) or cap them with a quota."
        )
    elif kind == "own_threads":
        sentence = f"Queued behind its own threads ({', '.join(comms)}): {of}."
        advice = (
            "Its runnable threads outnumber the CPUs it can use: fewer busy threads or "
            "processes, or more CPUs for it."
        )
    elif kind == "observer":
        sentence = f"Queued behind contend's own processes ({names}): {of}."
        advice = (
            "The measurement's own cost, not counted as contention: trace for less (fewer "
            "monitors, --backend procfs) or pin contend away from the target (taskset)."
        )
    elif kind == "wakeup_latency":
        sentence = f"Waiting for an idle CPU to wake up and run it: {of}."
        advice = (
            "The CPU was idle: wake-up latency (idle states, frequency); nothing took its "
            "CPU. Only worth acting on for latency-critical work (cpuidle, isolcpus)."
        )
        pids = comms = ()
    else:
        sentence = f"Runnable, behind tasks procfs cannot name: {of}."
        advice = "Run as root (bpftrace or tracefs backend) to name who held the CPU."
        pids = comms = ()
    return Cause(kind, who, ns, share, wall, sentence, pids, comms, cgroup, advice)
