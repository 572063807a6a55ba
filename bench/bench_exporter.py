"""What `contend exporter` costs, beside a bpftrace runqlat-style script, in one run.

The load: the pipe ping-pong of bench_tracefs.py paced to `--rate` round trips/s; the
machine's scheduling events per second (sched_switch + sched_wakeup, counted by
bpftrace for 3 s before the runs) are printed. Then, in turn (round robin, `--runs`
times), for `--seconds` each:

- `contend exporter` (bpftrace backend, 1 s readings) scraped every `--scrape` seconds;
- the same with the procfs backend;
- a bpftrace script that does what runqlat does (a wakeup timestamp per thread, a log2
  histogram of run-queue waits, printed every second).

Each tool's CPU: user + system time of it and its children (bpftrace), from RUSAGE_CHILDREN
once it has exited; printed as a share of one core and as the exporter / runqlat ratio.

Run as root:  .venv/bin/python bench/bench_exporter.py [--rate 20000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench_tracefs import ping_pong, stop

print = functools.partial(print, flush=True)

RUNQLAT = """
tracepoint:sched:sched_wakeup,tracepoint:sched:sched_wakeup_new { @qtime[args->pid] = nsecs; }
tracepoint:sched:sched_switch {
  if (args->prev_state == 0) { @qtime[args->prev_pid] = nsecs; }
  $ns = @qtime[args->next_pid];
  if ($ns) { @usecs = hist((nsecs - $ns) / 1000); }
  delete(@qtime[args->next_pid]);
}
interval:s:1 { print(@usecs); clear(@usecs); }
END { clear(@qtime); }
"""


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def events_per_s(seconds: float) -> float:
    """Scheduling events (sched_switch + sched_wakeup) of the whole machine per second,
    counted by bpftrace for `seconds` before the runs."""
    done = subprocess.run(
        ["bpftrace", "-e", "tracepoint:sched:sched_switch,tracepoint:sched:sched_wakeup "
         f"{{ @n = count(); }} interval:ms:{int(seconds * 1000)} {{ exit(); }}"],
        capture_output=True, text=True,
    )  # fmt: skip
    counted = [line for line in done.stdout.splitlines() if line.startswith("@n:")]
    return int(counted[0].split()[1]) / seconds if counted else float("nan")


def tree_cpu(pid: int) -> float:
    """utime + stime of `pid` and its live descendants (/proc/PID/stat fields 14, 15)."""
    total, stack = 0.0, [pid]
    tick = os.sysconf("SC_CLK_TCK")
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for t in os.listdir(f"/proc/{p}/task"):
                stack += [int(c) for c in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
        except OSError:
            continue
    return total


def one(kind: str, seconds: float, scrape_s: float, warmup_s: float) -> tuple[float, float]:
    """(CPU seconds from start to end, CPU seconds of the steady window after
    `warmup_s`) of the tool, its children included."""
    cpu0 = children_cpu()
    url = None
    if kind == "runqlat":
        proc = subprocess.Popen(["bpftrace", "-e", RUNQLAT], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
    else:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "contend", "exporter", "--listen", f"127.0.0.1:{port}",
             "--backend", kind.split()[-1]],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/metrics"
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
    time.sleep(warmup_s)
    steady0 = tree_cpu(proc.pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(scrape_s, max(end - time.monotonic(), 0)))
        if url is not None:
            urllib.request.urlopen(url, timeout=10).read()
    steady = tree_cpu(proc.pid) - steady0
    proc.send_signal(signal.SIGTERM if url is not None else signal.SIGINT)
    proc.wait()
    return children_cpu() - cpu0, steady


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=20000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--scrape", type=float, default=15)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=5)
    args = ap.parse_args()
    kinds = ["exporter bpftrace", "exporter procfs", "runqlat"]
    pp = ping_pong(args.rate)
    try:
        time.sleep(1)
        rate = events_per_s(3)
        print(f"load: {rate:,.0f} scheduling events/s (sched_switch + sched_wakeup)")
        whole: dict[str, list[float]] = {k: [] for k in kinds}
        steady: dict[str, list[float]] = {k: [] for k in kinds}
        for run in range(args.runs):
            for kind in kinds:
                w, st = one(kind, args.seconds, args.scrape, args.warmup)
                whole[kind].append(w)
                steady[kind].append(st)
                print(f"  run {run + 1} {kind}: {st:.2f} CPU-s steady, {w:.2f} with start and stop")
    finally:
        stop(pp)
    med = {k: statistics.median(v) for k, v in steady.items()}
    print(f"\nsteady state, {args.seconds:g} s after {args.warmup:g} s of warm-up, a scrape "
          f"every {args.scrape:g} s, median of {args.runs}:")  # fmt: skip
    for kind in kinds:
        print(f"  {kind:18} {med[kind] / args.seconds:6.2%} of one core "
              f"(start and stop included: {statistics.median(whole[kind]):.2f} CPU-s)")  # fmt: skip
    print(f"  exporter (bpftrace) / runqlat: {med['exporter bpftrace'] / med['runqlat']:.2f}")


if __name__ == "__main__":
    main()
