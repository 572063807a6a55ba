"""The noise generator: N processes burning CPU until SIGTERM, all named `contend-noise`.

Run as `python -m contend.lab.noise --workers N`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import types

from contend.prctl import die_with_parent, set_comm

COMM = "contend-noise"

_stop = False


def _on_term(signum: int, frame: types.FrameType | None) -> None:
    global _stop
    _stop = True


def burn() -> None:
    """Busy loop until told to stop; checks the flag every ~1 ms of work."""
    x = 0
    while not _stop:
        for i in range(10_000):
            x ^= i
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="contend-noise", description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    set_comm(COMM)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    children = []
    for _ in range(max(args.workers, 0)):
        pid = os.fork()
        if pid == 0:
            die_with_parent(signal.SIGTERM)
            burn()
        children.append(pid)
    while not _stop:
        time.sleep(0.1)  # not signal.pause(): a SIGTERM before it would be missed
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in children:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
