"""What `contend diagnose` costs, beside `contend trace all` on the same workload, in one run.

The workload: the pipe ping-pong of bench_tracefs.py paced to `--rate` round trips/s
(two processes, ~3 events per round trip). For each backend, `contend trace all` and
`contend diagnose` take turns on it for `--seconds` each, `--runs` times (round robin, so
drift hits all alike). Two costs, each as a median:

- the tool's own CPU: user + system time of the command and its children (bpftrace), as
  the parent's RUSAGE_CHILDREN sees it once each command has exited;
- the workload's CPU per round trip (schedstat of its two processes over the window):
  in-kernel probes are charged to the traced tasks, so this is what tracing costs them,
  against the same workload untraced for the same time.

Printed: both, and the ratio diagnose / trace all for each backend.

Run as root:  .venv/bin/python bench/bench_diagnose.py [--rate 10000] [--seconds 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import functools
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_tracefs import ping_pong, stop

print = functools.partial(print, flush=True)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def workload_cpu_ns(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    return total


def command(kind: str, backend: str, pids: list[int], seconds: float) -> list[str]:
    targets = [a for p in pids for a in ("--pid", str(p))]
    if kind == "untraced":
        return ["sleep", str(seconds)]
    if kind == "trace all":
        return [sys.executable, "-m", "contend", "trace", "all", "--backend", backend,
                *targets, "--duration", str(seconds), "--format", "json", "-o", "/dev/null"]  # fmt: skip
    return [sys.executable, "-m", "contend", "diagnose", "--backend", backend, *targets,
            "--duration", str(seconds), "--format", "json", "-o", "/dev/null"]  # fmt: skip


def one(kind: str, backend: str, pids: list[int], seconds: float) -> tuple[float, float]:
    """(tool CPU s, workload CPU ns per second of window) of one run."""
    before, work = children_cpu(), workload_cpu_ns(pids)
    t = time.monotonic()
    done = subprocess.run(command(kind, backend, pids, seconds), capture_output=True, text=True)
    window = time.monotonic() - t
    if done.returncode != 0:
        raise SystemExit(f"{kind} {backend}: {done.stderr.strip()}")
    return children_cpu() - before, (workload_cpu_ns(pids) - work) / window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    pp = ping_pong(args.rate)
    assert pp.stdout is not None
    parent = int(pp.stdout.readline())
    try:
        time.sleep(0.5)
        child = [int(c) for c in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        pids = [parent, *child]
        runs = [("untraced", "-")] + [
            (kind, backend)
            for backend in ("bpftrace", "tracefs")
            for kind in ("trace all", "diagnose")
        ] + [("diagnose", "procfs")]  # fmt: skip
        seen: dict[tuple[str, str], list[tuple[float, float]]] = {r: [] for r in runs}
        for _ in range(args.runs):
            for kind, backend in runs:
                seen[(kind, backend)].append(one(kind, backend, pids, args.seconds))
    finally:
        stop(pp)
    base = statistics.median(w for _, w in seen[("untraced", "-")])
    print(f"ping-pong at {args.rate:.0f} round trips/s, {args.seconds:g} s, median of {args.runs}")
    print(f"{'':24} {'tool CPU':>10} {'% of a core':>11} {'workload CPU':>13} {'vs untraced':>11}")
    medians: dict[tuple[str, str], tuple[float, float]] = {}
    for key, values in seen.items():
        tool = statistics.median(v[0] for v in values)
        work = statistics.median(v[1] for v in values)
        medians[key] = (tool, work)
        label = key[0] if key[1] == "-" else f"{key[0]} ({key[1]})"
        print(
            f"{label:24} {tool:9.2f}s {100 * tool / args.seconds:10.1f}% "
            f"{work / 1e6:10.0f} ms/s {work / base:10.2f}x"
        )
    for backend in ("bpftrace", "tracefs"):
        t, d = medians[("trace all", backend)], medians[("diagnose", backend)]
        print(
            f"{backend}: diagnose / trace all: tool CPU {d[0] / t[0]:.2f}, "
            f"workload CPU {d[1] / t[1]:.2f}"
        )


if __name__ == "__main__":
    main()
