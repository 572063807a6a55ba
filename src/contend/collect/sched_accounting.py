"""The in-kernel half of the continuous accounting (root, bpftrace): every run-queue wait
of every thread on the machine, and who held the CPU meanwhile.

A thread waits from a wakeup (sched_wakeup, sched_wakeup_new) or a preemption (switched
out with prev_state TASK_RUNNING) to its next switch-in (kernel/sched/core.c __schedule:
prev is current at sched_switch). Each CPU keeps a ring of its last RING occupancy
segments (which thread held it, from when to when, the idle task being tid 0). When a
thread's wait ends, its overlap with each segment is charged to that segment's thread:
the waiter waited behind it. What the ring no longer covers (a wait longer than RING
switches of its CPU) is charged to -1, "unsplit", and counted, never guessed. A wait
that began on another CPU (the balancer moved it) is charged to the holders of the CPU
it ran on: the approximation this design makes, where the `diagnose` program tracks
migrations for its few target threads.

Each wait also goes into a per-thread sum and log2 histogram (us). bpftrace prints and
clears the three maps every interval; tids are named (process, cgroup) by the reading of
/proc that follows, so a thread that exited in between is counted as unnamed.

The program is fixed text and one validated integer (the interval in ms).
"""

from __future__ import annotations

import threading
from typing import Any

from contend.collect.bpftrace import Bpftrace, split_key
from contend.model import SchedInterval

RING = 8
INTERVAL_PRINTF = "contend-accounting"
# Per-interval maps hold one entry per waiting thread, or per (waiter, holder) pair.
MAP_KEYS = 65536


def program(interval_ms: int) -> str:
    interval = int(interval_ms)
    if not 1 <= interval <= 3_600_000:
        raise ValueError(f"interval {interval} ms out of range")
    return (
        'BEGIN { printf("contend-ready\\n"); }\n'
        "tracepoint:sched:sched_wakeup,tracepoint:sched:sched_wakeup_new {\n"
        "  if (!@contend_ac_ws[args->pid]) { @contend_ac_ws[args->pid] = nsecs; }\n"
        "}\n"
        "tracepoint:sched:sched_switch {\n"
        "  $c = cpu; $now = nsecs;\n"
        "  $i = @contend_ac_n[$c];\n"
        f"  $k = $i % {RING};\n"
        # The segment that ends now: the outgoing thread held this CPU since the last switch.
        "  @contend_ac_st[$c, $k] = args->prev_pid;\n"
        "  @contend_ac_s0[$c, $k] = @contend_ac_since[$c];\n"
        "  @contend_ac_s1[$c, $k] = $now;\n"
        "  @contend_ac_n[$c] = $i + 1;\n"
        "  @contend_ac_since[$c] = $now;\n"
        "  if (args->prev_pid != 0) {\n"
        "    if ((args->prev_state & 0xff) == 0) { @contend_ac_ws[args->prev_pid] = $now; }\n"
        "    else { delete(@contend_ac_ws[args->prev_pid]); }\n"
        "  }\n"
        "  $t = args->next_pid;\n"
        "  $ws = @contend_ac_ws[$t];\n"
        "  if ($t != 0 && $ws) {\n"
        "    $w = $now - $ws;\n"
        "    @ac_wait[$t] = sum($w);\n"
        "    @ac_rq[$t] = hist($w / 1000);\n"
        "    $left = $w;\n"
        "    $j = $i - $i;\n"  # as unsigned as $i: no mixed-sign comparison
        f"    unroll({RING}) {{\n"
        "      if ($i >= $j) {\n"
        f"        $kk = ($i - $j) % {RING};\n"
        "        $b = @contend_ac_s1[$c, $kk];\n"
        "        if ($b > $ws) {\n"
        "          $a = @contend_ac_s0[$c, $kk];\n"
        "          $from = $a > $ws ? $a : $ws;\n"
        "          @ac_behind[$t, @contend_ac_st[$c, $kk]] = sum($b - $from);\n"
        "          $left = $left - ($b - $from);\n"
        "        }\n"
        "      }\n"
        "      $j = $j + 1;\n"
        "    }\n"
        "    if ($left > 0) { @ac_behind[$t, -1] = sum($left); }\n"
        "    delete(@contend_ac_ws[$t]);\n"
        "  }\n"
        "}\n"
        f"interval:ms:{interval} {{\n"
        "  print(@ac_wait); clear(@ac_wait);\n"
        "  print(@ac_rq); clear(@ac_rq);\n"
        "  print(@ac_behind); clear(@ac_behind);\n"
        f'  printf("{INTERVAL_PRINTF}\\n");\n'
        "}\n"
        # The working maps are not printed at the end.
        "END { clear(@contend_ac_ws); clear(@contend_ac_n); clear(@contend_ac_st);"
        " clear(@contend_ac_s0); clear(@contend_ac_s1); clear(@contend_ac_since); }\n"
    )


class SchedAccounting:
    """bpftrace running `program`; `drain()` gives what it printed since the last drain."""

    def __init__(self, interval_s: float) -> None:
        self.interval_ms = max(int(interval_s * 1000), 1)
        self._lock = threading.Lock()
        self._pending = _Pending()
        self.lost_events = 0
        self.tracer: Bpftrace | None = None
        self._cpu_s: float | None = None
        self._printed = threading.Condition(self._lock)
        self.intervals = 0  # interval prints received

    def start(self) -> None:
        self.tracer = Bpftrace(program(self.interval_ms), on_record=self._record, map_keys=MAP_KEYS)
        self.tracer.start()

    def _record(self, kind: str, data: dict[str, Any]) -> None:
        with self._lock:
            p = self._pending
            for name, values in data.items():
                if not isinstance(values, dict):
                    continue
                if name == "@ac_wait":
                    for tid, ns in values.items():
                        p.wait[int(tid)] = p.wait.get(int(tid), 0) + int(ns)
                elif name == "@ac_rq" and kind == "hist":
                    for tid, buckets in values.items():
                        mine = p.buckets.setdefault(int(tid), {})
                        for b in buckets if isinstance(buckets, list) else ():
                            if b.get("count"):
                                low = int(b.get("min", 0))
                                mine[low] = mine.get(low, 0) + int(b["count"])
                elif name == "@ac_behind":
                    for key, ns in values.items():
                        tid, holder = (int(x) for x in split_key(key, 2))
                        p.behind[(tid, holder)] = p.behind.get((tid, holder), 0) + int(ns)

    def _printf(self, text: str) -> None:
        if text.strip() == INTERVAL_PRINTF:
            with self._printed:
                self.intervals += 1
                self._printed.notify_all()

    def wait_printed(self, count: int, timeout_s: float) -> bool:
        """Until bpftrace has printed `count` intervals (False if `timeout_s` passed)."""
        with self._printed:
            return self._printed.wait_for(lambda: self.intervals >= count, timeout=timeout_s)

    def drain(self) -> SchedInterval:
        lost = self.tracer.output.lost_events if self.tracer is not None else 0
        with self._lock:
            p, self._pending = self._pending, _Pending()
        new_lost, self.lost_events = lost - self.lost_events, lost
        return SchedInterval(p.wait, p.buckets, p.behind, new_lost)

    def alive(self) -> bool:
        return (
            self.tracer is not None
            and self.tracer.proc is not None
            and self.tracer.proc.poll() is None
        )

    def cpu_seconds(self) -> float | None:
        """bpftrace's CPU time (the last known once it has exited: it only goes up)."""
        now = self.tracer._cpu_seconds() if self.tracer is not None else None
        if now is not None:
            self._cpu_s = max(now, self._cpu_s or 0.0)
        return self._cpu_s

    def stop(self, timeout_s: float = 10.0) -> float | None:
        """Ends bpftrace; the seconds it was given if it had to be killed, else None."""
        if self.tracer is None:
            return None
        # Bounded: top's q and the exporter's stop wait no longer for a busy tracer.
        out = self.tracer.stop(timeout_s=timeout_s, working_cap_s=timeout_s)
        self.tracer = None
        return out.killed_after_s


class _Pending:
    def __init__(self) -> None:
        self.wait: dict[int, int] = {}
        self.buckets: dict[int, dict[int, int]] = {}
        self.behind: dict[tuple[int, int], int] = {}
