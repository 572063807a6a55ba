"""Launch a command held at a gate: its process exists (so its PID can go into a
tracing program) but runs nothing of its own until released, then execs the command
with the same PID. This is how `dtrace -c`, `perf trace --` and `strace -f` trace a
command from its first instruction.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from contend.collect.procfs import ProcFS, ProcGone
from contend.errors import ContendError

# The gate: the launched command's first process waits here (same PID) until the tracer
# is attached, then execs the command.
_GATE = (
    "import os, sys\n"
    "gate = int(sys.argv[1])\n"
    "if os.read(gate, 1) != b'x':\n"
    "    sys.exit(125)  # contend is gone: never run the command untraced\n"
    "os.close(gate)\n"
    "try:\n"
    "    os.execv(sys.argv[2], sys.argv[3:])\n"
    "except OSError as e:\n"
    "    sys.stderr.write(f'contend: error: cannot run {sys.argv[2]!r}: {e.strerror}\\n')\n"
    "    sys.exit(126)\n"
)


@dataclass
class Launched:
    proc: subprocess.Popen[bytes]
    gate_w: int

    def release(self) -> None:
        os.write(self.gate_w, b"x")
        self.close()

    def close(self) -> None:
        if self.gate_w >= 0:
            os.close(self.gate_w)
            self.gate_w = -1

    def abort(self) -> None:
        """Never released: the gate reads EOF and exits without running the command."""
        self.close()
        if self.proc.poll() is None:
            self.proc.wait(10)

    def finish(self) -> int:
        """At the end of a trace: a command never released is aborted; one still running
        is terminated with everything it started that still descends from it, as
        timeout(1) does to its process group (killed after 5 s). Its exit status, a
        signal as 128 + N. A command that ended by itself keeps the children it left."""
        if self.gate_w >= 0:
            self.abort()
        if self.proc.poll() is None:
            # Held by pidfds, found before the command dies (then they are reparented):
            # a signal can never reach a recycled PID.
            family = _pidfds(self.proc.pid)
            try:
                self.proc.terminate()
                _signal(family, signal.SIGTERM)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                _end(family, deadline=time.monotonic() + 5)
            finally:
                for fd in family:
                    os.close(fd)
        rc = self.proc.returncode
        return rc if rc >= 0 else 128 - rc


def _pidfds(root: int) -> list[int]:
    """pidfds of `root`'s descendants. A PID read from /proc may be reaped and reused
    before its pidfd opens: kept only if its parent, read once the pidfd holds it, is
    still one of the family."""
    fs = ProcFS()
    family = fs.descendants(root)
    members = set(family)
    fds = []
    for pid in family[1:]:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue  # gone already
        try:
            parent = fs.stat(pid).ppid
        except (ProcGone, OSError):
            parent = None
        if parent in members:
            fds.append(fd)
        else:
            os.close(fd)
    return fds


def _signal(pidfds: list[int], sig: int) -> None:
    for fd in pidfds:
        try:
            signal.pidfd_send_signal(fd, sig)
        except OSError:
            continue  # exited meanwhile


def _end(pidfds: list[int], deadline: float) -> None:
    """Wait for the processes (a pidfd polls readable when its process exits), then
    SIGKILL those left at the deadline."""
    waiting = set(pidfds)
    while waiting and time.monotonic() < deadline:
        ready, _, _ = select.select(list(waiting), [], [], max(0.0, deadline - time.monotonic()))
        waiting -= set(ready)
    _signal(list(waiting), signal.SIGKILL)


def launch(command: tuple[str, ...]) -> Launched:
    # Resolve the path here, so that the traced process makes one execve, not a PATH search.
    path = shutil.which(command[0])
    if path is None:
        # As a shell says it: a file that is there but cannot be run is 126, not 127.
        given = Path(command[0])
        if "/" in command[0] and given.exists():
            why = "is a directory" if given.is_dir() else "permission denied"
            raise ContendError(f"cannot run {command[0]}: {why}", exit_code=126)
        raise ContendError(f"command not found: {command[0]}", exit_code=127)
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _GATE, str(r), path, *command],
            pass_fds=(r,),
        )
    finally:
        os.close(r)
    return Launched(proc, w)
