"""Where the target's wall time went, and what that says about why it waited.

A thread is always running, runnable (waiting for a CPU) or sleeping. From scheduler
events (monitors/breakdown.py) the runnable time is split by who held the CPU meanwhile:

- the idle task, while the group's quota throttled it: throttled (the group is off the
  run queue, so its runnable threads wait although the CPU is free);
- the idle task otherwise: wake-up latency (the CPU was waking up to run it);
- a thread of the target itself: queued behind its own threads;
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

from contend.analysis import thresholds as th
from contend.model import Breakdown, BreakdownOccupant, Cause, SchedTimes, ThreadTime, TimeShare

SOURCE_EVENTS = "exact (scheduler events)"
SOURCE_SCHEDSTAT = "schedstat (runnable not split, sleeping by syscall unavailable)"

RUNNING = "running"
THROTTLED = "throttled"
QUEUED = "queued"
WAKEUP = "wakeup"
RUNNABLE = "runnable"
SLEEPING = "sleeping"
UNACCOUNTED = "unaccounted"

# The order shares are listed in (and stacked in plots).
STATES = (RUNNING, THROTTLED, QUEUED, WAKEUP, RUNNABLE, SLEEPING, UNACCOUNTED)


def _shares(parts: Iterable[tuple[str, str, int]], wall_ns: int) -> tuple[TimeShare, ...]:
    merged: dict[tuple[str, str], int] = defaultdict(int)
    for state, detail, ns in parts:
        if ns > 0:
            merged[(state, detail)] += ns
    rows = [
        TimeShare(state, detail, ns, 100.0 * ns / wall_ns if wall_ns else 0.0)
        for (state, detail), ns in merged.items()
    ]
    rows.sort(key=lambda s: (STATES.index(s.state), -s.ns))
    return tuple(rows)


def occupant_name(o: BreakdownOccupant) -> str:
    if o.pid is not None and o.pid != o.tid:
        return f"{o.comm} (PID {o.pid}, TID {o.tid})"
    return f"{o.comm} (PID {o.tid})"


def runnable_split(
    occupants: Sequence[BreakdownOccupant],
    runnable_ns: int,
    own_pids: set[int],
    throttling: bool,
) -> list[tuple[str, str, int]]:
    """Share `runnable_ns` out over who held the CPU, in proportion to their charges."""
    charged = sum(o.wait_ns for o in occupants)
    if charged <= 0 or runnable_ns <= 0:
        return [(RUNNABLE, "", runnable_ns)]
    parts: list[tuple[str, str, int]] = []
    for o in occupants:
        ns = round(runnable_ns * o.wait_ns / charged)
        if o.tid == 0:
            parts.append((THROTTLED, "by the CPU quota", ns) if throttling else (WAKEUP, "", ns))
        elif (o.pid if o.pid is not None else o.tid) in own_pids:
            parts.append((QUEUED, f"behind its own threads ({o.comm})", ns))
        else:
            parts.append((QUEUED, f"behind {occupant_name(o)}", ns))
    return parts


def from_events(
    times: SchedTimes,
    label: str,
    pids: set[int] | None = None,
    throttling: bool = False,
    tids: set[int] | None = None,
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
    return _breakdown(threads, times.occupants, label, own, throttling)


def _breakdown(
    threads: Sequence[ThreadTime],
    occupants: Sequence[BreakdownOccupant],
    label: str,
    own_pids: set[int],
    throttling: bool,
) -> Breakdown:
    wall = sum(t.wall_ns for t in threads)
    running = sum(t.running_ns for t in threads)
    runnable = sum(t.runnable_ns for t in threads)
    parts: list[tuple[str, str, int]] = [(RUNNING, "", running)]
    parts += runnable_split(occupants, runnable, own_pids, throttling)
    slept = 0
    for t in threads:
        for syscall, ns in t.sleeping_ns.items():
            parts.append((SLEEPING, syscall, ns))
            slept += max(ns, 0)
    parts.append((UNACCOUNTED, "", max(wall - running - runnable - slept, 0)))
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
    parts = [(RUNNING, "", running), (RUNNABLE, "", runnable), (SLEEPING, "", sleeping)]
    return Breakdown(label, threads or n, total, _shares(parts, total), SOURCE_SCHEDSTAT)


# --- the diagnosis ------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{x:.0%}" if x >= 0.01 else f"{x:.1%}"


def causes(
    b: Breakdown, target: str, cpu_limit: float | None = None, roles: dict[str, str] | None = None
) -> tuple[Cause, ...]:
    """The causes of the target's waiting, ranked by the share of its CPU demand (running +
    runnable) they took, each with its number and a plain sentence. Causes under
    CAUSE_MIN_SHARE of the demand are left out. `roles`: detail -> role name, to say what
    a neighbour is ("noise")."""
    demand = b.total(RUNNING) + sum(
        s.ns for s in b.shares if s.state in (THROTTLED, QUEUED, WAKEUP, RUNNABLE)
    )
    if demand <= 0:
        return ()
    quota = f"{cpu_limit:g}-CPU quota" if cpu_limit is not None else "CPU quota"
    grouped: dict[tuple[str, str], int] = defaultdict(int)
    members: dict[tuple[str, str], list[str]] = defaultdict(list)
    for s in b.shares:
        if s.state == THROTTLED:
            grouped[("quota", f"the {quota}")] += s.ns
        elif s.state == QUEUED and s.detail.startswith("behind its own threads"):
            grouped[("own-threads", "its own threads")] += s.ns
        elif s.state == QUEUED:
            name = s.detail.removeprefix("behind ")
            role = (roles or {}).get(name)
            key = ("neighbour", f"the {role}" if role else name)
            grouped[key] += s.ns
            members[key].append(name)
        elif s.state == WAKEUP:
            grouped[("wakeup", "wake-up latency")] += s.ns
        elif s.state == RUNNABLE:
            grouped[("unsplit", "runnable")] += s.ns
    out = []
    for (kind, who), ns in grouped.items():
        share = ns / demand
        if share < th.CAUSE_MIN_SHARE:
            continue
        wall = ns / b.wall_ns if b.wall_ns else 0.0
        of = f"{_pct(share)} of the time {target} wanted a CPU ({_pct(wall)} of its threads' wall time)"
        if kind == "quota":
            sentence = f"Runnable but throttled by {who}: {of}."
        elif kind == "neighbour":
            names = members[(kind, who)]
            if who.startswith("the "):
                who = f"{who} ({', '.join(names)})"
            sentence = f"Queued behind {who}: {of}."
        elif kind == "own-threads":
            sentence = f"Queued behind its own threads: {of}."
        elif kind == "wakeup":
            sentence = f"Waiting for an idle CPU to wake up and run it: {of}."
        else:
            sentence = f"Runnable, behind tasks procfs cannot name: {of}."
        out.append(Cause(kind, who, ns, share, wall, sentence))
    out.sort(key=lambda c: -c.ns)
    return tuple(out)
