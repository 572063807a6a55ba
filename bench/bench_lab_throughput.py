"""What `contend trace all` costs the lab's app: request throughput with and without it.

The lab app (gunicorn, 1 worker x 4 threads, /compute ~25 ms) is driven closed loop by 4
clients for --seconds per round; rounds alternate untraced / traced (contend trace all
--pid on the app's processes, bpftrace backend) so that drift hits both alike.
Prints requests/s per round and the traced/untraced ratio of the medians. Run as root:
  .venv/bin/python bench/bench_lab_throughput.py [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

from contend.collect.procfs import ProcFS
from contend.lab.load import wait_healthy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def closed_loop(url: str, clients: int, seconds: float) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            if (await http.get(url)).status_code == 200:
                done += 1

    async with httpx.AsyncClient(timeout=30) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return done / seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (bpftrace)", file=sys.stderr)
        return 2
    port = free_port()
    app = subprocess.Popen([sys.executable, "-m", "contend.lab.app", "--port", str(port)])
    try:
        base = f"http://127.0.0.1:{port}"
        if not wait_healthy(f"{base}/health", 30, lambda: app.poll() is None):
            print("app did not start", file=sys.stderr)
            return 1
        url = f"{base}/compute"
        asyncio.run(closed_loop(url, 4, 2.0))  # warm up
        pids = ProcFS().descendants(app.pid)
        untraced, traced, tracer_cpu = [], [], []
        result_path = os.path.join(tempfile.mkdtemp(prefix="contend-bench-"), "trace.json")
        for _ in range(args.rounds):
            untraced.append(asyncio.run(closed_loop(url, 4, args.seconds)))
            cmd = [
                sys.executable,
                "-m",
                "contend",
                "trace",
                "all",
                "--format",
                "json",
                "-o",
                result_path,
            ]
            for pid in pids:
                cmd += ["--pid", str(pid)]
            tracer = subprocess.Popen(cmd)
            time.sleep(3.0)  # program compiled and attached
            traced.append(asyncio.run(closed_loop(url, 4, args.seconds)))
            tracer.send_signal(signal.SIGINT)
            tracer.wait(60)
            with open(result_path) as f:
                tracer_cpu.append(json.load(f)["overhead"]["tracer_cpu_s"] or 0.0)
        print(f"{'round':>5} {'untraced req/s':>15} {'traced req/s':>13}")
        for i, (u, t) in enumerate(zip(untraced, traced, strict=True), 1):
            print(f"{i:>5} {u:15.1f} {t:13.1f}")
        ratio = statistics.median(traced) / statistics.median(untraced)
        print(
            f"traced/untraced (medians): {ratio:.3f}  -> cost {100 * (1 - ratio):.1f}% of throughput"
        )
        print(f"bpftrace user-space CPU per traced round: {statistics.median(tracer_cpu):.2f} s")
    finally:
        app.terminate()
        app.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
