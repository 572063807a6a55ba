"""What `contend top` costs on a machine of 500 processes in 100 cgroups, beside htop and
systemd-cgtop refreshing as often, in one run.

`--groups` cgroups (contend's sandboxes) with `--per-group` sleeping processes each are
made first. Each tool then runs in a tmux terminal of 160x50 for `--seconds` after a
warm-up, `--runs` times round robin: `contend top --interval 1` (bpftrace and procfs
backends), `htop -d 10` (its delay is in tenths: 1 s) and `systemd-cgtop -d 1`, where
present. Each tool's CPU (it and its children, from /proc/PID/stat) is printed as a share
of one core.

Run as root:  .venv/bin/python bench/bench_top.py [--groups 100] [--per-group 5]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import sys
import time

from bench_exporter import tree_cpu

from contend.lab.sandbox import Limits, Sandbox

print = functools.partial(print, flush=True)
SOCKET = f"contend-bench-{os.getpid()}"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", "-L", SOCKET, *args], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def one(command: list[str], seconds: float, warmup: float) -> float:
    """CPU seconds the tool used over `seconds` in a terminal, after `warmup`."""
    tmux("new-session", "-d", "-s", "b", "-x", "160", "-y", "50", " ".join(command))
    try:
        time.sleep(warmup)
        pid = int(tmux("display-message", "-p", "-t", "b", "#{pane_pid}").strip())
        before = tree_cpu(pid)
        time.sleep(seconds)
        return tree_cpu(pid) - before
    finally:
        subprocess.run(["tmux", "-L", SOCKET, "kill-server"], capture_output=True)
        time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=100)
    ap.add_argument("--per-group", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    contend = [sys.executable, "-m", "contend", "top", "--interval", "1"]
    tools = {"contend top (bpftrace)": [*contend, "--backend", "bpftrace"],
             "contend top (procfs)": [*contend, "--backend", "procfs"]}  # fmt: skip
    if shutil.which("htop"):
        tools["htop -d 10"] = ["htop", "-d", "10"]
    if shutil.which("systemd-cgtop"):
        tools["systemd-cgtop -d 1"] = ["systemd-cgtop", "-d", "1"]
    boxes = [Sandbox(Limits(None, None)).open() for _ in range(args.groups)]
    sleepers: list[subprocess.Popen[bytes]] = []
    try:
        for box in boxes:
            for _ in range(args.per_group):
                sleepers.append(subprocess.Popen(["sleep", "3600"], preexec_fn=box.join_function()))
        processes = sum(1 for p in os.listdir("/proc") if p.isdigit())
        print(f"machine: {processes} processes, {args.groups} cgroups of ours")
        cpu: dict[str, list[float]] = {t: [] for t in tools}
        for run in range(args.runs):
            for name, command in tools.items():
                cpu[name].append(one(command, args.seconds, args.warmup))
                print(f"  run {run + 1} {name}: {cpu[name][-1]:.2f} CPU-s")
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
        for box in boxes:
            box.close()
    print(f"\n1 s refresh, {args.seconds:g} s after {args.warmup:g} s, median of {args.runs}:")
    for name in tools:
        print(f"  {name:24} {statistics.median(cpu[name]) / args.seconds:6.2%} of one core")


if __name__ == "__main__":
    main()
