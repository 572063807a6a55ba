"""The four monitors computed from every event (the tracefs backend's `Capture`), with the
same meanings as the bpftrace programs in syscalls.py, cpu.py, process.py and io.py, so
that both backends give the same contend.trace/1 rows.

Vectorised where the event count is large (sched_switch, raw_syscalls): columns are
sorted once and paired by position, never walked event by event in Python.

Kernel facts used here:
- sched_switch runs in the task switching out (kernel/sched/core.c __schedule()); a
  `prev_state` whose low byte is 0 (TASK_RUNNING; 6.x reports a preemption as
  TASK_REPORT_MAX) is an involuntary switch and the start of a run-queue wait; a
  wakeup starts one too. A wait ends at the task's next switch-in.
- On this project's VM kernel (6.18, Firecracker) ftrace never records a switch *from*
  the idle task on CPU 1 (bpftrace sees it). A slice whose switch-in is missing is taken
  to start at the task's last wakeup, or its own last switch, or when the CPU went to
  another task, whichever is latest (it cannot start before any of them); the wait
  ending there is then counted as 0. How many slices were inferred is in `notes`.
- task_newtask's clone_flags & CLONE_THREAD (0x00010000) tells a thread from a process.
- The exit status is not in sched_process_exit: the code is the argument of exit_group
  (whole process) or exit (one thread), a fatal signal's number comes from
  signal_deliver with the default action (sa_handler SIG_DFL).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt

from contend.collect.tracefs import Capture, Columns
from contend.model import (
    CounterSample,
    CpuRow,
    CpuSlice,
    FileRow,
    HistBucket,
    IoRow,
    Occupant,
    PreemptorRow,
    ProcessEvent,
    RunQueueLatency,
    SyscallRow,
    Timeline,
    WaitRow,
    Wakeup,
)
from contend.monitors import cpu as cpu_monitor
from contend.monitors import io as io_monitor
from contend.monitors.syscalls import BLOCKING, NO_RETURN, syscall_name, table_for

CLONE_THREAD = 0x00010000
SIG_DFL = 0
# Signals whose default action does not end the process (man 7 signal): everything else
# that is delivered with SIG_DFL kills it.
NOT_FATAL = frozenset({17, 18, 19, 20, 21, 22, 23, 28})  # CHLD CONT STOP TSTP TTIN TTOU URG WINCH

I64 = npt.NDArray[np.int64]

# glibc mallopt(3) parameters (malloc.h) and their defaults.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536


@contextlib.contextmanager
def reusing_freed_memory() -> Iterator[bool]:
    """Meanwhile, let this process reuse the memory of freed arrays (glibc: no mmap per
    allocation, no trimming) instead of asking the kernel for fresh zeroed pages each
    time: the analysis makes many temporary arrays of one size (tens of MB for millions
    of events), and the page faults of fresh ones cost more than the work on them (on
    this project's VM, 1-2 s per GB touched). Afterwards: glibc's default limits, and
    the free memory given back (malloc_trim). Yields False if not glibc."""
    try:
        libc = ctypes.CDLL(None)
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield False
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    trim.argtypes = [ctypes.c_size_t]
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    try:
        yield ok
    finally:
        mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        trim(0)


def _i64(cols: Columns, name: str) -> I64:
    if name not in cols:
        return np.zeros(0, dtype=np.int64)
    return cols[name].astype(np.int64, copy=False)  # read-only use: no copy if int64


def _comm(raw: object) -> str:
    if isinstance(raw, bytes | np.bytes_):
        return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")
    return str(raw)


@dataclass
class Tasks:
    """Who is who: tid -> tgid and comm, and which tids are the target.

    `initial`: tid -> tgid of the target's threads at the start (empty: every task is a
    target). Children of targets (task_newtask) join the target.
    """

    tgid: dict[int, int] = field(default_factory=dict)
    comm: dict[int, str] = field(default_factory=dict)
    targets: set[int] = field(default_factory=set)
    everyone: bool = False
    resolve: Callable[[int], tuple[int, str] | None] | None = None
    by_comm: str | None = None  # --comm: every task of that name is a target, no other

    def is_target(self, tid: int) -> bool:
        return tid != 0 and (self.everyone or tid in self.targets)

    def target_mask(self, tids: npt.NDArray[np.integer]) -> npt.NDArray[np.bool_]:
        if self.everyone:
            nonzero: npt.NDArray[np.bool_] = tids != 0
            return nonzero
        return _isin(tids, np.fromiter(self.targets, dtype=np.int64))

    def pid_of(self, tid: int) -> int:
        if tid not in self.tgid and self.resolve is not None:
            who = self.resolve(tid)
            self.tgid[tid] = who[0] if who else tid
            if who and tid not in self.comm:
                self.comm[tid] = who[1]
        return self.tgid.get(tid, tid)

    def comm_of(self, tid: int) -> str:
        if tid not in self.comm:
            self.pid_of(tid)
        return self.comm.get(tid) or self.comm.get(self.tgid.get(tid, tid), "")


def _isin(tids: npt.NDArray[np.integer], wanted: I64) -> npt.NDArray[np.bool_]:
    """np.isin(tids, wanted), through a table indexed by tid (one gather, no sort) when
    the ids allow it."""
    if len(wanted) == 0 or len(tids) == 0:
        return np.zeros(len(tids), dtype=bool)
    if min(int(tids.min()), int(wanted.min())) >= 0:
        top = max(int(tids.max()), int(wanted.max()))
        if top < _TID_TABLE:
            table = np.zeros(top + 1, dtype=bool)
            table[wanted] = True
            found: npt.NDArray[np.bool_] = table[tids]
            return found
    mask: npt.NDArray[np.bool_] = np.isin(tids, wanted)
    return mask


def learn_tasks(capture: Capture, tasks: Tasks) -> Tasks:
    """Fill tid -> tgid and comm from the events, and grow the target with every task
    a target created (in time order: a grandchild's parent must be known first)."""
    nt = capture.get("task_newtask")
    for parent, child, flags, comm in zip(
        _i64(nt, "common_pid").tolist(),
        _i64(nt, "pid").tolist(),
        _i64(nt, "clone_flags").tolist(),
        nt.get("comm", np.zeros(0, "S16")).tolist(),
        strict=True,
    ):
        parent_tgid = tasks.tgid.get(parent, parent)
        tasks.tgid[child] = parent_tgid if flags & CLONE_THREAD else child
        tasks.comm[child] = _comm(comm)
        if tasks.is_target(parent) and tasks.by_comm is None:
            tasks.targets.add(child)
    sw = capture.get("sched_switch")
    if sw:
        # The last name each task had when it left a CPU (a later exec renames it).
        uniq, last = _last_of_each(_i64(sw, "prev_pid"))
        names = sw["prev_comm"][last]
        for tid, name in zip(uniq.tolist(), names.tolist(), strict=True):
            tasks.comm[tid] = _comm(name)
    ex = capture.get("sched_process_exec")
    for tid, filename in zip(_i64(ex, "pid").tolist(), ex.get("filename", []), strict=True):
        # The comm after exec is the file's base name, cut to TASK_COMM_LEN - 1.
        tasks.comm.setdefault(tid, os.path.basename(str(filename))[:15])
    if tasks.by_comm is not None:
        # By name, as bpftrace's `comm ==`: a task of that name, not a child renamed by
        # exec (the kernel filter kept only its switches with a task of that name).
        tasks.targets |= {tid for tid, name in tasks.comm.items() if name == tasks.by_comm}
    return tasks


# --- cpu ----------------------------------------------------------------------------------


@dataclass
class OnCpu:
    """Every slice of a target thread on a CPU, and every run-queue wait."""

    tid: I64
    cpu: I64
    start: I64
    end: I64
    inferred: int  # slices whose switch-in was not recorded (a switch from idle)
    wait_tid: I64
    wait_start: I64
    wait_end: I64
    wait_cpu: I64
    inferred_exactly: int = 0  # of those, started from sched_stat_runtime (else a bound)


def log2_hist(values_us: I64) -> tuple[HistBucket, ...]:
    """bpftrace's hist(): [0], [1], [2, 3], [4, 7], ... with empty buckets in between."""
    if len(values_us) == 0:
        return ()
    v = np.maximum(values_us, 0)
    power = np.where(v > 0, np.floor(np.log2(np.maximum(v, 1))).astype(np.int64) + 1, 0)
    counts = np.bincount(power)
    out = []
    for k, n in enumerate(counts.tolist()):
        low = 0 if k == 0 else 1 << (k - 1)
        high = 0 if k == 0 else (1 << k) - 1
        out.append(HistBucket(low, high, int(n)))
    return tuple(out)


# Task ids are at most PID_MAX_LIMIT (2^22): one table indexed by tid renumbers them.
_TID_TABLE = 1 << 23


def _dense_ids(*arrays: I64) -> tuple[I64, list[I64]] | None:
    """The distinct task ids of `arrays`, ascending, and each array as indices into them:
    through a table indexed by tid, not a sort. None if an id is out of the table."""
    full = [a for a in arrays if len(a)]
    if not full:
        return np.zeros(0, np.int64), [np.zeros(0, np.int64) for _ in arrays]
    if min(int(a.min()) for a in full) < 0 or max(int(a.max()) for a in full) >= _TID_TABLE:
        return None
    present = np.zeros(max(int(a.max()) for a in full) + 1, dtype=bool)
    for a in full:
        present[a] = True
    rank = np.cumsum(present, dtype=np.int64) - 1
    return np.flatnonzero(present).astype(np.int64), [rank[a] for a in arrays]


@dataclass
class _Keys:
    """Events packed in one int64 each, ordered as (task, time, low bits):
    ``((rank of tid << time_bits) | ts - base) << low_bits | low``."""

    keys: list[I64]
    tids: I64 | None  # rank -> tid (None: the rank is the tid)
    time_bits: int
    base: int

    def ts(self, key: I64, low_bits: int) -> I64:
        stamps: I64 = ((key >> low_bits) & ((1 << self.time_bits) - 1)) + self.base
        return stamps

    def rank(self, key: I64, low_bits: int) -> I64:
        ranks: I64 = key >> (low_bits + self.time_bits)
        return ranks


def _pack(tids: list[I64], stamps: list[I64], lows: list[I64], low_bits: int) -> _Keys | None:
    """Task and time (and `lows`, < 2^low_bits) in one sortable int64 per event; None when
    they do not fit in 62 bits (then the callers sort on several keys). The tid itself
    when it fits, else its rank among the distinct tids."""
    full = [s for s in stamps if len(s)]
    full_tids = [t for t in tids if len(t)]
    if not full or not full_tids:
        return None
    base = min(int(s.min()) for s in full)
    time_bits = max(1, (max(int(s.max()) for s in full) - base).bit_length())
    uniq: I64 | None = None
    if (
        min(int(t.min()) for t in full_tids) >= 0
        and max(int(t.max()) for t in full_tids).bit_length() + time_bits + low_bits <= 62
    ):
        ranks = [np.array(t, dtype=np.int64) for t in tids]  # fresh: shifted in place
    else:
        dense = _dense_ids(*tids)
        if dense is None:
            return None
        uniq, ranks = dense
        if max(1, (len(uniq) - 1).bit_length()) + time_bits + low_bits > 62:
            return None
    keys = []
    for key, stamp, low in zip(ranks, stamps, lows, strict=True):
        # In place (`key` is a fresh array): rank << time_bits | (ts - base), shifted.
        key <<= time_bits
        key += stamp
        key -= base
        if low_bits:
            key <<= low_bits
            key |= low
        keys.append(key)
    return _Keys(keys, uniq, time_bits, base)


def _latest_before(ev_tid: I64, ev_ts: I64, q_tid: I64, q_ts: I64) -> I64:
    """Per query: the latest `ev_ts` of an event of the same task strictly before `q_ts`
    (-1: none): the first after it, in time reversed."""
    found = np.full(len(q_tid), -1, dtype=np.int64)
    if len(q_tid) == 0 or len(ev_tid) == 0:
        return found
    zero = np.zeros(1, np.int64)
    packed = _pack([ev_tid, q_tid], [ev_ts, q_ts], [zero, zero], 0)
    if packed is None:
        at = _first_after(ev_tid, -ev_ts, q_tid, -q_ts)
        found[at >= 0] = ev_ts[at[at >= 0]]
        return found
    # Only the stamps are wanted: a sort of the keys (no argsort), the stamp unpacked.
    events = np.sort(packed.keys[0])
    queries = packed.keys[1]
    at = np.searchsorted(events, queries, "left") - 1
    hit = at >= 0
    hit[hit] = packed.rank(events[at[hit]], 0) == packed.rank(queries[hit], 0)
    found[hit] = packed.ts(events[at[hit]], 0)
    return found


def _first_after(ev_tid: I64, ev_ts: I64, q_tid: I64, q_ts: I64) -> I64:
    """Per query: the index of the earliest event of the same task strictly after `q_ts`
    (-1: none)."""
    out = np.full(len(q_tid), -1, dtype=np.int64)
    if len(q_tid) == 0 or len(ev_tid) == 0:
        return out
    zero = np.zeros(1, np.int64)
    packed = _pack([ev_tid, q_tid], [ev_ts, q_ts], [zero, zero], 0)
    if packed is None:
        # Several keys: events before queries on a tie (strictly after), the next event
        # carried backward.
        n_e = len(ev_tid)
        all_tid = np.concatenate([ev_tid, q_tid])
        all_ts = np.concatenate([ev_ts, q_ts])
        kind = np.concatenate([np.zeros(n_e, np.int64), np.ones(len(q_tid), np.int64)])
        o = np.lexsort((kind, all_ts, all_tid))
        big = len(o)
        nxt = np.where(kind[o] == 0, np.arange(big), big)
        nxt = np.minimum.accumulate(nxt[::-1])[::-1]
        q_pos = np.flatnonzero(kind[o] == 1)
        after = np.r_[nxt, big][q_pos + 1]
        hit = after < big
        hit[hit] = all_tid[o][after[hit]] == all_tid[o][q_pos[hit]]
        out[o[q_pos[hit]] - n_e] = o[after[hit]]
        return out
    eo = np.argsort(packed.keys[0])
    events = packed.keys[0][eo]
    queries = packed.keys[1]
    at = np.searchsorted(events, queries, "right")
    hit = at < len(events)
    hit[hit] = packed.rank(events[at[hit]], 0) == packed.rank(queries[hit], 0)
    out[hit] = eo[at[hit]]
    return out


# The events a run-queue wait is paired from, in their order on a tie (same task, same
# time): starts (a wakeup, an involuntary switch-out), then ends (a switch-in, an inferred
# slice start).
WAKEUP, PREEMPTED, SWITCH_IN, INFERRED_IN = 0, 1, 2, 3


def _pair_waits(ev_tid: I64, ev_ts: I64, ev_kind: I64, ev_cpu: I64) -> tuple[I64, I64, I64, I64]:
    """Run-queue waits: a start (kind < SWITCH_IN) then the task's next end; the latest
    start wins. In (task, time) order: tid, start, end and the end's CPU of each wait."""
    n = len(ev_tid)
    cpu_bits = max(1, int(ev_cpu.max()).bit_length()) if n else 1
    packed = None
    if n and int(ev_cpu.min()) >= -1:
        # (task, time, kind, the end's CPU): events with equal keys are the same event.
        low = (ev_kind << cpu_bits) | np.where(ev_kind >= SWITCH_IN, ev_cpu, 0)
        packed = _pack([ev_tid], [ev_ts], [low], 2 + cpu_bits)
    if packed is not None:
        keys = np.sort(packed.keys[0])
        is_end = (keys >> (cpu_bits + 1)) & 1
        task = packed.rank(keys, 2 + cpu_bits)
        valid = np.zeros(n, dtype=bool)
        valid[1:] = (is_end[1:] == 1) & (is_end[:-1] == 0) & (task[1:] == task[:-1])
        ends = keys[valid]
        starts = keys[np.flatnonzero(valid) - 1]
        who = packed.rank(ends, 2 + cpu_bits)
        if packed.tids is not None:
            who = packed.tids[who]
        return (
            who,
            packed.ts(starts, 2 + cpu_bits),
            packed.ts(ends, 2 + cpu_bits),
            ends & ((1 << cpu_bits) - 1),
        )
    # Several keys: an end whose latest start comes after the previous end is an end
    # right after a start of the same task (nothing lies between).
    o = np.lexsort((ev_cpu, ev_kind, ev_ts, ev_tid))  # as the packed keys' order
    tid, ts, end, cpu = ev_tid[o], ev_ts[o], ev_kind[o] >= SWITCH_IN, ev_cpu[o]
    valid = np.zeros(n, dtype=bool)
    valid[1:] = end[1:] & ~end[:-1] & (tid[1:] == tid[:-1])
    return tid[valid], ts[np.flatnonzero(valid) - 1], ts[valid], cpu[valid]


def _by_cpu_then_time(sw: Columns) -> npt.NDArray[np.intp]:
    """The switches' order by CPU, then time (then as given): a stable sort by CPU
    alone when they are in time order already (as a capture's are)."""
    ts = _i64(sw, "ts")
    cpu = sw["cpu"] if "cpu" in sw else np.zeros(0, np.int64)
    if np.all(ts[1:] >= ts[:-1]):
        order: npt.NDArray[np.intp] = np.argsort(cpu, kind="stable")
        return order
    order = np.lexsort((ts, cpu.astype(np.int64)))
    return order


def _by_first_then_second(first: I64, second: I64) -> npt.NDArray[np.intp]:
    """np.lexsort((second, first)): one packed key, stable-sorted (mostly in order already,
    which the stable sort's runs take as they are) when both fit in 62 bits."""
    integers = first.dtype.kind in "iu" and second.dtype.kind in "iu"
    if integers and len(first) and int(first.min()) >= 0 and int(second.min()) >= 0:
        bits = max(1, int(second.max()).bit_length())
        if int(first.max()).bit_length() + bits <= 62:
            key = np.array(first, dtype=np.int64)
            key <<= bits
            key += second
            order: npt.NDArray[np.intp] = np.argsort(key, kind="stable")
            return order
    order = np.lexsort((second, first))
    return order


def _raw(cols: Columns, name: str) -> npt.NDArray[np.integer]:
    """A column in its own type (int32 pids, int16 CPUs): gathers of narrow columns move
    less memory than of their int64 copies."""
    if name not in cols:
        return np.zeros(0, dtype=np.int64)
    return cast("npt.NDArray[np.integer]", cols[name])


def on_cpu(capture: Capture, tasks: Tasks) -> OnCpu:
    sw = capture.get("sched_switch")
    order = _by_cpu_then_time(sw)
    ts = _i64(sw, "ts")[order]
    cpu, prev, nxt = (
        _raw(sw, "cpu")[order],
        _raw(sw, "prev_pid")[order],
        _raw(sw, "next_pid")[order],
    )
    preempted = ((_raw(sw, "prev_state") & 0xFF) == 0)[order]
    same_cpu = cpu[1:] == cpu[:-1]
    a_next, b_prev = nxt[:-1], prev[1:]
    b_target = tasks.target_mask(b_prev) & same_cpu
    seen_in = b_target & (a_next == b_prev)
    # A switch-out without its switch-in: from idle (unrecorded on this kernel), maybe
    # after a chain of other tasks' switches that the pid filter did not record.
    idle_gap = b_target & ~seen_in
    slice_tid = b_prev[seen_in].astype(np.int64)
    slice_start = ts[:-1][seen_in]
    slice_end = ts[1:][seen_in]
    slice_cpu = cpu[1:][seen_in].astype(np.int64)

    wake = [capture.get("sched_wakeup"), capture.get("sched_wakeup_new")]
    w_tid = np.concatenate([_i64(w, "pid") for w in wake])
    w_ts = np.concatenate([_i64(w, "ts") for w in wake])
    keep = tasks.target_mask(w_tid)
    w_tid, w_ts = w_tid[keep], w_ts[keep]

    # Slices that began with an unrecorded switch from idle: from the last wakeup.
    # A CPU's first record may be such a switch-out too (the idle switch-in unrecorded).
    first = np.r_[True, cpu[1:] != cpu[:-1]] if len(cpu) else np.zeros(0, bool)
    first &= tasks.target_mask(prev)
    inf_tid = np.concatenate([b_prev[idle_gap], prev[first]]).astype(np.int64)
    inf_lo = np.concatenate([ts[:-1][idle_gap], np.full(int(first.sum()), -1, np.int64)])
    inf_end = np.concatenate([ts[1:][idle_gap], ts[first]])
    inf_cpu = np.concatenate([cpu[1:][idle_gap], cpu[first]]).astype(np.int64)
    inf_start = np.full(len(inf_tid), -1, dtype=np.int64)
    by_runtime = 0
    if len(inf_tid):
        # The slice starts after the task's own previous switch (in or out, any CPU) and
        # after the CPU went to another task; at its wakeup if that came later.
        mine_out, mine_in = _isin(prev, inf_tid), _isin(nxt, inf_tid)
        own = np.concatenate([prev[mine_out], nxt[mine_in]]).astype(np.int64)
        sw_ts = _latest_before(own, np.concatenate([ts[mine_out], ts[mine_in]]), inf_tid, inf_end)
        del mine_out, mine_in, own
        wk_ts = _latest_before(w_tid, w_ts, inf_tid, inf_end)
        bound = np.maximum(inf_lo, sw_ts)
        inf_start = np.where(wk_ts >= bound, wk_ts, bound)
        rt = capture.get("sched_stat_runtime")
        if rt:
            # Exactly: the slice's first runtime update counts from its switch-in.
            r_tid, r_ts = _i64(rt, "pid"), _i64(rt, "ts")
            at = _first_after(r_tid, r_ts, inf_tid, bound)
            hit = at >= 0
            hit[hit] = r_ts[at[hit]] <= inf_end[hit]
            began = r_ts[at[hit]] - _i64(rt, "runtime")[at[hit]]
            inf_start[hit] = np.maximum(inf_start[hit], began)
            by_runtime = int(hit.sum())
    found = inf_start >= 0
    tid_all = np.concatenate([slice_tid, inf_tid[found]])
    start_all = np.concatenate([slice_start, inf_start[found]])
    end_all = np.concatenate([slice_end, inf_end[found]])
    cpu_all = np.concatenate([slice_cpu, inf_cpu[found]])

    # Run-queue waits: a start (wakeup, involuntary switch-out) then the next switch-in;
    # the latest start wins, as in cpu.py's program.
    invol = tasks.target_mask(prev) & preempted
    in_target = tasks.target_mask(nxt)
    parts = (
        (w_tid, w_ts, np.full(len(w_tid), -1, np.int64), WAKEUP),
        (prev[invol], ts[invol], cpu[invol], PREEMPTED),
        (nxt[in_target], ts[in_target], cpu[in_target], SWITCH_IN),
        (inf_tid[found], inf_start[found], inf_cpu[found], INFERRED_IN),
    )
    ev_tid = np.concatenate([p[0] for p in parts]).astype(np.int64, copy=False)
    ev_ts = np.concatenate([p[1] for p in parts])
    ev_cpu = np.concatenate([p[2] for p in parts]).astype(np.int64, copy=False)
    ev_kind = np.concatenate([np.full(len(p[0]), p[3], np.int64) for p in parts])
    del parts
    wait_tid, wait_start, wait_end, wait_cpu = _pair_waits(ev_tid, ev_ts, ev_kind, ev_cpu)
    return OnCpu(
        tid=tid_all,
        cpu=cpu_all,
        start=start_all,
        end=end_all,
        inferred=int(found.sum()),
        inferred_exactly=by_runtime,
        wait_tid=wait_tid,
        wait_start=wait_start,
        wait_end=wait_end,
        wait_cpu=wait_cpu,
    )


def _sum_by(keys: I64, values: I64 | None = None) -> Counter[int]:
    """Sum of `values` (None: count) per key, vectorised; keys ascending."""
    if len(keys) == 0:
        return Counter()
    dense = _dense_ids(keys)
    if dense is None:
        uniq, inverse = np.unique(keys, return_inverse=True)
    else:
        uniq, (inverse,) = dense
    if values is None:
        sums = np.bincount(inverse, minlength=len(uniq))
    else:
        weighted = np.bincount(inverse, weights=values.astype(np.float64), minlength=len(uniq))
        sums = np.rint(weighted).astype(np.int64)
    return Counter(dict(zip(uniq.tolist(), sums.tolist(), strict=True)))


def _last_of_each(tids: I64) -> tuple[I64, I64]:
    """The distinct tids, ascending, and where each one occurs last."""
    dense = _dense_ids(tids)
    if dense is None:
        uniq, first = np.unique(tids[::-1], return_index=True)
        return uniq, len(tids) - 1 - first
    uniq, (rank,) = dense
    last = np.zeros(len(uniq), np.int64)
    np.maximum.at(last, rank, np.arange(len(tids), dtype=np.int64))
    return uniq, last


def _count_pairs(tids: I64, comms: npt.NDArray[np.generic]) -> Counter[tuple[int, str]]:
    """Counter of (tid, name) as if counted one by one in order (the first seen first)."""
    out = Counter[tuple[int, str]]()
    if len(tids) == 0:
        return out
    raw = np.ascontiguousarray(comms)
    key: npt.NDArray[np.uint64] | None = None
    if raw.dtype.kind == "S" and raw.dtype.itemsize % 8 == 0:
        # One 64-bit hash of (tid, name bytes); groups are checked, a collision falls back.
        parts = raw.view(np.uint64).reshape(len(raw), -1)
        key = tids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        for k in range(parts.shape[1]):
            key = (key ^ parts[:, k]) * np.uint64(0xBF58476D1CE4E5B9)
            key ^= key >> np.uint64(31)
    if key is not None:
        _, first, inverse, counts = np.unique(
            key, return_index=True, return_inverse=True, return_counts=True
        )
        if np.array_equal(tids[first][inverse], tids) and np.array_equal(raw[first][inverse], raw):
            for i in np.argsort(first, kind="stable").tolist():
                out[(int(tids[first[i]]), _comm(raw[first[i]]))] += int(counts[i])
            return out
    for tid, comm in zip(tids.tolist(), comms.tolist(), strict=True):
        out[(tid, _comm(comm))] += 1
    return out


def cpu_rows(
    capture: Capture, tasks: Tasks, slices: OnCpu
) -> tuple[list[CpuRow], list[PreemptorRow]]:
    sw = capture.get("sched_switch")
    prev, nxt, state = _i64(sw, "prev_pid"), _i64(sw, "next_pid"), _i64(sw, "prev_state")
    out_target = tasks.target_mask(prev)
    invol_mask = out_target & ((state & 0xFF) == 0)
    vol = _sum_by(prev[out_target & ~invol_mask])
    invol = _sum_by(prev[invol_mask])
    wake = [capture.get("sched_wakeup"), capture.get("sched_wakeup_new")]
    w_tid = np.concatenate([_i64(w, "pid") for w in wake])
    w_mask = tasks.target_mask(w_tid)
    wakeups = _sum_by(w_tid[w_mask])
    dur = slices.end - slices.start
    on_ns = _sum_by(slices.tid, dur)
    n_slices = _sum_by(slices.tid)
    wait = slices.wait_end - slices.wait_start
    rq_n = _sum_by(slices.wait_tid)
    rq_sum = _sum_by(slices.wait_tid, wait)
    tids = set(on_ns) | set(vol) | set(invol) | set(wakeups) | set(rq_n)
    # Every wait is here: each thread's percentiles exactly (numpy's linear rule), and
    # its own histograms of waits and slices.
    q_wait = _per_tid_quantiles(slices.wait_tid, wait, (50.0, 99.0))
    wait_hists = _per_tid_hists(slices.wait_tid, wait)
    slice_hists = _per_tid_hists(slices.tid, dur)
    rows = []
    for tid in tids:
        rows.append(
            CpuRow(
                pid=tasks.pid_of(tid),
                tid=tid,
                comm=tasks.comm_of(tid),
                on_cpu_ns=on_ns[tid],
                slices=n_slices[tid],
                voluntary_switches=vol[tid],
                involuntary_switches=invol[tid],
                wakeups=wakeups[tid],
                run_queue_latency=RunQueueLatency(
                    count=rq_n[tid],
                    avg_ns=rq_sum[tid] / rq_n[tid] if rq_n[tid] else None,
                    p50_ns=q_wait.get(tid, (None, None))[0],
                    p99_ns=q_wait.get(tid, (None, None))[1],
                    hist=wait_hists.get(tid, ()),
                ),
                slice_hist=slice_hists.get(tid, ()),
            )
        )
    rows.sort(key=lambda r: (-r.on_cpu_ns, r.pid, r.tid))
    preempt = (
        _count_pairs(nxt[invol_mask], sw["next_comm"][invol_mask])
        if sw
        else Counter[tuple[int, str]]()
    )
    preemptors = [PreemptorRow(comm=c, pid=p, count=n) for (p, c), n in preempt.most_common(10)]
    if rows:
        rq_hist = log2_hist(wait // 1000)
        n = sum(r.run_queue_latency.count for r in rows)
        total = RunQueueLatency(
            count=n,
            avg_ns=float(wait.sum()) / n if n else None,
            p50_ns=_ns(cpu_monitor.hist_percentile(rq_hist, 50)),
            p99_ns=_ns(cpu_monitor.hist_percentile(rq_hist, 99)),
            hist=rq_hist,
        )
        rows.append(cpu_monitor.total_row(rows, total, log2_hist(dur // 1000)))
    return rows, preemptors


def _groups(tids: I64, values: I64) -> list[tuple[int, I64]]:
    """(tid, its values ascending) for each tid, from one sort."""
    if len(tids) == 0:
        return []
    order = np.lexsort((values, tids))
    t, v = tids[order], values[order]
    cuts = np.flatnonzero(t[1:] != t[:-1]) + 1
    starts = np.r_[0, cuts]
    ends = np.r_[cuts, len(t)]
    return [(int(t[a]), v[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def _per_tid_quantiles(
    tids: I64, values: I64, qs: tuple[float, ...]
) -> dict[int, tuple[float | None, ...]]:
    return {tid: tuple(float(np.percentile(v, q)) for q in qs) for tid, v in _groups(tids, values)}


def _per_tid_hists(tids: I64, values_ns: I64) -> dict[int, tuple[HistBucket, ...]]:
    return {tid: log2_hist(v // 1000) for tid, v in _groups(tids, values_ns)}


def _ns(us: float | None) -> float | None:
    return None if us is None else us * 1000.0


# --- syscalls -----------------------------------------------------------------------------


@dataclass
class Calls:
    """Every syscall of a target: enter time, tid, number, first argument; the exit time
    and return value when it returned while traced (else -1 / 0)."""

    tid: I64
    nr: I64
    arg0: I64
    enter: I64
    exit: I64  # -1: did not return while traced
    ret: I64


def pair_calls(capture: Capture, tasks: Tasks) -> Calls:
    en, ex = capture.get("sys_enter"), capture.get("sys_exit")
    e_tid, x_tid = _i64(en, "common_pid"), _i64(ex, "common_pid")
    e_keep, x_keep = tasks.target_mask(e_tid), tasks.target_mask(x_tid)
    e_tid, x_tid = e_tid[e_keep], x_tid[x_keep]
    e_ts, x_ts = _i64(en, "ts")[e_keep], _i64(ex, "ts")[x_keep]
    e_nr, x_nr = _i64(en, "id")[e_keep], _i64(ex, "id")[x_keep]
    e_arg = _i64(en, "args[0]")[e_keep] if "args[0]" in en else np.zeros(len(e_tid), np.int64)
    x_ret = _i64(ex, "ret")[x_keep]
    n_e = len(e_tid)
    tid = np.concatenate([e_tid, x_tid])
    ts = np.concatenate([e_ts, x_ts])
    kind = np.concatenate([np.zeros(n_e, np.int64), np.ones(len(x_tid), np.int64)])
    nr = np.concatenate([e_nr, x_nr])
    o = np.lexsort((kind, ts, tid))
    tid, ts, kind, nr = tid[o], ts[o], kind[o], nr[o]
    src = o  # position in the concatenation: < n_e is an enter
    # An exit pairs with the event just before it: an enter of the same thread and call.
    paired = np.zeros(len(tid), dtype=bool)
    if len(tid) > 1:
        paired[1:] = (
            (kind[1:] == 1) & (kind[:-1] == 0) & (tid[1:] == tid[:-1]) & (nr[1:] == nr[:-1])
        )
    exit_ts = np.full(n_e, -1, dtype=np.int64)
    ret = np.zeros(n_e, dtype=np.int64)
    enter_pos = src[np.nonzero(paired)[0] - 1]
    exit_pos = src[paired] - n_e
    exit_ts[enter_pos] = x_ts[exit_pos]
    ret[enter_pos] = x_ret[exit_pos]
    return Calls(e_tid, e_nr, e_arg, e_ts, exit_ts, ret)


def exited_tids(capture: Capture) -> set[int]:
    return set(_i64(capture.get("sched_process_exit"), "pid").tolist())


def syscall_rows(
    calls: Calls, tasks: Tasks, exited: set[int], machine: str | None = None
) -> list[SyscallRow]:
    numbers = {name: nr for nr, name in table_for(machine).items()}
    no_return = {numbers[n] for n in NO_RETURN if n in numbers}
    returned = calls.exit >= 0
    # A call in flight at the end counts if its thread lives on (it may still return),
    # or if it never returns (exit, exit_group): as the bpftrace backend counts.
    gone = (
        np.isin(calls.tid, np.fromiter(exited, np.int64))
        if exited
        else np.zeros(len(calls.tid), bool)
    )
    counted = returned | ~gone | np.isin(calls.nr, np.fromiter(no_return, np.int64))
    pids = np.array([tasks.pid_of(t) for t in calls.tid.tolist()], dtype=np.int64)
    dur = np.where(returned, calls.exit - calls.enter, 0)
    err = returned & (calls.ret < 0) & (calls.ret > -4096)
    # (pid, number) as one key: any number (-1, x32's bit 30) stays with its pid.
    key = (pids << 32) | (calls.nr & 0xFFFFFFFF)
    rows = []
    keys, inverse = np.unique(key[counted], return_inverse=True)
    if len(keys) == 0:
        return []
    c_returned, c_dur, c_err = returned[counted], dur[counted], err[counted]
    count = np.bincount(inverse)
    timed = np.bincount(inverse, weights=c_returned).astype(np.int64)
    total = np.bincount(inverse, weights=c_dur).astype(np.int64)
    errors = np.bincount(inverse, weights=c_err).astype(np.int64)
    longest = np.zeros(len(keys), dtype=np.int64)
    np.maximum.at(longest, inverse, c_dur)
    for i, k in enumerate(keys.tolist()):
        pid, nr = k >> 32, k & 0xFFFFFFFF
        nr = nr - (1 << 32) if nr >= 1 << 31 else nr
        name = syscall_name(nr, machine)
        rows.append(
            SyscallRow(
                pid=pid,
                comm=tasks.comm_of(pid),
                syscall=name,
                count=int(count[i]),
                errors=int(errors[i]),
                total_ns=int(total[i]),
                avg_ns=float(total[i]) / int(timed[i]) if timed[i] else None,
                max_ns=int(longest[i]),
                blocking=name in BLOCKING,
                timed=int(timed[i]),
            )
        )
    return sorted(rows, key=lambda r: (-r.count, r.pid, r.syscall))


# --- io -------------------------------------------------------------------------------------


def io_numbers(machine: str | None = None) -> dict[int, str]:
    ops = (*io_monitor.READS, *io_monitor.WRITES, "open", "openat", "close")
    return {nr: name for nr, name in table_for(machine).items() if name in ops}


def io_rows(
    calls: Calls,
    tasks: Tasks,
    paths: dict[tuple[int, int], str],
    machine: str | None = None,
) -> tuple[list[IoRow], list[FileRow], int]:
    """Per process and op: calls and bytes; per file, where the path is known.
    `paths[(tid, enter_ts)]`: the path an open returned, read from /proc during the run.
    Returns the rows and the number of successful opens whose path was not known."""
    ops = io_numbers(machine)
    mine = np.isin(calls.nr, np.fromiter(ops, np.int64))
    counts = Counter[tuple[int, str, str]]()
    nbytes = Counter[tuple[int, str, str]]()
    fcounts = Counter[tuple[int, str, str]]()
    fbytes = Counter[tuple[int, str, str]]()
    fds: dict[tuple[int, int], str] = {}
    unresolved = 0
    for tid, nr, arg0, enter, ex, ret in zip(
        calls.tid[mine].tolist(), calls.nr[mine].tolist(), calls.arg0[mine].tolist(),
        calls.enter[mine].tolist(), calls.exit[mine].tolist(), calls.ret[mine].tolist(),
        strict=True,
    ):  # fmt: skip
        op = ops[nr]
        pid = tasks.pid_of(tid)
        comm = tasks.comm_of(pid)
        if op == "close":
            counts[(pid, op, comm)] += 1
            fds.pop((pid, arg0), None)
            continue
        if ex < 0:
            continue  # counted at its return, as the bpftrace program does
        counts[(pid, op, comm)] += 1
        if op in ("open", "openat"):
            if ret >= 0:
                path = paths.get((tid, enter))
                if path is None:
                    unresolved += 1
                    continue
                fds[(pid, ret)] = path
                fcounts[(pid, op, path)] += 1
            continue
        if ret > 0:
            nbytes[(pid, op, comm)] += ret
            where = fds.get((pid, arg0))
            if where is not None:
                fcounts[(pid, op, where)] += 1
                fbytes[(pid, op, where)] += ret
    rows = [IoRow(p, c, op, n, nbytes[(p, op, c)]) for (p, op, c), n in counts.items()]
    rows.sort(key=lambda r: (-r.count, r.pid, r.op))
    files = [FileRow(p, path, op, n, fbytes[(p, op, path)]) for (p, op, path), n in fcounts.items()]
    files.sort(key=lambda r: (-r.bytes, -r.count, r.path))
    return rows, files, unresolved


# --- process --------------------------------------------------------------------------------


def process_events(
    capture: Capture, tasks: Tasks, calls: Calls, machine: str | None = None
) -> list[ProcessEvent]:
    out: list[ProcessEvent] = []
    nt = capture.get("task_newtask")
    for ts, parent, child, flags, comm in zip(
        _i64(nt, "ts").tolist(), _i64(nt, "common_pid").tolist(), _i64(nt, "pid").tolist(),
        _i64(nt, "clone_flags").tolist(), nt.get("comm", []), strict=True,
    ):  # fmt: skip
        if not tasks.is_target(parent):
            continue
        ppid = tasks.pid_of(parent)
        if flags & CLONE_THREAD:
            out.append(ProcessEvent(ts, "thread", ppid, child, ppid, _comm(comm)))
        else:
            out.append(ProcessEvent(ts, "fork", child, child, ppid, _comm(comm)))
    ex = capture.get("sched_process_exec")
    for ts, tid, filename in zip(
        _i64(ex, "ts").tolist(), _i64(ex, "pid").tolist(), ex.get("filename", []), strict=True
    ):
        if tasks.is_target(tid):
            comm = os.path.basename(str(filename))[:15]
            out.append(ProcessEvent(ts, "exec", tasks.pid_of(tid), tid, None, comm))
    # Exit codes: exit_group's argument for the whole process, exit's for one thread.
    numbers = {name: nr for nr, name in table_for(machine).items()}
    group_code: dict[int, tuple[int, int]] = {}  # tgid -> (ts, code)
    thread_code: dict[int, tuple[int, int]] = {}
    for tid, nr, arg0, ts in zip(
        calls.tid.tolist(), calls.nr.tolist(), calls.arg0.tolist(), calls.enter.tolist(),
        strict=True,
    ):  # fmt: skip
        if nr == numbers.get("exit_group"):
            group_code.setdefault(tasks.pid_of(tid), (ts, arg0 & 0xFF))
        elif nr == numbers.get("exit"):
            thread_code[tid] = (ts, arg0 & 0xFF)
    fatal: dict[int, tuple[int, int]] = {}  # tgid -> (ts, signal)
    sig = capture.get("signal_deliver")
    for ts, tid, signo, handler in zip(
        _i64(sig, "ts").tolist(), _i64(sig, "common_pid").tolist(), _i64(sig, "sig").tolist(),
        _i64(sig, "sa_handler").tolist(), strict=True,
    ):  # fmt: skip
        if handler == SIG_DFL and signo not in NOT_FATAL:
            fatal.setdefault(tasks.pid_of(tid), (ts, signo))
    pe = capture.get("sched_process_exit")
    for ts, tid, comm in zip(
        _i64(pe, "ts").tolist(), _i64(pe, "pid").tolist(), pe.get("comm", []), strict=True
    ):
        if not tasks.is_target(tid):
            continue
        pid = tasks.pid_of(tid)
        code: int | None = None
        signal = 0
        if pid in fatal and fatal[pid][0] <= ts:
            code, signal = 0, fatal[pid][1]
        elif pid in group_code and group_code[pid][0] <= ts:
            code = group_code[pid][1]
        elif tid in thread_code:
            code = thread_code[tid][1]
        out.append(
            ProcessEvent(ts, "exit", pid, tid, None, _comm(comm), exit_code=code, signal=signal)
        )
    out.sort(key=lambda e: e.ts_ns)
    return out


def syscall_totals(calls: Calls, tasks: Tasks) -> list[tuple[int, str, int]]:
    counts = Counter(tasks.pid_of(t) for t in calls.tid.tolist())
    return sorted(
        ((p, tasks.comm_of(p), n) for p, n in counts.items()), key=lambda r: (-r[2], r[0])
    )


# --- the timeline: who held each CPU, who waited behind whom ------------------------------


@dataclass
class Occupancy:
    """Per CPU, who held it and when (every recorded switch pair, plus the target slices
    whose switch from idle went unrecorded), sorted by CPU then start."""

    tid: I64
    cpu: I64
    start: I64
    end: I64
    names: dict[int, str]


def occupancy(capture: Capture, slices: OnCpu) -> Occupancy:
    sw = capture.get("sched_switch")
    ts, cpu = _i64(sw, "ts"), _i64(sw, "cpu")
    nxt = _i64(sw, "next_pid")
    order = _by_cpu_then_time(sw)
    ts, cpu, nxt = ts[order], cpu[order], nxt[order]
    pair = (cpu[1:] == cpu[:-1]) & (nxt[:-1] != 0)
    # The inferred slices are the last ones (an empty int64 slice when there are none:
    # a [] would make the timestamps float64).
    inferred = slice(len(slices.tid) - slices.inferred, None)
    tid = np.concatenate([nxt[:-1][pair], slices.tid[inferred]])
    start = np.concatenate([ts[:-1][pair], slices.start[inferred]])
    end = np.concatenate([ts[1:][pair], slices.end[inferred]])
    on = np.concatenate([cpu[1:][pair], slices.cpu[inferred]])
    o = _by_first_then_second(on, start)
    tid, on, start, end = tid[o], on[o], start[o], end[o]
    # A task whose switch-out the pid filter did not record held the CPU at most until
    # the next known holder came: clip, and drop what is left empty.
    if len(start) > 1:
        same = on[1:] == on[:-1]
        end[:-1] = np.where(same, np.minimum(end[:-1], start[1:]), end[:-1])
    keep = end > start
    tid, on, start, end = tid[keep], on[keep], start[keep], end[keep]
    names: dict[int, str] = {}
    if sw:
        # The last name each task had (next side, then prev side over it).
        for pid_col, comm_col in (("next_pid", "next_comm"), ("prev_pid", "prev_comm")):
            uniq, last = _last_of_each(_i64(sw, pid_col))
            comms = sw[comm_col][last]
            names.update(zip(uniq.tolist(), (_comm(c) for c in comms.tolist()), strict=True))
    return Occupancy(
        tid.astype(np.int64), on.astype(np.int64), start.astype(np.int64),
        end.astype(np.int64), names,
    )  # fmt: skip


def _held_during(occ: Occupancy, cpu: int, lo: int, hi: int, waiter: int) -> Counter[int]:
    left = np.searchsorted(occ.cpu, cpu, "left")
    right = np.searchsorted(occ.cpu, cpu, "right")
    starts, ends = occ.start[left:right], occ.end[left:right]
    i0 = int(np.searchsorted(ends, lo, "right"))
    i1 = int(np.searchsorted(starts, hi, "left"))
    held = Counter[int]()
    for k in range(i0, i1):
        tid = int(occ.tid[left + k])
        if tid != waiter:
            held[tid] += min(hi, int(ends[k])) - max(lo, int(starts[k]))
    return held


def _distinct(values: I64) -> I64:
    """The distinct small non-negative values (CPUs), ascending, without a sort."""
    if len(values) and int(values.min()) >= 0 and int(values.max()) < _TID_TABLE:
        found: I64 = np.flatnonzero(np.bincount(values)).astype(np.int64)
        return found
    distinct: I64 = np.unique(values)
    return distinct


def _longest(values: I64, top: int) -> npt.NDArray[np.intp]:
    """Indices of the `top` largest values, largest first, the earlier first on a tie
    (as a stable sort of all would give): only those at or above the top-th are sorted."""
    if len(values) > top > 0:
        kth = np.partition(values, len(values) - top)[len(values) - top]
        candidates = np.flatnonzero(values >= kth)
        best: npt.NDArray[np.intp] = candidates[np.argsort(-values[candidates], kind="stable")]
        return best[:top]
    order: npt.NDArray[np.intp] = np.argsort(-values, kind="stable")[:top]
    return order


def time_behind(
    wait_start: I64,
    wait_end: I64,
    wait_cpu: I64,
    holder_tid: I64,
    holder_cpu: I64,
    holder_start: I64,
    holder_end: I64,
) -> Counter[int]:
    """Per holder tid, the target threads' waiting time charged to it: per CPU, W(t) =
    the waits of that CPU going on at t; a holder's share of an interval it held the CPU
    is the integral of W over it (F(end) - F(start), F the integral of W). On holders'
    intervals that do not overlap on a CPU, the shares add up to at most the waits."""
    total = Counter[int]()
    for cpu in _distinct(wait_cpu).tolist():
        mine = wait_cpu == cpu
        t = np.concatenate([wait_start[mine], wait_end[mine]])
        step = np.concatenate(
            [np.ones(int(mine.sum()), np.int64), -np.ones(int(mine.sum()), np.int64)]
        )
        o = np.argsort(t, kind="stable")
        t, level = t[o], np.cumsum(step[o])
        area = np.r_[0, np.cumsum(level[:-1] * np.diff(t))]  # F at each t

        def integral(x: I64, t: I64 = t, level: I64 = level, area: I64 = area) -> I64:
            k = np.searchsorted(t, x, "right") - 1
            safe = np.maximum(k, 0)
            return np.where(k >= 0, area[safe] + level[safe] * (x - t[safe]), 0)

        held = holder_cpu == cpu
        share = integral(holder_end[held]) - integral(holder_start[held])
        total.update(_sum_by(holder_tid[held], share))
    return Counter({tid: ns for tid, ns in total.items() if ns > 0})


def waits_behind(
    slices: OnCpu, occ: Occupancy, tasks: Tasks, top: int = 10
) -> tuple[list[WaitRow], list[Occupant]]:
    """The `top` longest waits with who held the CPU meanwhile, and who held the CPUs
    over all the waits of target threads (the ones that pushed the target off)."""
    wait = slices.wait_end - slices.wait_start
    total = time_behind(
        slices.wait_start, slices.wait_end, slices.wait_cpu, occ.tid, occ.cpu, occ.start, occ.end
    )
    rows = []
    for i in _longest(wait, top).tolist():
        tid, cpu = int(slices.wait_tid[i]), int(slices.wait_cpu[i])
        lo, hi = int(slices.wait_start[i]), int(slices.wait_end[i])
        held = _held_during(occ, cpu, lo, hi, tid)
        rows.append(
            WaitRow(
                ts_ns=lo,
                pid=tasks.pid_of(tid),
                tid=tid,
                comm=tasks.comm_of(tid),
                cpu=cpu,
                wait_ns=hi - lo,
                ran=tuple(Occupant(occ.names.get(t, ""), t, ns) for t, ns in held.most_common(5)),
            )
        )
    behind = [Occupant(occ.names.get(t, ""), t, ns) for t, ns in total.most_common(10)]
    return rows, behind


def build_timeline(capture: Capture, tasks: Tasks, slices: OnCpu, occ: Occupancy) -> Timeline:
    tids = sorted(set(slices.tid.tolist()))
    threads = tuple((tasks.pid_of(t), t, tasks.comm_of(t)) for t in tids)
    pid_of = {t: p for p, t, _ in threads}
    on = tuple(
        CpuSlice(pid_of[t], t, c, s, e)
        for t, c, s, e in zip(
            slices.tid.tolist(),
            slices.cpu.tolist(),
            slices.start.tolist(),
            slices.end.tolist(),
            strict=True,
        )
    )
    wakeups = []
    for name in ("sched_wakeup", "sched_wakeup_new"):
        w = capture.get(name)
        for ts, tid, waker, cpu in zip(
            _i64(w, "ts").tolist(), _i64(w, "pid").tolist(), _i64(w, "common_pid").tolist(),
            _i64(w, "target_cpu").tolist(), strict=True,
        ):  # fmt: skip
            if tasks.is_target(tid):
                wakeups.append(Wakeup(ts, tasks.pid_of(tid), tid, waker, cpu))
    wakeups.sort(key=lambda w: w.ts_ns)
    cpu_slices = tuple(
        CpuSlice(0, t, c, s, e)
        for t, c, s, e in zip(
            occ.tid.tolist(), occ.cpu.tolist(), occ.start.tolist(), occ.end.tolist(), strict=True
        )
    )
    # Target threads waiting per CPU: +1 when a wait starts, -1 when it ends (charged to
    # the CPU the thread then ran on).
    stamps = np.concatenate([slices.wait_start, slices.wait_end])
    cpus = np.concatenate([slices.wait_cpu, slices.wait_cpu])
    step = np.concatenate(
        [np.ones(len(slices.wait_start), np.int64), -np.ones(len(slices.wait_end), np.int64)]
    )
    o = np.lexsort((step, stamps, cpus))
    stamps, cpus, step = stamps[o], cpus[o], step[o]
    runnable = []
    for cpu in np.unique(cpus).tolist():
        mine = cpus == cpu
        level = np.cumsum(step[mine])
        runnable += [
            CounterSample(t, cpu, v)
            for t, v in zip(stamps[mine].tolist(), level.tolist(), strict=True)
        ]
    names = dict(occ.names)
    names.update({t: c for _, t, c in threads})
    return Timeline(threads, on, tuple(wakeups), cpu_slices, names, tuple(runnable))
