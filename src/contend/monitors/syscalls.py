"""syscalls.d: per process and syscall, count, errors, total/avg/max latency.

Counted at sys_enter (exact, also for calls that never return, such as exit_group);
timed from sys_enter to sys_exit of the same thread (calls already in progress when
tracing starts are counted but not timed).
"""

from __future__ import annotations

import platform

from contend.collect.bpftrace import Output, Predicate, split_key
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


def fragment(pred: Predicate) -> str:
    return (
        f"tracepoint:raw_syscalls:sys_enter {pred.guard()} {{\n"
        "  @sys_count[pid, args->id, comm] = count();\n"
        "  @contend_sys_start[tid] = nsecs;\n"
        "}\n"
        "tracepoint:raw_syscalls:sys_exit /@contend_sys_start[tid]/ {\n"
        "  $d = nsecs - @contend_sys_start[tid];\n"
        "  delete(@contend_sys_start[tid]);\n"
        "  @sys_time[pid, args->id] = stats($d);\n"
        "  @sys_max[pid, args->id] = max($d);\n"
        "  if (args->ret < 0 && args->ret > -4096) { @sys_err[pid, args->id] = count(); }\n"
        "}\n"
    )


INTERNAL_MAPS = ("@contend_sys_start",)
RESULT_MAPS = ("@sys_count", "@sys_time", "@sys_max", "@sys_err")


def rows(out: Output, machine: str | None = None) -> list[SyscallRow]:
    counts = out.maps.get("@sys_count", {})
    times = out.stats.get("@sys_time", {})
    maxes = out.maps.get("@sys_max", {})
    errors = out.maps.get("@sys_err", {})
    merged: dict[tuple[int, int], tuple[str, int]] = {}
    for key, n in counts.items():
        pid_s, nr_s, comm = split_key(key, 3)
        k = (int(pid_s), int(nr_s))
        prev = merged.get(k)
        # A process that exec'd shows under two comms; keep the later (larger) one's name.
        merged[k] = (
            comm if prev is None or n >= prev[1] else prev[0],
            (prev[1] if prev else 0) + int(n),
        )
    out_rows = []
    for (pid, nr), (comm, n) in merged.items():
        key = f"{pid},{nr}"
        t = times.get(key, {})
        timed = int(t.get("count", 0))
        total = int(t.get("total", 0))
        name = syscall_name(nr, machine)
        out_rows.append(
            SyscallRow(
                pid=pid,
                comm=comm,
                syscall=name,
                count=n,
                errors=int(errors.get(key, 0)),
                total_ns=total,
                avg_ns=total / timed if timed else None,
                max_ns=int(maxes.get(key, 0)),
                blocking=name in BLOCKING,
            )
        )
    return sorted(out_rows, key=lambda r: (-r.count, r.pid, r.syscall))
