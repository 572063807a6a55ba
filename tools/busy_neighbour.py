"""Run a command with a busy loop pinned to one CPU beside it, as a shared machine has.

    python3 tools/busy_neighbour.py [--cpu N] -- CMD ARGS

The loop starts first and is stopped when CMD ends (also on Ctrl-C or SIGTERM); the exit
status is CMD's. At the end it prints how much CPU the loop took, so a run that was
meant to be loaded shows that it was.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")
    loop = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"],
        preexec_fn=lambda: os.sched_setaffinity(0, {args.cpu}),
    )
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130
    finally:
        with open(f"/proc/{loop.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        loop.kill()
        loop.wait()
        took = time.monotonic() - started
        print(
            f"busy_neighbour: a loop on CPU {args.cpu} used {used:.0f} of {took:.0f} s "
            f"({used / took:.0%} of that CPU) beside the command",
            file=sys.stderr,
        )


if __name__ == "__main__":
    sys.exit(main())
