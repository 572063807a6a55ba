"""A recorded group's demand for CPU (`model.Demand`), from a tracefs run's scheduler
events: per target thread, each stretch in which it was running or runnable (on a CPU,
or woken and waiting for one) is one demand, arriving when the stretch began and needing
the CPU time the thread got in it. `analysis.advice` replays it under other quotas."""

from __future__ import annotations

import os

import numpy as np

from contend.errors import ContendError
from contend.model import Demand, ThreadDemand
from contend.monitors import timeline as tl
from contend.monitors.tracefs_breakdown import run_window
from contend.monitors.tracefs_trace import TracefsRun

# Two stretches this close together are one: a switch out and back in on another CPU.
JOIN_NS = 1_000


def _cpus(run: TracefsRun) -> int:
    """The CPUs of the machine recorded: one ring buffer each (the target may have run on
    fewer of them, its demand could use them all)."""
    sw = run.capture.get("sched_switch")
    seen = int(tl._raw(sw, "cpu").max()) + 1 if "cpu" in sw and len(sw["cpu"]) else 0
    buffers = len(run.capture.lost_by_cpu)
    return max(seen, buffers, 1) if seen or buffers else os.cpu_count() or 1


def demand_of(run: TracefsRun) -> Demand:
    """The target threads' demand over the run's window (that of `record`, else from its
    first to its last event)."""
    s = run.slices
    if s is None:
        raise ContendError("the recording has no scheduler events (the cpu monitor)")
    if run.tasks.everyone:
        raise ContendError("a system-wide recording has no group to advise a quota for")
    if run.around is not None and run.around.end_ns > run.around.start_ns:
        lo, hi = run.around.start_ns, run.around.end_ns
    else:
        lo, hi = run_window(run)
    tid = np.concatenate([s.tid, s.wait_tid]).astype(np.int64)
    start = np.clip(np.concatenate([s.start, s.wait_start]).astype(np.int64), lo, hi)
    end = np.clip(np.concatenate([s.end, s.wait_end]).astype(np.int64), lo, hi)
    ran = np.concatenate([s.end - s.start, np.zeros(len(s.wait_tid), np.int64)])
    ran = np.minimum(ran, end - start)  # cut to the window as the stretch is
    keep = end > start
    tid, start, end, ran = tid[keep], start[keep], end[keep], ran[keep]
    order = np.lexsort((start, tid))
    tid, start, end, ran = tid[order], start[order], end[order], ran[order]
    threads = []
    # Sorted by thread: each thread's stretches are one slice (not a mask per thread).
    firsts = np.flatnonzero(np.r_[True, tid[1:] != tid[:-1]]) if len(tid) else tid
    for a, b in zip(firsts.tolist(), [*firsts[1:].tolist(), len(tid)], strict=True):
        t = int(tid[a])
        st, en, w = start[a:b], end[a:b], ran[a:b]
        # A new demand where the thread had stopped wanting a CPU (slept) before it.
        reach = np.maximum.accumulate(en)
        new = np.ones(len(st), np.bool_)
        new[1:] = st[1:] > reach[:-1] + JOIN_NS
        group = np.cumsum(new) - 1
        work = np.bincount(group, weights=w).astype(np.int64)
        arrivals = st[new] - lo
        useful = work > 0
        if not useful.any():
            continue
        threads.append(
            ThreadDemand(
                tid=t,
                pid=run.tasks.pid_of(t),
                comm=run.tasks.comm_of(t),
                arrivals_ns=tuple(arrivals[useful].tolist()),
                work_ns=tuple(work[useful].tolist()),
            )
        )
    return Demand(
        target=run.result.target,
        window_ns=max(hi - lo, 0),
        cpus=_cpus(run),
        threads=tuple(threads),
        start_ns=lo,
    )
