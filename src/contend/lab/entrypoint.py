"""The init of the `dtrace-cpu-contention` image: the app under gunicorn on port 5000 and
the noise generator beside it, as the original document's container runs them.

Stdlib and `contend.prctl` only (with `contend.lab.app` and `contend.lab.noise`, the
whole of contend the image carries). Environment:

- `CONTEND_NOISE` (default `1`): `0`, `false`, `no` or `off` runs the app alone.
- `CONTEND_NOISE_WORKERS` (default `2`): noise processes.
- `PORT` (default `5000`): the app's port.
- `HOST` (default `0.0.0.0`, all addresses: the engine publishes the port): the address to
  listen on; `127.0.0.1` for a container on the host's network (`--network host`).

As PID 1 of a container it forwards SIGTERM/SIGINT to its children (the kernel drops
signals PID 1 does not handle), reaps every orphan, and exits with the app's status when
the app ends, stopping the noise first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import types

from contend.prctl import set_comm

COMM = "contend-init"
_OFF = ("0", "false", "no", "off")


def _int_env(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        sys.exit(f"contend-init: {name}={raw!r} is not an integer")
    if not low <= value <= high:
        sys.exit(f"contend-init: {name}={value} is out of range [{low}, {high}]")
    return value


def main() -> int:
    set_comm(COMM)
    noise_on = os.environ.get("CONTEND_NOISE", "1").strip().lower() not in _OFF
    workers = _int_env("CONTEND_NOISE_WORKERS", 2, 0, 64)
    port = _int_env("PORT", 5000, 1, 65535)
    host = os.environ.get("HOST", "0.0.0.0").strip() or "0.0.0.0"
    python = sys.executable or "python3"
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: types.FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if noise_on and workers > 0:
        children.append(
            subprocess.Popen([python, "-m", "contend.lab.noise", "--workers", str(workers)])
        )
    app = subprocess.Popen([python, "-m", "contend.lab.app", "--host", host, "--port", str(port)])
    children.append(app)
    status = 1
    while True:
        try:
            pid, raw = os.wait()  # reaps orphans too: we are PID 1
        except ChildProcessError:
            break
        if pid == app.pid:
            app.returncode = os.waitstatus_to_exitcode(raw)
            status = app.returncode if app.returncode >= 0 else 128 - app.returncode
            forward(signal.SIGTERM, None)
        for child in children:
            if child.pid == pid and child.returncode is None:
                child.returncode = os.waitstatus_to_exitcode(raw)
    return status


if __name__ == "__main__":
    sys.exit(main())
