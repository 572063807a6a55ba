"""syscalls.d: per process and syscall, count, errors, total/avg/max latency.

Every call that enters while tracing is counted: at its return (with its latency,
sys_enter to sys_exit of the same thread), or at the end if it is still in flight, or by
its own tracepoint if it never returns (exit, exit_group). Calls already in progress
when tracing starts are neither counted nor timed.
"""

from __future__ import annotations

import platform
from collections.abc import Callable

from contend.collect.bpftrace import Output, Predicate, split_key, tracepoint_exists
from contend.collect.syscall_table import AARCH64, X86_64
from contend.model import SyscallRow

NAME = "syscalls"

# Calls that wait for something else (a lock, an event, a timer, a child, a peer): their
# time is sleeping, not work, and it dominates any average that includes them.
BLOCKING = frozenset(
    {
        "futex", "futex_wait", "futex_waitv", "epoll_wait", "epoll_pwait", "epoll_pwait2",
        "poll", "ppoll", "select", "pselect6", "nanosleep", "clock_nanosleep", "pause",
        "accept", "accept4", "wait4", "waitid", "rt_sigsuspend", "rt_sigtimedwait",
        "io_getevents", "io_pgetevents", "msgrcv", "semop", "semtimedop", "recvfrom",
        "recvmsg", "recvmmsg", "flock", "sched_yield",
    }
)  # fmt: skip


def table_for(machine: str | None = None) -> dict[int, str]:
    machine = machine or platform.machine()
    if machine in ("x86_64", "amd64"):
        return X86_64
    if machine in ("aarch64", "arm64"):
        return AARCH64
    return {}


def syscall_name(number: int, machine: str | None = None) -> str:
    return table_for(machine).get(number, f"syscall_{number}")


def _numbers(machine: str | None = None) -> dict[str, int]:
    return {name: nr for nr, name in table_for(machine).items()}


NO_RETURN = ("exit", "exit_group")


# --latency sampled: time one call in SAMPLE_EVERY (a power of two), chosen by the low
# bits of the entry time, which owe nothing to how long the call will take.
SAMPLE_EVERY = 16


def sampled_fragment(pred: Predicate, every: int = SAMPLE_EVERY) -> str:
    """Counts and errors exact; latency (avg, max) from one call in `every`. Measured at
    about 60% of a minimal hand-written latency script's cost per call (bench/)."""
    mask = every - 1
    guard = pred.guard()
    return (
        f"tracepoint:raw_syscalls:sys_enter {guard} {{\n"
        "  @sys_count[pid, args->id, comm] = count();\n"
        f"  if ((nsecs & {mask}) == 0) {{ @contend_sys_start[tid] = nsecs; }}\n"
        "}\n"
        f"tracepoint:raw_syscalls:sys_exit {guard} {{\n"
        "  if (args->ret < 0 && args->ret > -4096) { @sys_err[pid, args->id] = count(); }\n"
        "  $s = @contend_sys_start[tid];\n"
        "  if ($s) {\n"
        "    delete(@contend_sys_start[tid]);\n"
        "    @sys_time[pid, args->id, comm] = stats(nsecs - $s);\n"
        "    @sys_max[pid, args->id] = max(nsecs - $s);\n"
        "  }\n"
        "}\n"
    )


SAMPLED_INTERNAL_MAPS = ("@contend_sys_start",)
SAMPLED_RESULT_MAPS = ("@sys_count", "@sys_time", "@sys_max", "@sys_err")


def fragment(pred: Predicate) -> str:
    """The lean path (measured cheaper than a minimal hand-written latency script, see
    bench/): one map write at entry, one stats() and one max() at exit. The count is the
    stats() count; the syscall number rides in the low 10 bits of the start time so
    calls still in flight at the end are counted too; exit and exit_group, which never
    return, are counted by their own tracepoints (they fire for nothing else)."""
    text = (
        f"tracepoint:raw_syscalls:sys_enter {pred.guard()} {{\n"
        # 54 bits of time (208 days) above 10 bits of syscall number; the difference at
        # exit is taken modulo 2^54, so it stays right across that wrap of nsecs.
        "  @contend_sys_start[tid] = ((nsecs & 0x3fffffffffffff) << 10) | (args->id & 0x3ff);\n"
        "}\n"
        "tracepoint:raw_syscalls:sys_exit /@contend_sys_start[tid]/ {\n"
        "  $d = ((nsecs & 0x3fffffffffffff) - (@contend_sys_start[tid] >> 10)) & 0x3fffffffffffff;\n"
        "  delete(@contend_sys_start[tid]);\n"
        "  @sys_time[pid, args->id, comm] = stats($d);\n"
        "  @sys_max[pid, args->id] = max($d);\n"
        "  if (args->ret < 0 && args->ret > -4096) { @sys_err[pid, args->id] = count(); }\n"
        "}\n"
    )
    numbers = _numbers()
    for name in NO_RETURN:
        if name in numbers and tracepoint_exists("syscalls", f"sys_enter_{name}"):
            text += (
                f"tracepoint:syscalls:sys_enter_{name} {pred.guard()} "
                f"{{ @sys_noreturn[pid, {int(numbers[name])}, comm] = count(); }}\n"
            )
    return text


# @contend_sys_start is printed at exit, not cleared: its entries are the calls in flight.
INTERNAL_MAPS: tuple[str, ...] = ()
RESULT_MAPS = ("@sys_time", "@sys_max", "@sys_err", "@sys_noreturn")
START_BITS = 10


def rows(
    out: Output,
    machine: str | None = None,
    resolve: Callable[[int], tuple[int, str] | None] | None = None,
) -> list[SyscallRow]:
    """`resolve(tid)` -> (pid, comm) of a live thread, to count its call in flight."""
    times = out.stats.get("@sys_time", {})
    maxes = out.maps.get("@sys_max", {})
    errors = out.maps.get("@sys_err", {})
    numbers = _numbers(machine)
    no_return = {numbers[n] for n in NO_RETURN if n in numbers}
    counts: dict[tuple[int, int], list[int]] = {}  # (pid, nr) -> [timed, total, in flight]
    comms: dict[tuple[int, int], tuple[str, int]] = {}

    def name_it(k: tuple[int, int], comm: str, n: int) -> None:
        # A process that exec'd shows under two comms; keep the busier one's name.
        prev = comms.get(k)
        if prev is None or n >= prev[1]:
            comms[k] = (comm, n)

    sampled = "@sys_count" in out.maps
    timed_calls: dict[tuple[int, int], int] = {}
    for key, st in times.items():
        pid_s, nr_s, comm = split_key(key, 3)
        k = (int(pid_s), int(nr_s))
        c = counts.setdefault(k, [0, 0, 0])
        timed_calls[k] = timed_calls.get(k, 0) + int(st.get("count", 0))
        c[1] += int(st.get("total", 0))
        # Sampled: the counts come from @sys_count below; the name is kept here too, for a
        # call timed but not counted at its entry (entered before the trace began).
        name_it(k, comm, 0 if sampled else int(st.get("count", 0)))
        if not sampled:
            c[0] += int(st.get("count", 0))
    for key, n in out.maps.get("@sys_count", {}).items():  # sampled mode: counted at entry
        pid_s, nr_s, comm = split_key(key, 3)
        k = (int(pid_s), int(nr_s))
        counts.setdefault(k, [0, 0, 0])[0] += int(n)
        name_it(k, comm, int(n))
    for key, n in out.maps.get("@sys_noreturn", {}).items():
        pid_s, nr_s, comm = split_key(key, 3)
        k = (int(pid_s), int(nr_s))
        counts.setdefault(k, [0, 0, 0])[2] += int(n)
        name_it(k, comm, int(n))
    for tid_s, packed in out.maps.get("@contend_sys_start", {}).items():
        nr = int(packed) & ((1 << START_BITS) - 1)
        who = resolve(int(tid_s)) if resolve else None
        if nr in no_return or who is None:
            continue  # counted above, or the thread is gone
        k = (who[0], nr)
        counts.setdefault(k, [0, 0, 0])[2] += 1
        name_it(k, who[1], 0)
    out_rows = []
    for (pid, nr), (returned, total, in_flight) in counts.items():
        key = f"{pid},{nr}"
        name = syscall_name(nr, machine)
        timed = timed_calls.get((pid, nr), 0)
        count = returned + in_flight
        avg = total / timed if timed else None
        out_rows.append(
            SyscallRow(
                pid=pid,
                comm=comms[(pid, nr)][0],
                syscall=name,
                count=count,
                errors=int(errors.get(key, 0)),
                # Sampled: the total is estimated as the sampled average times the count.
                total_ns=round(avg * count) if sampled and avg is not None else total,
                avg_ns=avg,
                max_ns=int(maxes.get(key, 0)),
                blocking=name in BLOCKING,
                timed=timed,
            )
        )
    return sorted(out_rows, key=lambda r: (-r.count, r.pid, r.syscall))
