"""cpu_usage.d: on-CPU time, slices, voluntary vs involuntary switches, wakeups, run-queue
latency, who preempted the target, and fairness over the target's threads.

At sched_switch the current task is `prev` (kernel/sched/core.c __schedule()), so the
target predicate applies to it directly; the `next` side is recognised through
@contend_tgid (tid -> tgid), filled with the target's threads when known at start, at
their creation (task_newtask) and at their first switch-out. A `prev_state` whose
low byte is 0 (TASK_RUNNING, include/linux/sched.h; newer kernels report a preemption
as TASK_REPORT_MAX) means the task was still runnable: an involuntary switch, and the
start of a run-queue wait. A wakeup starts one too; the wait is charged to the woken
task, at its next switch-in.
"""

from __future__ import annotations

import math

from contend.collect.bpftrace import Output, Predicate, split_key
from contend.model import CpuRow, HistBucket, PreemptorRow, RunQueueLatency, SchedEvent

NAME = "cpu"


def fragment(pred: Predicate, events: bool = False) -> str:
    cond = pred.expr or "1"
    on_event = (
        '    printf("contend-cpu on %llu %d %d 0 %s\\n", nsecs, $np, $next_pid, args->next_comm);\n'
        if events
        else ""
    )
    off_event = (
        '      printf("contend-cpu off %llu %d %d %llu %s\\n", nsecs, pid, tid, $d, comm);\n'
        if events
        else ""
    )
    return (
        f"tracepoint:task:task_newtask /{cond}/ {{\n"
        # Fields are copied to variables first: bpftrace 0.17 emits a ctx access the
        # verifier rejects for `args->a ? x : args->b`.
        "  $child = args->pid; $flags = args->clone_flags;\n"
        "  if ($flags & 0x10000) { @contend_tgid[$child] = pid; } else { @contend_tgid[$child] = $child; }\n"
        "}\n"
        "tracepoint:sched:sched_switch {\n"
        # Copied first here too: with no target (`if (1)`) 0.17's code reads ctx through
        # a moved pointer in the branches below ("dereference of modified ctx ptr").
        "  $next_pid = args->next_pid; $prev_state = args->prev_state;\n"
        f"  if ({cond}) {{\n"
        "    @contend_tgid[tid] = pid;\n"
        "    $on = @contend_on[tid];\n"
        "    if ($on) {\n"
        "      $d = nsecs - $on;\n"
        "      @cpu_ns[pid, tid, comm] = sum($d);\n"
        "      @cpu_slices[pid, tid] = count();\n"
        "      @cpu_slice_us = hist($d / 1000);\n" + off_event + "      delete(@contend_on[tid]);\n"
        "    }\n"
        "    if (($prev_state & 0xff) == 0) {\n"
        "      @cpu_invol[pid, tid] = count();\n"
        "      @contend_rq[tid] = nsecs;\n"
        "      @cpu_preempted_by[$next_pid, args->next_comm] = count();\n"
        "    } else {\n"
        "      @cpu_vol[pid, tid] = count();\n"
        "    }\n"
        "  }\n"
        "  $np = @contend_tgid[$next_pid];\n"
        "  if ($np) {\n"
        "    @contend_on[$next_pid] = nsecs;\n" + on_event + "    $w = @contend_rq[$next_pid];\n"
        "    if ($w) {\n"
        "      @cpu_rq[$np, $next_pid] = stats(nsecs - $w);\n"
        "      @cpu_rq_us = hist((nsecs - $w) / 1000);\n"
        "      delete(@contend_rq[$next_pid]);\n"
        "    }\n"
        "  }\n"
        "}\n"
        "tracepoint:sched:sched_wakeup,tracepoint:sched:sched_wakeup_new {\n"
        "  $np = @contend_tgid[args->pid];\n"
        "  if ($np) { @contend_rq[args->pid] = nsecs; @cpu_wakeups[$np, args->pid] = count(); }\n"
        "}\n"
    )


INTERNAL_MAPS = ("@contend_tgid", "@contend_on", "@contend_rq")
RESULT_MAPS = (
    "@cpu_ns", "@cpu_slices", "@cpu_vol", "@cpu_invol", "@cpu_wakeups", "@cpu_rq",
    "@cpu_slice_us", "@cpu_rq_us", "@cpu_preempted_by",
)  # fmt: skip


_TAG = "contend-cpu "


def parse_event(line: str) -> SchedEvent | None:
    """An --events line of the fragment above, or None for other lines."""
    if not line.startswith(_TAG):
        return None
    kind, ts, pid, tid, ran, comm = line[len(_TAG) :].rstrip("\n").split(" ", 5)
    return SchedEvent(
        int(ts), kind == "on", int(pid), int(tid), comm, int(ran) if kind == "off" else None
    )


def seed(tids: dict[int, int]) -> str:
    """BEGIN text registering known threads (tid -> tgid), integers only."""
    return "".join(f"@contend_tgid[{int(t)}] = {int(p)}; " for t, p in sorted(tids.items()))


def parse_hist(raw: object) -> tuple[HistBucket, ...]:
    buckets = []
    if isinstance(raw, list):
        for b in raw:
            low = int(b.get("min", 0)) if isinstance(b, dict) else 0
            high = int(b.get("max", low)) if isinstance(b, dict) else 0
            count = int(b.get("count", 0)) if isinstance(b, dict) else 0
            buckets.append(HistBucket(low, high, count))
    return tuple(buckets)


def hist_percentile(buckets: tuple[HistBucket, ...], q: float) -> float | None:
    """Upper bound of the log2 bucket holding the q-th percentile (as bpftrace's hist
    gives no finer resolution)."""
    total = sum(b.count for b in buckets)
    if total == 0:
        return None
    rank = math.ceil(total * q / 100)
    seen = 0
    for b in buckets:
        seen += b.count
        if seen >= rank:
            return float(b.high)
    return float(buckets[-1].high)


def rows(out: Output) -> tuple[list[CpuRow], list[PreemptorRow], float | None]:
    cpu_ns = out.maps.get("@cpu_ns", {})
    slices = out.maps.get("@cpu_slices", {})
    vol = out.maps.get("@cpu_vol", {})
    invol = out.maps.get("@cpu_invol", {})
    wakeups = out.maps.get("@cpu_wakeups", {})
    rq = out.stats.get("@cpu_rq", {})
    slice_hist = parse_hist(out.hists.get("@cpu_slice_us"))
    rq_hist = parse_hist(out.hists.get("@cpu_rq_us"))
    threads: dict[tuple[int, int], str] = {}
    on_cpu: dict[tuple[int, int], int] = {}
    for key, ns in cpu_ns.items():
        pid_s, tid_s, comm = split_key(key, 3)
        threads[(int(pid_s), int(tid_s))] = comm
        on_cpu[(int(pid_s), int(tid_s))] = int(ns)
    for m in (slices, vol, invol, wakeups, rq):
        for key in m:
            pid_s, tid_s = split_key(key, 2)
            threads.setdefault((int(pid_s), int(tid_s)), "")
    out_rows = []
    for (pid, tid), comm in threads.items():
        key = f"{pid},{tid}"
        r = rq.get(key, {})
        count = int(r.get("count", 0))
        out_rows.append(
            CpuRow(
                pid=pid,
                tid=tid,
                comm=comm,
                on_cpu_ns=on_cpu.get((pid, tid), 0),
                slices=int(slices.get(key, 0)),
                voluntary_switches=int(vol.get(key, 0)),
                involuntary_switches=int(invol.get(key, 0)),
                wakeups=int(wakeups.get(key, 0)),
                run_queue_latency=RunQueueLatency(
                    count=count,
                    avg_ns=float(r["average"]) if count else None,
                    p50_ns=None,
                    p99_ns=None,
                    hist=(),
                ),
                slice_hist=(),
            )
        )
    out_rows.sort(key=lambda r: (-r.on_cpu_ns, r.pid, r.tid))
    # The histograms are over all target threads; they go on a summary row in the result.
    preempt = []
    for key, n in out.maps.get("@cpu_preempted_by", {}).items():
        pid_s, comm = split_key(key, 2)
        preempt.append(PreemptorRow(comm=comm, pid=int(pid_s), count=int(n)))
    preempt.sort(key=lambda p: -p.count)
    fairness = None  # computed by the analysis, over the threads that were busy
    if out_rows:
        total = RunQueueLatency(
            count=sum(r.run_queue_latency.count for r in out_rows),
            avg_ns=_weighted_avg(out_rows),
            p50_ns=_us_to_ns(hist_percentile(rq_hist, 50)),
            p99_ns=_us_to_ns(hist_percentile(rq_hist, 99)),
            hist=rq_hist,
        )
        out_rows.append(total_row(out_rows, total, slice_hist))
    return out_rows, preempt[:10], fairness


def total_row(
    rows: list[CpuRow], run_queue: RunQueueLatency, slice_hist: tuple[HistBucket, ...]
) -> CpuRow:
    """The summary row over all target threads (tid 0), with the backend's histograms."""
    return CpuRow(
        pid=0,
        tid=0,
        comm="(all target threads)",
        on_cpu_ns=sum(r.on_cpu_ns for r in rows),
        slices=sum(r.slices for r in rows),
        voluntary_switches=sum(r.voluntary_switches for r in rows),
        involuntary_switches=sum(r.involuntary_switches for r in rows),
        wakeups=sum(r.wakeups or 0 for r in rows),
        run_queue_latency=run_queue,
        slice_hist=slice_hist,
    )


def _us_to_ns(us: float | None) -> float | None:
    return None if us is None else us * 1000.0


def _weighted_avg(rows_: list[CpuRow]) -> float | None:
    n = sum(r.run_queue_latency.count for r in rows_)
    if n == 0:
        return None
    return sum((r.run_queue_latency.avg_ns or 0.0) * r.run_queue_latency.count for r in rows_) / n
