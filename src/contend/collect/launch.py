"""Launch a command held at a gate: its process exists (so its PID can go into a
tracing program) but runs nothing of its own until released, then execs the command
with the same PID. This is how `dtrace -c`, `perf trace --` and `strace -f` trace a
command from its first instruction.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

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
        """At the end of a trace: a command never released is aborted, one still running
        is terminated (killed after 5 s); its exit status, a signal as 128 + N."""
        if self.gate_w >= 0:
            self.abort()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        return rc if rc >= 0 else 128 - rc


def launch(command: tuple[str, ...]) -> Launched:
    # Resolve the path here, so that the traced process makes one execve, not a PATH search.
    path = shutil.which(command[0])
    if path is None:
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
