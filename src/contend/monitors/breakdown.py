"""Where the target's time goes: running, runnable (and behind whom), sleeping (in which
syscall). Exact, from scheduler events, aggregated in the kernel.

Every target thread is in one of three states, and each event moves it:

- running: from its switch-in (sched_switch, `next`) to its switch-out (`prev`);
- runnable: from a wakeup (sched_wakeup/sched_wakeup_new, onto `target_cpu`) or a
  preemption (switch-out with `prev_state` TASK_RUNNING) to its next switch-in;
- sleeping: from a switch-out in any other state to its wakeup, charged to the syscall
  the thread was in (raw_syscalls sys_enter/sys_exit), or -1 for none (a page fault...).

Who held the CPU while target threads waited: each CPU keeps the number of target
threads waiting on it (`nwait`) and its occupant. Whenever either changes (a switch on
that CPU, a wakeup onto it, a migration to or from it: sched_migrate_task), the time
since the last change times `nwait` is charged to the occupant. The charges therefore
add up to the threads' total runnable time; an occupant of pid 0 is the idle task: the
CPU was idle while a target thread waited, which a CPU quota does (a throttled group is
taken off the run queue) and which is otherwise only wake-up latency.

Kernel sources: kernel/sched/core.c (__schedule: prev is current at sched_switch;
ttwu_do_wakeup fires sched_wakeup; set_task_cpu fires sched_migrate_task),
include/trace/events/sched.h (field names).
"""

from __future__ import annotations

from contend.collect.bpftrace import Output, Predicate, split_key
from contend.model import BreakdownOccupant, SchedTimes, ThreadTime
from contend.monitors.cpu import parse_hist
from contend.monitors.syscalls import syscall_name

NAME = "breakdown"
NO_SYSCALL = -1
NOT_IN_SYSCALL = "(no syscall)"  # asleep outside a syscall: a page fault, a lock in a trap


def _flush(cpu: str, now: str) -> str:
    """Charge CPU `cpu`'s occupant for the waiters' time since its last change."""
    return (
        f"  $n = @contend_bd_nwait[{cpu}];\n"
        f"  if ($n > 0) {{ @bd_behind[@contend_bd_cur[{cpu}], @contend_bd_curcomm[{cpu}]] = "
        f"sum(({now} - @contend_bd_flush[{cpu}]) * $n); }}\n"
        f"  @contend_bd_flush[{cpu}] = {now};\n"
    )


def _start_wait(tid: str, cpu: str, now: str) -> str:
    return (
        f"  @contend_bd_wsince[{tid}] = {now}; @contend_bd_wcpu[{tid}] = {cpu} + 1;\n"
        f"  @contend_bd_nwait[{cpu}] = @contend_bd_nwait[{cpu}] + 1;\n"
    )


# Maps a probe reads must be defined even when no thread is seeded into them.
BEGIN = "@bd_begin = nsecs; @contend_bd_r[0] = 0; delete(@contend_bd_r[0]); "


def seed(sleeping: dict[int, tuple[int, int]], awake: dict[int, int] | None = None) -> str:
    """BEGIN text, integers only, for the target's threads at the start.

    `sleeping`: tid -> (tgid, syscall nr or -1): their sleep counts from the start.
    `awake`: tid -> tgid of threads running or runnable then (which of the two is not
    known from /proc): their first event tells. A switch-out means it ran since the start;
    a switch-in means it waited since the start."""
    return (
        BEGIN
        + "".join(
            f"@contend_bd_tgid[{int(t)}] = {int(p)}; @contend_bd_off[{int(t)}] = nsecs; "
            f"@contend_bd_offsys[{int(t)}] = {int(nr) + 2}; "
            for t, (p, nr) in sorted(sleeping.items())
        )
        + "".join(
            f"@contend_bd_tgid[{int(t)}] = {int(p)}; @contend_bd_r[{int(t)}] = 1; "
            for t, p in sorted((awake or {}).items())
        )
    )


def fragment(pred: Predicate) -> str:
    cond = pred.expr or "1"
    # Syscall numbers are stored +2 so that 0 means "unknown" and 1 means "none" (-1).
    return (
        f"tracepoint:raw_syscalls:sys_enter /{cond}/ {{ @contend_bd_sys[tid] = args->id + 2; }}\n"
        f"tracepoint:raw_syscalls:sys_exit /{cond}/ {{ delete(@contend_bd_sys[tid]); }}\n"
        f"tracepoint:task:task_newtask /{cond}/ {{\n"
        "  $child = args->pid; $flags = args->clone_flags;\n"
        "  if ($flags & 0x10000) { @contend_bd_tgid[$child] = pid; } "
        "else { @contend_bd_tgid[$child] = $child; }\n"
        "  @bd_born[$child] = nsecs;\n"
        "}\n"
        "tracepoint:sched:sched_switch {\n"
        "  $c = cpu; $now = nsecs; @bd_last[$c] = $now;\n"
        + _flush("$c", "$now")
        + "  @contend_bd_cur[$c] = args->next_pid; @contend_bd_curcomm[$c] = args->next_comm;\n"
        f"  if ({cond}) {{\n"
        "    @contend_bd_tgid[tid] = pid;\n"
        # A thread that was running cannot have been waiting: a wait left open (a
        # wakeup seen while it ran before it was known) is closed, and counted.
        "    $pw = @contend_bd_wcpu[tid];\n"
        "    if ($pw) {\n"
        "      @contend_bd_nwait[$pw - 1] = @contend_bd_nwait[$pw - 1] - 1;\n"
        "      delete(@contend_bd_wsince[tid]); delete(@contend_bd_wcpu[tid]); @bd_stale = count();\n"
        "    }\n"
        "    if (@contend_bd_r[tid]) {\n"
        "      @bd_run[pid, tid, comm] = sum($now - @bd_begin); delete(@contend_bd_r[tid]);\n"
        "    }\n"
        "    $on = @contend_bd_on[tid];\n"
        "    if ($on) {\n"
        "      @bd_run[pid, tid, comm] = sum($now - $on); @bd_slice_us = hist(($now - $on) / 1000);\n"
        "      delete(@contend_bd_on[tid]);\n"
        "    }\n"
        "    if ((args->prev_state & 0xff) == 0) {\n"
        + _start_wait("tid", "$c", "$now")
        # EXIT_DEAD 0x10, EXIT_ZOMBIE 0x20 as sched_switch reports them: its last switch.
        + "    } else if (args->prev_state & 0x30) {\n"
        "      @bd_died[tid] = $now;\n"
        "    } else {\n"
        "      $s = @contend_bd_sys[tid];\n"
        "      @contend_bd_off[tid] = $now; @contend_bd_offsys[tid] = $s ? $s : 1;\n"
        "    }\n"
        "  }\n"
        "  $nt = args->next_pid;\n"
        "  $np = @contend_bd_tgid[$nt];\n"
        "  if ($np) {\n"
        "    if (@contend_bd_r[$nt]) {\n"
        "      @bd_wait[$np, $nt] = sum($now - @bd_begin); delete(@contend_bd_r[$nt]);\n"
        "    }\n"
        "    @contend_bd_on[$nt] = $now;\n"
        "    $ws = @contend_bd_wsince[$nt];\n"
        "    if ($ws) {\n"
        "      @bd_wait[$np, $nt] = sum($now - $ws); @bd_rq_us = hist(($now - $ws) / 1000);\n"
        "      $wc = @contend_bd_wcpu[$nt] - 1;\n"
        "      @contend_bd_nwait[$wc] = @contend_bd_nwait[$wc] - 1;\n"
        "      delete(@contend_bd_wsince[$nt]); delete(@contend_bd_wcpu[$nt]);\n"
        "    }\n"
        "  }\n"
        "}\n"
        "tracepoint:sched:sched_wakeup,tracepoint:sched:sched_wakeup_new {\n"
        "  $t = args->pid; $np = @contend_bd_tgid[$t];\n"
        "  if ($np && !@contend_bd_on[$t] && !@contend_bd_wsince[$t]) {\n"
        "    $now = nsecs; $c = args->target_cpu; delete(@contend_bd_r[$t]);\n"
        "    $off = @contend_bd_off[$t];\n"
        "    if ($off) {\n"
        "      @bd_sleep[$np, $t, @contend_bd_offsys[$t] - 2] = sum($now - $off);\n"
        "      delete(@contend_bd_off[$t]); delete(@contend_bd_offsys[$t]);\n"
        "    }\n" + _flush("$c", "$now") + _start_wait("$t", "$c", "$now") + "  }\n"
        "}\n"
        "tracepoint:sched:sched_migrate_task {\n"
        "  $t = args->pid; $w = @contend_bd_wcpu[$t];\n"
        "  if ($w) {\n"
        "    $now = nsecs; $o = $w - 1; $d = args->dest_cpu;\n"
        + _flush("$o", "$now")
        + _flush("$d", "$now")
        + "    @contend_bd_nwait[$o] = @contend_bd_nwait[$o] - 1;\n"
        "    @contend_bd_nwait[$d] = @contend_bd_nwait[$d] + 1;\n"
        "    @contend_bd_wcpu[$t] = $d + 1;\n"
        "  }\n"
        "}\n"
    )


INTERNAL_MAPS = (
    "@contend_bd_sys", "@contend_bd_wcpu", "@contend_bd_r", "@contend_bd_nwait", "@contend_bd_cur", "@contend_bd_curcomm",
    "@contend_bd_flush",
)  # fmt: skip
# The sleeps still going at the end are printed too: they are finished by the reader.
RESULT_MAPS = ("@bd_run", "@bd_wait", "@bd_sleep", "@bd_behind", "@bd_rq_us", "@bd_slice_us",
               "@contend_bd_off", "@contend_bd_offsys", "@contend_bd_tgid", "@bd_born",
               "@bd_died", "@bd_begin", "@bd_last", "@bd_stale", "@contend_bd_on",
               "@contend_bd_wsince")  # fmt: skip


def _int(v: object) -> int:
    return int(v) if isinstance(v, int | str) else 0


def _named(by_nr: dict[int, int]) -> dict[str, int]:
    named: dict[str, int] = {}
    for nr, ns in by_nr.items():
        name = NOT_IN_SYSCALL if nr == NO_SYSCALL else syscall_name(nr) if nr >= 0 else "unknown"
        named[name] = named.get(name, 0) + ns
    return dict(sorted(named.items(), key=lambda kv: -kv[1]))


def _scalar(out: Output, name: str) -> int | None:
    v = out.maps.get(name)
    if isinstance(v, dict):  # a scalar map may come as {"": value}
        v = next(iter(v.values()), None)
    return int(v) if isinstance(v, int | str) else None


def sched_times(out: Output) -> SchedTimes | None:
    """Per-thread times and the occupants charged for waits, over the program's window:
    from BEGIN to the last context switch it saw (bpftrace stops its probes some time
    after SIGINT and before END, so neither signal nor END marks the end). States still
    open then (running, waiting, sleeping) are closed there. None if it did not run."""
    begin = _scalar(out, "@bd_begin")
    lasts = [_int(v) for v in out.maps.get("@bd_last", {}).values()]
    if begin is None or not lasts:
        return None
    end = max(lasts)
    threads: dict[int, dict[str, object]] = {}

    def entry(pid: int, tid: int) -> dict[str, object]:
        return threads.setdefault(tid, {"pid": pid, "comm": "", "run": 0, "wait": 0, "sleep": {}})

    def sleeps(tid: int) -> dict[int, int]:
        sleep = threads[tid]["sleep"]
        assert isinstance(sleep, dict)
        return sleep

    for key, v in out.maps.get("@bd_run", {}).items():
        k_pid, k_tid, comm = split_key(key, 3)
        e = entry(int(k_pid), int(k_tid))
        e["run"] = _int(v)
        e["comm"] = comm
    for key, v in out.maps.get("@bd_wait", {}).items():
        k_pid, k_tid = split_key(key, 2)
        entry(int(k_pid), int(k_tid))["wait"] = _int(v)
    for key, v in out.maps.get("@bd_sleep", {}).items():
        k_pid, k_tid, k_nr = split_key(key, 3)
        entry(int(k_pid), int(k_tid))
        sleeps(int(k_tid))[int(k_nr)] = sleeps(int(k_tid)).get(int(k_nr), 0) + _int(v)
    # Sleeps still going at the end: until END.
    offsys = out.maps.get("@contend_bd_offsys", {})
    tgids = out.maps.get("@contend_bd_tgid", {})
    for key, since in out.maps.get("@contend_bd_off", {}).items():
        pid = _int(tgids.get(key, 0))
        if not pid:
            continue
        tid, nr = int(key), _int(offsys.get(key, 1)) - 2
        entry(pid, tid)
        sleeps(tid)[nr] = sleeps(tid).get(nr, 0) + max(end - _int(since), 0)
    for name, field in (("@contend_bd_on", "run"), ("@contend_bd_wsince", "wait")):
        for key, since in out.maps.get(name, {}).items():
            pid = _int(tgids.get(key, 0))
            if pid and int(key) in threads:
                e = threads[int(key)]
                e[field] = _int(e[field]) + max(end - _int(since), 0)
    born = {int(k): _int(v) for k, v in out.maps.get("@bd_born", {}).items()}
    died = {int(k): _int(v) for k, v in out.maps.get("@bd_died", {}).items()}
    thread_rows = []
    for tid, e in sorted(threads.items()):
        thread_rows.append(
            ThreadTime(
                pid=_int(e["pid"]),
                tid=tid,
                comm=str(e["comm"]),
                running_ns=_int(e["run"]),
                runnable_ns=_int(e["wait"]),
                sleeping_ns=_named(sleeps(tid)),
                wall_ns=max(min(died.get(tid, end), end) - max(born.get(tid, begin), begin), 0),
            )
        )
    occupants = []
    for key, v in out.maps.get("@bd_behind", {}).items():
        k_tid, comm = split_key(key, 2)
        occupants.append(BreakdownOccupant(tid=int(k_tid), comm=comm, wait_ns=_int(v)))
    occupants.sort(key=lambda o: -o.wait_ns)
    return SchedTimes(
        window_ns=end - begin,
        threads=tuple(thread_rows),
        occupants=tuple(occupants),
        run_queue_us=parse_hist(out.hists.get("@bd_rq_us")),
        slice_us=parse_hist(out.hists.get("@bd_slice_us")),
    )
