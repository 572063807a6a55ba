"""Tracer overhead per syscall, measured side by side in one run.

Two storms with known counts: a C loop of N one-byte writes to /dev/null, and a Python
loop of M 16-byte os.write calls. Each prints the time of its own loop. Every tracer runs
the same storm as a launched command; the figure is the loop time, median of R runs:

  untraced | bpftrace hand-written (sys_enter stores nsecs by tid, sys_exit adds to
  stats()) | bpftrace count only | contend trace syscalls | perf trace -s | strace -c -f

Runs go round robin over the tracers so that drift hits all alike. Prints the ratio to
untraced and the added ns per traced syscall. Run as root:
  .venv/bin/python bench/bench_trace_overhead.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
C_CALLS = 400_000
PY_CALLS = 200_000
PY_STORM = (
    "import os, time\n"
    "fd = os.open('/dev/null', os.O_WRONLY)\n"
    "b = b'x' * 16\n"
    "t = time.monotonic_ns()\n"
    f"for _ in range({PY_CALLS}):\n"
    "    os.write(fd, b)\n"
    "print(time.monotonic_ns() - t)\n"
)
HAND_WRITTEN = (
    "tracepoint:raw_syscalls:sys_enter /pid == cpid/ { @start[tid] = nsecs; }\n"
    "tracepoint:raw_syscalls:sys_exit /@start[tid]/ "
    "{ @lat = stats(nsecs - @start[tid]); delete(@start[tid]); }\n"
    "END { clear(@start); }\n"
)
COUNT_ONLY = "tracepoint:raw_syscalls:sys_enter /pid == cpid/ { @[args->id] = count(); }\n"


def contend(latency: str = "sampled") -> list[str]:
    return [
        sys.executable, "-m", "contend", "trace", "syscalls", "--latency", latency,
        "--format", "json", "-o", os.devnull, "--",
    ]  # fmt: skip


def tracers() -> dict[str, list[str] | None]:
    bpftrace = shutil.which("bpftrace")
    return {
        "untraced": [],
        "bpftrace hand-written latency": ["bpftrace", "-e", HAND_WRITTEN, "-c"]
        if bpftrace
        else None,
        "bpftrace count only": ["bpftrace", "-e", COUNT_ONLY, "-c"] if bpftrace else None,
        "contend trace syscalls": contend() if bpftrace else None,
        "contend ... --latency exact": contend("exact") if bpftrace else None,
        "perf trace -s": ["perf", "trace", "-s", "-o", os.devnull, "--"]
        if shutil.which("perf")
        else None,
        "strace -c -f": ["strace", "-c", "-f", "-o", os.devnull, "--"]
        if shutil.which("strace")
        else None,
    }


def loop_ns(prefix: list[str], storm: list[str]) -> int:
    # bpftrace -c takes the command as one string.
    one_string = bool(prefix) and prefix[0] == "bpftrace"
    cmd = [*prefix, " ".join(storm)] if one_string else [*prefix, *storm]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    numbers = [line.strip() for line in done.stdout.splitlines() if line.strip().isdigit()]
    if not numbers:
        raise RuntimeError(
            f"{cmd[0]}: no loop time in output: {done.stdout[-300:]} {done.stderr[-300:]}"
        )
    return int(numbers[0])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (bpftrace, perf trace)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        storm_bin = Path(tmp) / "storm"
        subprocess.run(["gcc", "-O2", "-o", str(storm_bin), str(HERE / "storm.c")], check=True)
        py_file = Path(tmp) / "storm.py"
        py_file.write_text(PY_STORM)
        storms = {
            f"C: {C_CALLS} x write(1 B)": ([str(storm_bin), str(C_CALLS)], C_CALLS),
            f"Python: {PY_CALLS} x os.write(16 B)": ([sys.executable, str(py_file)], PY_CALLS),
        }
        for title, (storm, calls) in storms.items():
            print(f"\n{title}, median of {args.runs} runs")
            print(f"{'tracer':32} {'loop ms':>9} {'ratio':>7} {'+ns/call':>9}")
            # Round robin: run r of every tracer back to back, so drift hits all alike.
            chosen = {name: prefix for name, prefix in tracers().items() if prefix is not None}
            times: dict[str, list[int]] = {name: [] for name in chosen}
            for r in range(args.runs):
                for name, prefix in chosen.items():
                    # perf trace and strace cost 200-900x here: one run says enough.
                    if r == 0 or not name.startswith(("perf", "strace")):
                        times[name].append(loop_ns(prefix, storm))
            base = statistics.median(times["untraced"])
            for name, prefix in tracers().items():
                if prefix is None:
                    print(f"{name:32} {'(not installed)':>27}")
                    continue
                t = statistics.median(times[name])
                print(f"{name:32} {t / 1e6:9.1f} {t / base:7.2f} {(t - base) / calls:9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
