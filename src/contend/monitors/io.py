"""io_analysis.d: open/close/read/write (and p-, v- variants) per process: calls and bytes,
plus a per-file top from the paths the target opened while traced.

Each op uses its own syscalls:sys_{enter,exit}_* tracepoint, so other syscalls cost
nothing. Bytes are the return values of successful calls. A file opened before tracing
started has no path: its bytes count per process, not per file.
"""

from __future__ import annotations

from contend.collect.bpftrace import Output, Predicate, split_key, tracepoint_exists
from contend.model import FileRow, IoEvent, IoRow

NAME = "io"
READS = ("read", "pread64", "readv")
WRITES = ("write", "pwrite64", "writev")
_TAG = "contend-io "


def opens() -> list[str]:
    # open(2) exists on x86_64, not on arm64 (asm-generic has only openat).
    return [op for op in ("open", "openat") if tracepoint_exists("syscalls", f"sys_enter_{op}")]


def fragment(pred: Predicate, events: bool = False) -> str:
    g = pred.guard()
    text = ""
    for op in opens():
        text += (
            f"tracepoint:syscalls:sys_enter_{op} {g} {{ @contend_path[tid] = str(args->filename); }}\n"
            f'tracepoint:syscalls:sys_exit_{op} /@contend_path[tid] != ""/ {{\n'
            f"  $p = @contend_path[tid]; delete(@contend_path[tid]);\n"
            f'  @io_count[pid, "{op}", comm] = count();\n'
            f"  if (args->ret >= 0) {{ @contend_fd[pid, args->ret] = $p; "
            f'@file_count[pid, "{op}", $p] = count(); }}\n'
            "}\n"
        )
    text += (
        f"tracepoint:syscalls:sys_enter_close {g} {{\n"
        '  @io_count[pid, "close", comm] = count(); delete(@contend_fd[pid, args->fd]);\n'
        "}\n"
    )
    for op in READS + WRITES:
        if not tracepoint_exists("syscalls", f"sys_enter_{op}"):
            continue
        show = (
            f'  printf("{_TAG}%llu %d {op} %d %s\\n", nsecs, pid, args->ret, comm);\n'
            if events
            else ""
        )
        text += (
            f"tracepoint:syscalls:sys_enter_{op} {g} {{ @contend_io_fd[tid] = args->fd + 1; }}\n"
            f"tracepoint:syscalls:sys_exit_{op} /@contend_io_fd[tid]/ {{\n"
            f"  $fd = @contend_io_fd[tid] - 1; delete(@contend_io_fd[tid]);\n"
            f'  @io_count[pid, "{op}", comm] = count();\n'
            "  if (args->ret > 0) {\n"
            f'    @io_bytes[pid, "{op}", comm] = sum(args->ret);\n'
            f"    $p = @contend_fd[pid, $fd];\n"
            f'    if ($p != "") {{ @file_count[pid, "{op}", $p] = count(); '
            f'@file_bytes[pid, "{op}", $p] = sum(args->ret); }}\n'
            "  }\n" + show + "}\n"
        )
    return text


INTERNAL_MAPS = ("@contend_path", "@contend_fd", "@contend_io_fd")
RESULT_MAPS = ("@io_count", "@io_bytes", "@file_count", "@file_bytes")


def parse_event(line: str) -> IoEvent | None:
    """An --events line of the fragment above, or None for other lines."""
    if not line.startswith(_TAG):
        return None
    ts, pid, op, result, comm = line[len(_TAG) :].rstrip("\n").split(" ", 4)
    return IoEvent(int(ts), int(pid), op, int(result), comm)


def rows(out: Output) -> tuple[list[IoRow], list[FileRow]]:
    counts = out.maps.get("@io_count", {})
    nbytes = out.maps.get("@io_bytes", {})
    io_rows = []
    for key, n in counts.items():
        pid, op, comm = split_key(key, 3)
        io_rows.append(IoRow(int(pid), comm, op, int(n), int(nbytes.get(key, 0))))
    fcounts = out.maps.get("@file_count", {})
    fbytes = out.maps.get("@file_bytes", {})
    file_rows = []
    for key, n in fcounts.items():
        pid, op, path = split_key(key, 3)
        file_rows.append(FileRow(int(pid), path, op, int(n), int(fbytes.get(key, 0))))
    io_rows.sort(key=lambda r: (-r.count, r.pid, r.op))
    file_rows.sort(key=lambda r: (-r.bytes, -r.count, r.path))
    return io_rows, file_rows
