"""process_info.d: process spawns, exec, thread creation, exits with code or signal.

task_newtask fires in the parent for every new task; CLONE_THREAD in its clone_flags
(include/uapi/linux/sched.h, 0x00010000) tells a thread from a process. The exit status
is the task's exit_code read through BTF at sched_process_exit: (code << 8) | signal,
as wait(2) reports it.
"""

from __future__ import annotations

from collections.abc import Sequence

from contend.collect.bpftrace import Output, Predicate, split_key
from contend.model import ProcessEvent, SyscallRow

NAME = "process"
CLONE_THREAD = 0x00010000
_TAG = "contend-proc "


def fragment(pred: Predicate, count_syscalls: bool) -> str:
    g = pred.guard()
    text = (
        f"tracepoint:task:task_newtask {g} {{\n"
        f'  printf("{_TAG}new %llu %d %d %d %llu %s\\n", nsecs, pid, tid, args->pid, args->clone_flags, comm);\n'
        "}\n"
        f"tracepoint:sched:sched_process_exec {g} {{\n"
        f'  printf("{_TAG}exec %llu %d %d 0 0 %s\\n", nsecs, pid, tid, comm);\n'
        "}\n"
        f"tracepoint:sched:sched_process_exit {g} {{\n"
        f'  printf("{_TAG}exit %llu %d %d %d 0 %s\\n", nsecs, pid, tid, curtask->exit_code, comm);\n'
        "}\n"
    )
    if count_syscalls:
        text += f"tracepoint:raw_syscalls:sys_enter {g} {{ @proc_sys[pid, comm] = count(); }}\n"
    return text


def parse_event(line: str) -> ProcessEvent | None:
    """One printf line of the fragment above, or None for other lines."""
    if not line.startswith(_TAG):
        return None
    kind, ts, pid, tid, arg, flags, comm = line[len(_TAG) :].rstrip("\n").split(" ", 6)
    if kind == "new":
        child = int(arg)
        if int(flags) & CLONE_THREAD:
            return ProcessEvent(int(ts), "thread", int(pid), child, int(pid), comm)
        return ProcessEvent(int(ts), "fork", child, child, int(pid), comm)
    if kind == "exec":
        return ProcessEvent(int(ts), "exec", int(pid), int(tid), None, comm)
    status = int(arg)
    return ProcessEvent(
        int(ts), "exit", int(pid), int(tid), None, comm,
        exit_code=(status >> 8) & 0xFF, signal=status & 0x7F,
    )  # fmt: skip


def syscall_totals(
    out: Output, syscall_rows: Sequence[SyscallRow] = ()
) -> list[tuple[int, str, int]]:
    """(pid, comm, syscalls) per process: from the syscalls monitor's rows when it ran,
    else from this monitor's own counter."""
    counts: dict[tuple[int, str], int] = {}
    if syscall_rows:
        for r in syscall_rows:
            counts[(r.pid, r.comm)] = counts.get((r.pid, r.comm), 0) + r.count
    else:
        for key, n in out.maps.get("@proc_sys", {}).items():
            pid, comm = split_key(key, 2)
            counts[(int(pid), comm)] = counts.get((int(pid), comm), 0) + int(n)
    return sorted(((p, c, n) for (p, c), n in counts.items()), key=lambda r: (-r[2], r[0]))
