"""Where the target's time went, from the tracefs backend's events: the `SchedTimes` that
monitors/breakdown.py aggregates in the kernel, with the same meanings, computed after the
run from every event (timeline.py's columns; no Python loop over events).

Per target thread, over the window:

- running: its slices (timeline.on_cpu: those whose switch from idle went unrecorded
  from their inferred start);
- runnable: its run-queue waits (on_cpu), each on the CPU it then ran on;
- sleeping: from each switch-out in a sleeping state to its next wakeup (sched_wakeup,
  sched_wakeup_new), charged to the syscall in flight at the switch-out
  (timeline.pair_calls: entered at or before it, not returned before it);
- wall: the window, from its birth (task_newtask) and to its death (its last switch-out,
  as EXIT_DEAD or EXIT_ZOMBIE, else sched_process_exit) where they fall inside it.

States open at the edges of the window are closed there, as the bpftrace reader does: a
thread whose first event is a wakeup slept since the start (in the call its first syscall
event returns from, if that is an exit); one whose first event is a switch-in waited since
the start; one that left a CPU in that CPU's first record ran since the start (when on_cpu
found no start for that slice); one still on a CPU at the end ran, one still waiting
(no runtime update since: its switch from idle may be unrecorded) waited, one still
asleep slept until the end. A thread with no event at all is known only from `asleep`
(what /proc said at the start). With every switch recorded, all of this is exact
(tests/test_tracefs_breakdown.py checks it against a simulated scheduler).

Occupants: who held each CPU while target threads waited for it: timeline.time_behind
over timeline.occupancy and each CPU's first and last holder out to the window's edges.
The waiting that no known holder covers (an idle CPU: wake-up latency or a CPU quota's
throttling; a holder whose switch-in was not recorded) is charged to tid 0, so the charges
add up to the threads' runnable time.

prev_state as sched_switch reports it (include/trace/events/sched.h,
__trace_sched_switch_state): TASK_REPORT_MAX (0x100 on 6.x) for a preemption, else
1 << task_state_index(): 0x01 S, 0x02 D, 0x04 T, 0x08 t, 0x10 X (EXIT_DEAD),
0x20 Z (EXIT_ZOMBIE), 0x40 P, 0x80 I; TASK_RUNNING (low byte 0) is runnable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping

import numpy as np
import numpy.typing as npt

from contend.collect.tracefs import Capture, Columns
from contend.model import BreakdownOccupant, SchedTimes, ThreadTime
from contend.monitors import timeline as tl
from contend.monitors.syscalls import syscall_name
from contend.monitors.tracefs_trace import TracefsRun

I64 = tl.I64
Ints = npt.NDArray[np.integer]  # a column in its own type (int32 pids, int16 CPUs)

NOT_IN_SYSCALL = "(no syscall)"  # as monitors/breakdown.py: a page fault, a lock in a trap
UNKNOWN = "unknown"  # the syscall was not traced
IDLE = "idle"
NO_CALL, UNKNOWN_CALL = -1, -2
STATE_MASK = 0xFF
EXIT_STATES = 0x30  # EXIT_DEAD | EXIT_ZOMBIE: the task's last switch
# The monitors that trace every syscall (the io monitor alone traces only its own calls).
ALL_CALLS = frozenset({"syscalls", "process"})
_NEVER = np.iinfo(np.int64).max


def _span(capture: Capture) -> tuple[int, int] | None:
    stamps = [c["ts"] for c in capture.events.values() if "ts" in c and len(c["ts"])]
    if not stamps:
        return None
    return min(int(s.min()) for s in stamps), max(int(s.max()) for s in stamps)


def run_window(run: TracefsRun) -> tuple[int, int]:
    """The window `sched_times` takes by default: from the first to the last recorded
    event of any kind (CLOCK_MONOTONIC ns); (0, 0) when nothing was recorded. The run
    itself does not keep when tracing started and stopped."""
    return _span(run.capture) or (0, 0)


Firsts = dict[int, tuple[int, int]]  # tid -> (time, value) of its earliest or latest event


def _extreme(tids: Ints, ts: I64, values: Ints | None = None, latest: bool = False) -> Firsts:
    """Per tid, the time of its earliest (latest) event and that event's value (of the
    last such event on a tie; the time itself if no values)."""
    if len(tids) == 0:
        return {}
    ids: I64 = tids.astype(np.int64, copy=False)
    dense = tl._dense_ids(ids)
    if dense is None:
        uniq, inverse = np.unique(ids, return_inverse=True)
    else:
        uniq, (inverse,) = dense
    best = np.full(len(uniq), -_NEVER if latest else _NEVER, np.int64)
    (np.maximum if latest else np.minimum).at(best, inverse, ts)
    at = np.full(len(uniq), -1, np.int64)
    hit = np.flatnonzero(ts == best[inverse])
    np.maximum.at(at, inverse[hit], hit)
    picked = (values if values is not None else ts)[at]
    return dict(zip(uniq.tolist(), zip(best.tolist(), picked.tolist(), strict=True), strict=True))


def _merged(parts: list[Firsts], latest: bool = False) -> Firsts:
    out: Firsts = {}
    for part in parts:
        for tid, (ts, value) in part.items():
            if tid not in out or (ts > out[tid][0] if latest else ts < out[tid][0]):
                out[tid] = (ts, value)
    return out


class _Chosen:
    """The target threads of the breakdown, as a table indexed by tid."""

    def __init__(self, tids: I64) -> None:
        self.tids = tids
        self.set = set(tids.tolist())
        self.table = np.zeros(int(tids.max()) + 1 if len(tids) else 1, dtype=bool)
        self.table[tids] = True

    def __call__(self, tids: Ints) -> npt.NDArray[np.bool_]:
        if len(tids) and (int(tids.min()) < 0 or int(tids.max()) >= len(self.table)):
            return tl._isin(tids, self.tids)
        found: npt.NDArray[np.bool_] = self.table[tids]
        return found


def _targets(
    tasks: tl.Tasks, pids: Collection[int] | None, asleep: Mapping[int, int], *tids: Ints
) -> _Chosen:
    """The target threads that appear in `tids` or in `asleep`, of the processes `pids`."""
    parts = [a[tasks.target_mask(a)].astype(np.int64) for a in tids]
    parts.append(np.fromiter((t for t in asleep if tasks.is_target(t)), np.int64))
    dense = tl._dense_ids(*parts)
    seen = dense[0] if dense is not None else np.unique(np.concatenate(parts))
    if pids is not None:
        wanted = set(pids)
        seen = np.array([t for t in seen.tolist() if tasks.pid_of(t) in wanted], np.int64)
    return _Chosen(seen)


def _named(by_nr: dict[int, int], machine: str | None) -> dict[str, int]:
    named: dict[str, int] = {}
    for nr, ns in by_nr.items():
        if nr == NO_CALL:
            name = NOT_IN_SYSCALL
        elif nr == UNKNOWN_CALL:
            name = UNKNOWN
        else:
            name = syscall_name(nr, machine)
        named[name] = named.get(name, 0) + ns
    return dict(sorted(named.items(), key=lambda kv: -kv[1]))


class _Intervals:
    """Intervals (tid, start, end, and a CPU or a syscall number) gathered in parts, each
    used as it is (no copy of the large ones)."""

    def __init__(self) -> None:
        self.parts: list[tuple[Ints, I64, I64, Ints]] = []

    def add(self, tid: Ints, start: I64, end: I64, extra: Ints) -> None:
        self.parts.append((tid, start, end, extra))

    def one(self, tid: int, start: int, end: int, extra: int) -> None:
        self.add(*(np.array([v], dtype=np.int64) for v in (tid, start, end, extra)))

    def sums(self, lo: int, hi: int, by_extra: bool = False) -> Counter[int]:
        """Per tid (with `by_extra`: per tid << 32 | extra), the time inside [lo, hi]; every
        tid of an interval that overlaps it is there (maybe with 0)."""
        out = Counter[int]()
        for tid, start, end, extra in self.parts:
            keep = (end >= lo) & (start <= hi)
            dur = np.minimum(end[keep], hi) - np.maximum(start[keep], lo)
            key = tid[keep].astype(np.int64)
            if by_extra:
                key = (key << 32) | (extra[keep].astype(np.int64) & 0xFFFFFFFF)
            for k, ns in tl._sum_by(key, dur).items():
                out[k] += ns
        return out

    def clipped(self, lo: int, hi: int) -> tuple[I64, I64, I64]:
        """Start, end and extra of everything that overlaps [lo, hi], cut to it."""
        if not self.parts:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        keep = [(end >= lo) & (start <= hi) for _, start, end, _ in self.parts]
        start = np.concatenate([p[1][k] for p, k in zip(self.parts, keep, strict=True)])
        end = np.concatenate([p[2][k] for p, k in zip(self.parts, keep, strict=True)])
        extra = np.concatenate([p[3][k] for p, k in zip(self.parts, keep, strict=True)])
        np.clip(start, lo, hi, out=start)
        np.clip(end, lo, hi, out=end)
        return start, end, extra.astype(np.int64, copy=False)


def sched_times(
    run: TracefsRun,
    *,
    window: tuple[int, int] | None = None,
    asleep: Mapping[int, int] | None = None,
    pids: Collection[int] | None = None,
    machine: str | None = None,
) -> SchedTimes | None:
    """The target threads' running, runnable and sleeping time and who held the CPUs while
    they waited, over `window` (CLOCK_MONOTONIC ns; default: from the first to the last
    recorded event). None without the cpu monitor.

    `asleep`: tid -> syscall number (-1: none) of target threads known asleep at the start
    (as monitors/breakdown.seed takes them, from /proc/TID/syscall): a thread with no
    event at all slept the whole window in it, one whose first event is a wakeup slept in
    it until then (unless its first syscall event says which call it was). `pids`: only
    the threads of these processes are the target (the others are holders like any task).
    `machine`: the recording machine's, whose syscall numbers name the calls."""
    # Many temporaries of one size: reused, not fresh pages (as tracefs_trace.analyse).
    with tl.reusing_freed_memory():
        return _sched_times(run, window, asleep or {}, pids, machine)


def _sched_times(
    run: TracefsRun,
    window: tuple[int, int] | None,
    asleep: Mapping[int, int],
    pids: Collection[int] | None,
    machine: str | None,
) -> SchedTimes | None:
    slices = run.slices
    if slices is None:
        return None
    capture, tasks = run.capture, run.tasks
    occ = run.occupancy if run.occupancy is not None else tl.occupancy(capture, slices)
    span = window if window is not None else _span(capture)
    if span is None:
        return SchedTimes(window_ns=0, threads=(), occupants=())
    lo, hi = span
    sw = capture.get("sched_switch")
    wake = [capture.get("sched_wakeup"), capture.get("sched_wakeup_new")]
    chosen = _targets(
        tasks, pids, asleep, slices.tid, slices.wait_tid,
        tl._raw(sw, "prev_pid"), tl._raw(sw, "next_pid"), *(tl._raw(w, "pid") for w in wake),
    )  # fmt: skip
    running, waiting, sleeping = _Intervals(), _Intervals(), _Intervals()
    own = chosen(slices.tid)
    if own.all():
        running.add(slices.tid, slices.start, slices.end, slices.cpu)
    else:
        running.add(slices.tid[own], slices.start[own], slices.end[own], slices.cpu[own])
    own = chosen(slices.wait_tid)
    if own.all():
        waiting.add(slices.wait_tid, slices.wait_start, slices.wait_end, slices.wait_cpu)
    else:
        waiting.add(
            slices.wait_tid[own], slices.wait_start[own], slices.wait_end[own],
            slices.wait_cpu[own],
        )  # fmt: skip
    del own
    # The histograms: whole slices and waits only, as the bpftrace program's.
    start, end, _ = running.clipped(lo, hi)
    slice_us = tl.log2_hist((end - start) // 1000)
    start, end, _ = waiting.clipped(lo, hi)
    run_queue_us = tl.log2_hist((end - start) // 1000)
    del start, end

    holders = _Intervals()
    running_at_end = _cpu_edges(sw, slices, chosen, lo, hi, holders, running)
    no_call = NO_CALL if ALL_CALLS & set(run.result.monitors) else UNKNOWN_CALL
    calls = run.calls if run.calls is not None else tl.pair_calls(capture, tasks)
    sleeping.add(*_sleeps(sw, wake, calls, chosen, hi, no_call))
    died = _deaths(capture, chosen)
    _edges_of_threads(
        capture, slices, chosen, asleep, lo, hi, no_call, running_at_end, died, waiting, sleeping
    )
    nt = capture.get("task_newtask")
    n_tid = tl._i64(nt, "pid")
    born = _extreme(n_tid[chosen(n_tid)], tl._i64(nt, "ts")[chosen(n_tid)])

    ran = running.sums(lo, hi)
    waited = waiting.sums(lo, hi)
    # (tid, syscall number) in one key, as timeline.syscall_rows packs (pid, number).
    slept = sleeping.sums(lo, hi, by_extra=True)
    by_nr: dict[int, dict[int, int]] = {}
    for key, ns in slept.items():
        mine = by_nr.setdefault(key >> 32, {})
        n = key & 0xFFFFFFFF
        if ns > 0:
            mine[n - (1 << 32) if n >= 1 << 31 else n] = ns
    threads = []
    for tid in sorted(set(ran) | set(waited) | set(by_nr)):
        first = max(born.get(tid, (lo, 0))[0], lo)
        last = min(died.get(tid, (hi, 0))[0], hi)
        threads.append(
            ThreadTime(
                pid=tasks.pid_of(tid),
                tid=tid,
                comm=tasks.comm_of(tid),
                running_ns=ran[tid],
                runnable_ns=waited[tid],
                sleeping_ns=_named(by_nr.get(tid, {}), machine),
                wall_ns=max(last - first, 0),
            )
        )

    # Who held the CPUs meanwhile: occupancy and the edges' holders. Outside the window
    # no wait is counted, so the holders are not cut to it.
    w_start, w_end, w_cpu = waiting.clipped(lo, hi)
    h_tid, h_start, h_end, h_cpu = (
        np.concatenate([occ_part, *(p[k] for p in holders.parts)]).astype(np.int64, copy=False)
        for k, occ_part in enumerate((occ.tid, occ.start, occ.end, occ.cpu))
    )
    charged = tl.time_behind(w_start, w_end, w_cpu, h_tid, h_cpu, h_start, h_end)
    del h_tid, h_start, h_end, h_cpu
    occupants = [
        BreakdownOccupant(
            tid=tid, comm=occ.names.get(tid) or tasks.comm_of(tid), wait_ns=ns,
            pid=tasks.pid_of(tid),
        )
        for tid, ns in charged.items()
    ]  # fmt: skip
    uncovered = int((w_end - w_start).sum()) - sum(charged.values())
    if uncovered > 0:
        occupants.append(BreakdownOccupant(tid=0, comm=IDLE, wait_ns=uncovered, pid=0))
    occupants.sort(key=lambda o: (-o.wait_ns, o.tid))
    return SchedTimes(
        window_ns=hi - lo,
        threads=tuple(threads),
        occupants=tuple(occupants),
        run_queue_us=run_queue_us,
        slice_us=slice_us,
    )


def _cpu_edges(
    sw: Columns,
    slices: tl.OnCpu,
    chosen: _Chosen,
    lo: int,
    hi: int,
    holders: _Intervals,
    running: _Intervals,
) -> set[int]:
    """Each CPU's first and last record: who held it from the window's start and until its
    end (and ran then, if a chosen thread). Returns the chosen threads on a CPU at the end."""
    ts, cpu = tl._i64(sw, "ts"), tl._raw(sw, "cpu")
    prev, nxt = tl._raw(sw, "prev_pid"), tl._raw(sw, "next_pid")
    inferred = slice(len(slices.tid) - slices.inferred, None)
    inf_tid, inf_cpu, inf_end = slices.tid[inferred], slices.cpu[inferred], slices.end[inferred]
    at_end: set[int] = set()
    for c in tl._distinct(cpu.astype(np.int64)).tolist():
        on = np.flatnonzero(cpu == c)
        first = int(on[np.argmin(ts[on])])
        last = int(on[len(on) - 1 - np.argmax(ts[on][::-1])])
        holder, at = int(nxt[last]), int(ts[last])
        if holder != 0:
            holders.one(holder, at, hi, c)
            if holder in chosen.set:
                running.one(holder, at, hi, c)
                at_end.add(holder)
        holder, at = int(prev[first]), int(ts[first])
        # A slice that on_cpu inferred (from its runtime) ends there: a holder already.
        known = np.any((inf_tid == holder) & (inf_cpu == c) & (inf_end == at))
        if holder != 0 and not known:
            holders.one(holder, lo, at, c)
            if holder in chosen.set:
                running.one(holder, lo, at, c)
    return at_end


def _wakeups(wake: list[Columns], chosen: _Chosen) -> tuple[I64, I64, I64, npt.NDArray[np.bool_]]:
    """The chosen threads' wakeups: tid, time, target CPU, and whether sched_wakeup_new."""
    parts = []
    for w, new in zip(wake, (False, True), strict=True):
        keep = chosen(tl._raw(w, "pid"))
        parts.append((
            tl._i64(w, "pid")[keep], tl._i64(w, "ts")[keep], tl._i64(w, "target_cpu")[keep],
            np.full(int(keep.sum()), new),
        ))  # fmt: skip
    tid, ts, cpu, is_new = (np.concatenate([p[k] for p in parts]) for k in range(4))
    return tid, ts, cpu, is_new


def _sleeps(
    sw: Columns, wake: list[Columns], calls: tl.Calls, chosen: _Chosen, hi: int, no_call: int
) -> tuple[I64, I64, I64, I64]:
    """From each switch-out in a sleeping state to the next wakeup at or after it (else
    `hi`), with the syscall in flight at the switch-out: tid, start, end, number."""
    prev, state = tl._raw(sw, "prev_pid"), tl._i64(sw, "prev_state")
    out = chosen(prev) & ((state & STATE_MASK) != 0) & ((state & EXIT_STATES) == 0)
    o_tid, o_ts = prev[out].astype(np.int64), tl._i64(sw, "ts")[out]
    del out
    w_tid, w_ts, _, _ = _wakeups(wake, chosen)
    at = tl._first_after(w_tid, w_ts, o_tid, o_ts - 1)
    woken = np.full(len(o_ts), hi, np.int64)
    woken[at >= 0] = w_ts[at[at >= 0]]
    # The call in flight: the latest entered at or before the switch-out (in reversed
    # time, the first after it), not returned before it.
    at = tl._first_after(calls.tid, -calls.enter, o_tid, -o_ts - 1)
    in_call = at >= 0
    returned = calls.exit[at[in_call]]
    in_call[in_call] = (returned < 0) | (returned > o_ts[in_call])
    nr = np.full(len(o_tid), no_call, np.int64)
    nr[in_call] = calls.nr[at[in_call]]
    return o_tid, o_ts, woken, nr


def _per_kind(
    capture: Capture, chosen: _Chosen, events: tuple[str, ...], tid_col: str, latest: bool,
    value_col: str | None = None, upto: int | None = None,
) -> Firsts:  # fmt: skip
    """The earliest (latest) event per chosen tid over some kinds of event (before `upto`)."""
    parts = []
    for name in events:
        cols = capture.get(name)
        if tid_col not in cols:
            continue
        tid, ts = tl._raw(cols, tid_col), tl._i64(cols, "ts")
        keep = chosen(tid) if upto is None else chosen(tid) & (ts <= upto)
        values = tl._i64(cols, value_col)[keep] if value_col is not None else None
        parts.append(_extreme(tid[keep], ts[keep], values, latest))
    return _merged(parts, latest)


def _edges_of_threads(
    capture: Capture,
    slices: tl.OnCpu,
    chosen: _Chosen,
    asleep: Mapping[int, int],
    lo: int,
    hi: int,
    no_call: int,
    running_at_end: set[int],
    gone: Firsts,
    waiting: _Intervals,
    sleeping: _Intervals,
) -> None:
    """The chosen threads' states open at the window's edges: waiting since its start (the
    first event a switch-in) or asleep (a wakeup; `asleep`: no event at all), waiting
    until its end (a wakeup or a preemption after the last switch-in)."""
    sw = capture.get("sched_switch")
    ts, cpu = tl._i64(sw, "ts"), tl._raw(sw, "cpu")
    prev, nxt, state = tl._raw(sw, "prev_pid"), tl._raw(sw, "next_pid"), tl._i64(sw, "prev_state")
    wake = [capture.get("sched_wakeup"), capture.get("sched_wakeup_new")]
    w_tid, w_ts, w_cpu, w_new = _wakeups(wake, chosen)
    inferred = slice(len(slices.tid) - slices.inferred, None)
    inf_tid, inf_start = slices.tid[inferred], slices.start[inferred]
    never, long_ago = (_NEVER, -1), (-_NEVER, -1)
    came = chosen(nxt)
    first_in = _extreme(nxt[came], ts[came], cpu[came])
    first_wake = _extreme(w_tid[~w_new], w_ts[~w_new])
    newborn = set(w_tid[w_new].tolist()) | set(tl._i64(capture.get("task_newtask"), "pid").tolist())
    # On a CPU (any event of its own), up to the latest of those first events: later ones
    # cannot come first.
    firsts = [min(first_in.get(t, never)[0], first_wake.get(t, never)[0]) for t in chosen.set]
    upto = max((t for t in firsts if t != _NEVER), default=-_NEVER)
    first_active = _merged(
        [
            _per_kind(capture, chosen, tuple(capture.events), "common_pid", False, upto=upto),
            _per_kind(capture, chosen, ("sched_stat_runtime",), "pid", False, upto=upto),
            _extreme(inf_tid, inf_start),
        ]
    )
    # Waits still going at the end: the latest start (a wakeup, a preemption) after the
    # latest end (a switch-in, an inferred start), of a thread not on a CPU then; a runtime
    # update after it says it ran since (its switch from idle unrecorded).
    preempted = chosen(prev) & ((state & STATE_MASK) == 0)
    latest_start = _merged(
        [
            _extreme(w_tid, w_ts, w_cpu, True),
            _extreme(prev[preempted], ts[preempted], cpu[preempted], True),
        ],
        latest=True,
    )
    del preempted
    latest_end = _merged(
        [_extreme(nxt[came], ts[came], None, True), _extreme(inf_tid, inf_start, None, True)],
        latest=True,
    )
    del came
    latest_run = _per_kind(capture, chosen, ("sched_stat_runtime",), "pid", True)
    # Threads known asleep at the start that did anything at all (any time).
    quiet = _Chosen(np.fromiter((t for t in asleep if t in chosen.set), np.int64))
    stirred: set[int] = set()
    for column in ("common_pid", "pid", "next_pid") if len(quiet.tids) else ():
        stirred |= set(_per_kind(capture, quiet, tuple(capture.events), column, False))
    sleepers: dict[int, int] = {}
    for tid in sorted(chosen.set):
        if tid in latest_start and tid not in running_at_end and tid not in gone:
            since, on = latest_start[tid]
            ran_since = latest_run.get(tid, long_ago)[0] >= since
            if since > latest_end.get(tid, long_ago)[0] and not ran_since:
                waiting.one(tid, since, hi, on)
        if tid in newborn:
            continue  # born in the window: nothing before it
        active = first_active.get(tid, never)[0]
        woke = first_wake.get(tid, never)[0]
        came_in, in_cpu = first_in.get(tid, never)
        # On a tie the wakeup or the switch-in came first: what the thread did on the CPU
        # (an inferred slice's start, a syscall's return) came after it.
        if woke != _NEVER and woke <= min(active, came_in):
            sleepers[tid] = woke
        elif came_in <= active and came_in < woke:
            waiting.one(tid, lo, came_in, in_cpu)
        elif tid in asleep and tid not in stirred:
            sleeping.one(tid, lo, hi, asleep[tid])  # no event at all: asleep throughout
    if not sleepers:
        return
    # Asleep since the start: in the call its first syscall event returns from, if that
    # is an exit (before any enter).
    some = _Chosen(np.fromiter(sleepers, np.int64))
    first_enter = _per_kind(capture, some, ("sys_enter",), "common_pid", False)
    first_exit = _per_kind(capture, some, ("sys_exit",), "common_pid", False, "id")
    for tid, woke in sleepers.items():
        nr = asleep.get(tid, no_call)
        exit_at, exit_nr = first_exit.get(tid, never)
        if exit_at < first_enter.get(tid, never)[0]:
            nr = exit_nr
        sleeping.one(tid, lo, woke, nr)


def _deaths(capture: Capture, chosen: _Chosen) -> Firsts:
    """When each chosen thread that ended did: its switch-out as EXIT_DEAD or EXIT_ZOMBIE,
    else sched_process_exit."""
    sw = capture.get("sched_switch")
    state = tl._i64(sw, "prev_state")
    dead = (state & EXIT_STATES) != 0
    prev = tl._raw(sw, "prev_pid")[dead]
    dead_out = _extreme(prev[chosen(prev)], tl._i64(sw, "ts")[dead][chosen(prev)], None, True)
    exits = _per_kind(capture, chosen, ("sched_process_exit",), "pid", True)
    return _merged([exits, dead_out], latest=True)
