"""contend trace --backend tracefs, for real: the exact-count workloads of test_trace.py,
parity with the bpftrace backend, and nothing left in tracefs however it stops."""

from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import AS_NOBODY, LIKE_SETSID_BACKGROUND, contend_command, need, quiet_cpu
from contend.collect.procfs import ProcFS
from contend.lab.sandbox import Limits, Sandbox
from test_trace import KNOWN, _busy_pinned, trace_json

pytestmark = pytest.mark.kernel
INSTANCES = Path("/sys/kernel/tracing/instances")


@pytest.fixture(scope="module")
def root() -> None:
    need(os.geteuid() == 0, "needs root")
    need(Path("/sys/kernel/tracing").is_dir(), "needs tracefs")


def ours() -> set[str]:
    if not INSTANCES.is_dir():
        return set()
    return {n for n in os.listdir(INSTANCES) if n.startswith("contend-")}


@pytest.fixture(autouse=True)
def no_instance_left_behind() -> Any:
    before = ours()
    yield
    assert ours() == before, f"tracefs instances left behind: {ours() - before}"


@pytest.fixture(scope="module")
def tracefs_known(root: None) -> tuple[int, dict[str, Any]]:
    rc, result, _ = trace_json("all", "--backend", "tracefs", "--", sys.executable, "-c", KNOWN)
    return rc, result


@pytest.fixture(scope="module")
def bpftrace_known(root: None) -> dict[str, Any]:
    need(shutil.which("bpftrace") is not None, "needs bpftrace")
    rc, result, err = trace_json("all", "--latency", "exact", "--", sys.executable, "-c", KNOWN)
    assert rc == 42, err
    return result


def main_pid(result: dict[str, Any]) -> int:
    (pid,) = {r["pid"] for r in result["syscalls"] if r["syscall"] == "getsid"}
    return int(pid)


def exact_counts(result: dict[str, Any]) -> dict[str, Any]:
    """The figures of KNOWN that both backends must give exactly."""
    pid = main_pid(result)
    sys_rows = {r["syscall"]: r for r in result["syscalls"] if r["pid"] == pid}
    io = {r["op"]: r for r in result["io"] if r["pid"] == pid}
    events = result["process"]
    forks = [e for e in events if e["event"] == "fork" and e["ppid"] == pid]
    children = {e["pid"] for e in forks}
    exits = sorted(
        (e["exit_code"], e["signal"])
        for e in events
        if e["event"] == "exit" and e["pid"] in children and e["pid"] == e["tid"]
    )
    main_exit = [
        (e["exit_code"], e["signal"])
        for e in events
        if e["event"] == "exit" and e["pid"] == pid and e["tid"] == pid
    ]
    return {
        "getsid": (sys_rows["getsid"]["count"], sys_rows["getsid"]["errors"]),
        "getsid_timed": sys_rows["getsid"]["timed"],
        "exit_group": sys_rows["exit_group"]["count"],
        "wait4": (sys_rows["wait4"]["count"], sys_rows["wait4"]["blocking"]),
        "writes": (io["write"]["count"], io["write"]["bytes"]),
        "forks": len(forks),
        "child_exits": exits,
        "threads": len([e for e in events if e["event"] == "thread" and e["pid"] == pid]),
        "main_exit": main_exit,
        "exit_status": result["exit_status"],
        "lost": result["lost_events"],
    }


def test_tracefs_gives_the_exact_counts(tracefs_known: tuple[int, dict[str, Any]]) -> None:
    rc, result = tracefs_known
    assert rc == 42
    assert result["schema"] == "contend.trace/1" and result["backend"] == "tracefs"
    assert result["syscall_latency"] == "exact"
    assert exact_counts(result) == {
        "getsid": (1234, 0),
        "getsid_timed": 1234,
        "exit_group": 1,
        "wait4": (4, True),
        "writes": (500, 500 * 37),
        "forks": 4,
        "child_exits": [(0, 9), (3, 0), (5, 0), (7, 0)],
        "threads": 4,
        "main_exit": [(42, 0)],
        "exit_status": 42,
        "lost": 0,
    }
    assert "tracefs: events lost per CPU: cpu0 0, cpu1 0" in result["notes"]
    getsid = next(r for r in result["syscalls"] if r["syscall"] == "getsid")
    assert 0 < getsid["avg_ns"] <= getsid["max_ns"]
    summary = {r["pid"]: r["syscalls"] for r in result["process_syscalls"]}
    assert summary[main_pid(result)] > 1234 + 500


def test_parity_with_bpftrace_on_the_known_workload(
    tracefs_known: tuple[int, dict[str, Any]], bpftrace_known: dict[str, Any]
) -> None:
    _, tracefs = tracefs_known
    assert exact_counts(tracefs) == exact_counts(bpftrace_known)

    # Every syscall of the main process (interpreter startup included): the same calls,
    # the same errors; counts equal but for futex (how often the 4 threads' start and
    # join contend depends on timing: 21 vs 15 seen) and mmap/munmap/mprotect off by a
    # few (30 vs 32, 8 vs 9, 7 vs 9: glibc makes a malloc arena per thread that runs
    # concurrently, which depends on timing too).
    def counts(result: dict[str, Any]) -> dict[str, tuple[int, int]]:
        pid = main_pid(result)
        return {
            r["syscall"]: (r["count"], r["errors"]) for r in result["syscalls"] if r["pid"] == pid
        }

    a, b = counts(tracefs), counts(bpftrace_known)
    # `exit`, `rt_sigprocmask` and `madvise` of the 4 threads were also seen off by one or
    # two with the machine loaded (a thread's exit and stack freeing race the end of its
    # tracer's accounting): thread and memory management calls may differ by a few, or be
    # missing on one side; every other call must be equal in count and errors.
    timing = {"futex", "mmap", "munmap", "mprotect", "madvise", "brk", "exit", "rt_sigprocmask"}
    assert set(a) ^ set(b) <= timing, set(a) ^ set(b)
    assert len(a) > 30
    assert all(a[k][1] == b[k][1] for k in set(a) & set(b))
    off = {k: (a.get(k, (0, 0))[0], b.get(k, (0, 0))[0]) for k in set(a) | set(b)}
    off = {k: v for k, v in off.items() if v[0] != v[1]}
    assert set(off) <= timing, off
    assert all(abs(x - y) <= 3 for k, (x, y) in off.items() if k != "futex"), off


def test_text_output_has_the_original_blocks(root: None) -> None:
    done = subprocess.run(
        [*contend_command(), "trace", "all", "--backend", "tracefs", "--", sys.executable,
         "-c", "import os; os.write(1, b'hi\\n')"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for block in ("=== System Calls Summary ===", "=== Process Activity Summary ===",
                  "=== I/O Operations Summary ===", "=== CPU Scheduling Summary ==="):  # fmt: skip
        assert block in done.stdout
    assert "backend tracefs" in done.stdout and "0 lost" in done.stdout


@pytest.mark.timing
def test_two_pinned_busy_loops_against_schedstat_and_bpftrace(root: None, tmp_path: Path) -> None:
    """Both backends at once on the same two loops sharing a CPU (bpftrace's probes and
    the tracefs instance coexist): each within 10% of schedstat over its own window, and
    within 10% of each other."""
    need(shutil.which("bpftrace") is not None, "needs bpftrace")
    cpu = quiet_cpu()
    procs = [_busy_pinned(cpu), _busy_pinned(cpu)]
    fs = ProcFS()
    runs: dict[str, subprocess.Popen[str]] = {}
    results = {b: tmp_path / f"{b}.json" for b in ("bpftrace", "tracefs")}
    try:
        time.sleep(0.5)
        targets = [a for p in procs for a in ("--pid", str(p.pid))]
        # bpftrace first: it takes longer to attach; tracefs once it has. Each backend is
        # held against schedstat over its own window: read when it has printed a first
        # interval (attached) and when it ends. (One schedstat window for both was 12%
        # off under load: the other tracer's start-up ran on the loops' CPU in part of it.)
        before: dict[str, dict[int, Any]] = {}
        after: dict[str, dict[int, Any]] = {}

        def schedstat() -> dict[int, Any]:
            return {p.pid: next(iter(fs.tasks([p.pid]))) for p in procs}

        for backend in ("bpftrace", "tracefs"):
            intervals = tmp_path / f"{backend}.intervals"
            with intervals.open("w") as sink:  # a file: a pipe left unread would fill
                r = runs[backend] = subprocess.Popen(
                    [*contend_command(), "trace", "--format", "json", "cpu", "--backend",
                     backend, *targets, "--duration", "3.5", "--interval", "0.25",
                     "-o", str(results[backend])],
                    stdout=sink, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
            deadline = time.monotonic() + 120
            while not intervals.read_text().strip():
                assert r.poll() is None and time.monotonic() < deadline, r.communicate()[1]
                time.sleep(0.01)
            before[backend] = schedstat()
        while len(after) < len(runs):
            for backend, r in runs.items():
                if backend not in after and r.poll() is not None:
                    after[backend] = schedstat()
            time.sleep(0.005)
        outputs = {b: r.communicate(timeout=120) for b, r in runs.items()}
    finally:
        for p in procs:
            p.kill()
            p.wait()
    figures: dict[str, dict[int, tuple[float, float]]] = {}
    for backend, (_, err) in outputs.items():
        assert runs[backend].returncode == 0, err
        rows = {r["pid"]: r for r in json.loads(results[backend].read_text())["cpu"] if r["tid"]}
        total = sum(r["on_cpu_ns"] for r in rows.values())
        figures[backend] = {}
        for pid, row in rows.items():
            share = row["on_cpu_ns"] / total
            assert 0.45 <= share <= 0.55, (backend, share)
            b, a = before[backend][pid], after[backend][pid]
            sched_slices = a.slices - b.slices
            sched_slice = (a.on_cpu_ns - b.on_cpu_ns) / sched_slices
            sched_wait = (a.run_queue_wait_ns - b.run_queue_wait_ns) / sched_slices
            slice_ns = row["on_cpu_ns"] / row["slices"]
            wait_ns = row["run_queue_latency"]["avg_ns"]
            assert slice_ns == pytest.approx(sched_slice, rel=0.10), backend
            assert wait_ns == pytest.approx(sched_wait, rel=0.10), backend
            assert row["involuntary_switches"] >= 0.9 * row["slices"]
            figures[backend][pid] = (slice_ns, wait_ns)
    assert figures["tracefs"].keys() == figures["bpftrace"].keys() == {p.pid for p in procs}
    for pid, (s1, w1) in figures["tracefs"].items():
        s2, w2 = figures["bpftrace"][pid]
        assert s1 == pytest.approx(s2, rel=0.10) and w1 == pytest.approx(w2, rel=0.10), figures


@pytest.mark.timing
@pytest.mark.parametrize("cpu", [0, 1])
def test_a_throttled_loop_runs_what_its_quota_allows(root: None, cpu: int) -> None:
    """A busy loop in a 0.3-CPU group, pinned: it leaves the CPU at each throttle and comes
    back from idle, whose switch this VM's ftrace does not record on CPU 1. Its on-CPU
    time must still be what the kernel charged it, not its wall time."""
    need(os.path.isdir("/sys/fs/cgroup"), "needs cgroups")
    with Sandbox(Limits(0.3, None)) as sandbox:
        join = sandbox.join_function()

        def pinned_in_group() -> None:
            join()
            os.sched_setaffinity(0, {cpu})

        p = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pinned_in_group)
        fs = ProcFS()
        try:
            time.sleep(0.5)
            before = next(iter(fs.tasks([p.pid])))
            rc, result, err = trace_json(
                "cpu", "--backend", "tracefs", "--pid", str(p.pid), "--duration", "3"
            )
            after = next(iter(fs.tasks([p.pid])))
        finally:
            p.kill()
            p.wait()
    assert rc == 0, err
    (row,) = [r for r in result["cpu"] if r["tid"] == p.pid]
    assert after.on_cpu_ns is not None and before.on_cpu_ns is not None
    charged = after.on_cpu_ns - before.on_cpu_ns  # over a longer window than the trace's
    # 0.3 CPU over the trace's window; schedstat's window is longer by the tracer's start.
    assert row["on_cpu_ns"] / (result["duration_s"] * 1e9) == pytest.approx(0.3, abs=0.05)
    assert row["on_cpu_ns"] <= charged * 1.02, result["notes"]
    # The loop always wants the CPU: it waits whenever it does not run (within 5% of the
    # window), mostly in throttled stretches of about 70 ms of every 100 ms period (a
    # busy neighbour on its CPU adds short waits between them, hence p99, not the mean).
    q = row["run_queue_latency"]
    waited = q["avg_ns"] * q["count"]
    window_ns = result["duration_s"] * 1e9
    assert waited + row["on_cpu_ns"] == pytest.approx(window_ns, rel=0.05), row
    assert q["p99_ns"] >= 30e6, row


FAMILY = """
import os, sys, time
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:  # a grandchild too
            time.sleep(600)
            os._exit(0)
        time.sleep(600)
        os._exit(0)
    pids.append(pid)
time.sleep(0.3)
with open(sys.argv[1], "w") as f:
    f.write(" ".join(map(str, [os.getpid(), *pids])))
time.sleep(600)
"""


@pytest.mark.parametrize("backend", ["tracefs", "bpftrace"])
def test_a_launched_command_ends_with_its_children_at_the_duration(
    root: None, backend: str, tmp_path: Path
) -> None:
    """--duration over a command still running: it and every process it started end with
    the trace (as timeout(1) ends its process group); its status is SIGTERM's."""
    if backend == "bpftrace":
        need(shutil.which("bpftrace") is not None, "needs bpftrace")
    pids_file = tmp_path / "pids"
    rc, result, err = trace_json(
        "cpu", "--backend", backend, "--duration", "1.5",
        "--", sys.executable, "-c", FAMILY, str(pids_file),
    )  # fmt: skip
    assert rc == 128 + signal.SIGTERM, err
    family = [int(p) for p in pids_file.read_text().split()]
    assert len(family) == 3
    # The children's own children too: every process of the command's tree is gone.
    tree = {r["pid"] for r in result["cpu"] if r["tid"]}
    assert set(family) <= tree and len(tree) == 5, tree
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in tree):
        time.sleep(0.05)
    alive = [p for p in tree if Path(f"/proc/{p}").exists()]
    assert alive == [], alive


def _wait_for_instance(name: str, timeout_s: float = 60) -> None:
    """Until contend's tracefs instance `name` exists: the run is tracing."""
    deadline = time.monotonic() + timeout_s
    while name not in ours() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert name in ours()


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGKILL]
)
def test_nothing_left_in_tracefs_however_it_stops(root: None, sig: int) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    proc = subprocess.Popen(
        [*contend_command(), "trace", "all", "--backend", "tracefs", "--pid", str(sleeper.pid),
         "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **LIKE_SETSID_BACKGROUND,
    )  # fmt: skip
    name = f"contend-{proc.pid}"
    try:
        _wait_for_instance(name)
        time.sleep(0.5)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        sleeper.kill()
        sleeper.wait()
    if sig == signal.SIGKILL:
        assert proc.returncode == -9
        assert name in ours()  # nobody could give it back ...
        done = subprocess.run(
            [*contend_command(), "doctor", "--cleanup"], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert name in done.stdout and "removed" in done.stdout  # ... until the next run
        assert name not in ours()
    else:
        assert proc.returncode == 0, err
        result = json.loads(out)
        assert "stopped by a signal before the end" in result["notes"]
        assert name not in ours()


def test_a_killed_run_is_reclaimed_by_the_next_trace(root: None) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.mkdir(INSTANCES / f"contend-{dead.pid}")
    rc, _, err = trace_json("process", "--backend", "tracefs", "--duration", "0.3",
                                 "--pid", str(os.getpid()))  # fmt: skip
    assert rc == 0, err
    assert f"contend-{dead.pid}" not in ours()


def test_bad_input_is_one_line(root: None, tmp_path: Path) -> None:
    done = subprocess.run(
        [*contend_command(), "trace", "io", "--backend", "tracefs", "--perfetto",
         str(tmp_path / "t.json"), "--duration", "1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "--perfetto draws the cpu monitor's events" in done.stderr
    done = subprocess.run(
        [*contend_command(), "trace", "cpu", "--backend", "ftrace"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "tracefs" in done.stderr


EVENTFUL = """
import os, time
for _ in range(7):
    os.write(1, b"hello\\n")
    t = time.thread_time()  # a syscall: asked every ~0.5 ms, not in a storm
    while time.thread_time() - t < 0.15:  # 150 ms of CPU, however busy the machine is
        for _ in range(20000):
            pass
    time.sleep(0.05)
if os.fork() == 0:
    os._exit(3)
os.wait()
"""


def _eventful(backend: str, *flags: str) -> tuple[str, list[str]]:
    done = subprocess.run(
        [*contend_command(), "trace", "cpu", "io", "process", "--backend", backend, *flags,
         "--", "/usr/bin/python3", "-c", EVENTFUL],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The event lines: before the summary (which lists the process events again).
    streamed = done.stdout.split("\ncontend trace ", 1)[0]
    return done.stdout, [line for line in streamed.splitlines() if line.startswith("[")]


def test_events_and_interval_on_both_backends(root: None) -> None:
    """--events and --interval on tracefs: the event lines of bpftrace's, counted the same
    (the 7 writes and their results, the fork, the child's exit code), and a summary so
    far every 0.4 s of the ~1.4 s run."""
    need(shutil.which("bpftrace") is not None, "needs bpftrace")
    for backend in ("tracefs", "bpftrace"):
        out, lines = _eventful(backend, "--events")
        writes = [n for n, line in enumerate(lines) if line.endswith("-> write()")]
        assert len(writes) == 7, (backend, lines)
        text = out.splitlines()
        results = [text[text.index(lines[n]) + 1].strip() for n in writes]
        assert results == ["Result: 6 bytes"] * 7, backend
        forks = [line for line in lines if "New process: python3" in line]
        exits = [line for line in lines if "exit code 3" in line]
        assert len(forks) == 1 and len(exits) == 1, (backend, lines)
        on = sum(line.endswith(" on CPU") for line in lines)
        off = [int(line.split("after ")[1].split()[0]) for line in lines if "off CPU after" in line]
        # Every slice that ended has its on line; 7 busy stretches of 150 ms each.
        assert on >= len(off) >= 7 and sum(off) >= 7 * 0.15e9 * 0.9, backend
        started = time.monotonic()
        out, _ = _eventful(backend, "--interval", "0.4")
        elapsed = time.monotonic() - started
        summaries = out.count("(cumulative) ---")
        # tracefs: one every 0.4 s from the release of the command (>= 1.4 s of it), so no
        # more than the whole run (start-up included) has room for; bpftrace's interval probe
        # also fires while its other probes attach.
        most = int(elapsed / 0.4) + 1
        assert summaries >= 2 and (backend == "bpftrace" or summaries <= most), (
            backend, summaries, elapsed,
        )  # fmt: skip
        # The summary so far holds the writes made so far: the last one has most of them.
        last = out.rsplit("(cumulative) ---", 1)[1]
        assert "write" in last.split("=== I/O Operations Summary ===")[1], backend


LATE = """
import os, sys, time
for _ in range(int(sys.argv[1])):
    os.getsid(0)
t = time.thread_time()
while time.thread_time() - t < 0.2:  # 200 ms of CPU
    for _ in range(20000):
        pass
"""


def test_comm_is_matched_on_every_event_as_bpftrace_does(root: None, tmp_path: Path) -> None:
    """--comm on tracefs: a process of that name started after the trace began is traced
    (exact getsid count, its exec); one of another name is not; names ftrace cannot match
    literally are refused before anything touches the kernel."""
    late, decoy = tmp_path / "contend-late", tmp_path / "contend-decoy"
    late.symlink_to(sys.executable)
    decoy.symlink_to(sys.executable)
    proc = subprocess.Popen(
        [*contend_command(), "trace", "syscalls", "cpu", "process", "--backend", "tracefs",
         "--comm", "contend-late", "--duration", "2.5", "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    for path, calls in ((late, 1234), (decoy, 99)):
        subprocess.run([str(path), "-c", LATE, str(calls)], check=True, timeout=30)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out)
    getsid = {(r["comm"], r["syscall"]): r["count"] for r in result["syscalls"]}
    assert getsid.get(("contend-late", "getsid")) == 1234, result["syscalls"]
    assert {r["comm"] for r in result["syscalls"]} == {"contend-late"}
    assert {r["comm"] for r in result["cpu"] if r["tid"]} == {"contend-late"}
    assert [e["event"] for e in result["process"]][:1] == ["exec"]
    busy = sum(r["on_cpu_ns"] for r in result["cpu"] if r["tid"])
    assert busy >= 0.2e9
    for bad in ("contend*", 'x"y'):
        done = subprocess.run(
            [*contend_command(), "trace", "cpu", "--backend", "tracefs", "--comm", bad],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "cannot match literally" in done.stderr


# --- the timeline: Perfetto and the longest waits ----------------------------------------

BURN = (
    "import time\n"
    "end = time.thread_time() + 1.5\n"
    "while time.thread_time() < end:\n"
    "    pass\n"
    "for _ in range(20):\n"
    "    time.sleep(0.005)\n"
    "print(open('/proc/self/schedstat').read().split()[0])\n"
)


def check_trace_format(doc: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """The Trace Event Format's rules that Perfetto relies on; returns X events per tid."""
    events = doc["traceEvents"]
    assert doc["displayTimeUnit"] == "ns"
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "thread_name"}  # fmt: skip
    processes = {e["pid"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    per_tid: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        assert e["ph"] in ("X", "i", "C", "M", "s", "f")
        if e["ph"] in ("X", "i", "s", "f"):
            assert (e["pid"], e["tid"]) in names and e["pid"] in processes
        if e["ph"] == "X":
            assert e["dur"] >= 0 and e["ts"] >= 0
            per_tid.setdefault(e["tid"], []).append(e)
    for slices in per_tid.values():
        slices.sort(key=lambda e: e["ts"])
        for a, b in itertools.pairwise(slices):
            assert a["ts"] + a["dur"] <= b["ts"] + 1e-3, (a, b)  # no overlap on a track
    flows = [e for e in events if e["ph"] in ("s", "f")]
    assert sorted(e["id"] for e in flows if e["ph"] == "s") == sorted(
        e["id"] for e in flows if e["ph"] == "f"
    )
    return per_tid


def _steal_ns() -> int:
    """Time stolen from this machine's CPUs by its hypervisor so far (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) * 10**9 // os.sysconf("SC_CLK_TCK")


@pytest.mark.timing
def test_perfetto_slices_add_up_to_proc_cpu_time(root: None, tmp_path: Path) -> None:
    trace = tmp_path / "burn.json"
    stolen_before = _steal_ns()
    done = subprocess.run(
        [*contend_command(), "trace", "cpu", "--backend", "tracefs", "--format", "json",
         "-o", str(tmp_path / "r.json"), "--perfetto", str(trace), "--", sys.executable, "-c", BURN],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    schedstat_ns = int(done.stdout.split()[-1])
    result = json.loads((tmp_path / "r.json").read_text())
    (pid,) = {r["pid"] for r in result["cpu"] if r["tid"]}
    doc = json.loads(trace.read_text())
    per_tid = check_trace_format(doc)
    # Microseconds: the slices in the file sum to the on-CPU ns of the JSON / 1000.
    total_us = sum(e["dur"] for e in per_tid[pid])
    row = next(r for r in result["cpu"] if r["tid"] == pid)
    assert total_us == pytest.approx(row["on_cpu_ns"] / 1000, rel=1e-6)
    # ... and to what the kernel charged the process (its gate's start, untraced, aside).
    # A slice is wall time on a CPU; schedstat's sum_exec_runtime is rq_clock_task, which
    # leaves out the time the hypervisor ran something else on this vCPU (steal, with
    # CONFIG_PARAVIRT_TIME_ACCOUNTING). Slices can exceed it by that much at most.
    stolen = _steal_ns() - stolen_before
    assert 0.95 * schedstat_ns <= total_us * 1000 <= 1.05 * schedstat_ns + stolen, (
        total_us * 1000, schedstat_ns, stolen, result["notes"])  # fmt: skip
    assert all(e["args"]["cpu"] in (0, 1) for e in per_tid[pid])
    wakeups = [e for e in doc["traceEvents"] if e["ph"] == "i" and e["tid"] == pid]
    assert len(wakeups) >= 20  # one per sleep at least
    meta = {e["args"].get("name", "") for e in doc["traceEvents"] if e["ph"] == "M"}
    assert f"python {pid}" in {m.replace("python3", "python") for m in meta}
    assert "CPUs" in meta and any(m.startswith("CPU ") for m in meta)


@pytest.mark.timing
def test_longest_waits_name_who_held_the_cpu(root: None, tmp_path: Path) -> None:
    """Two busy loops pinned to one CPU, tracing one: its waits are spent behind the other."""
    cpu = quiet_cpu()
    procs = [_busy_pinned(cpu), _busy_pinned(cpu)]
    trace = tmp_path / "pair.json"
    try:
        time.sleep(0.3)
        rc, result, err = trace_json(
            "cpu", "--backend", "tracefs", "--pid", str(procs[0].pid), "--duration", "2",
            "--perfetto", str(trace),
        )  # fmt: skip
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert rc == 0, err
    row = next(r for r in result["cpu"] if r["tid"] == procs[0].pid)
    total_wait = row["run_queue_latency"]["avg_ns"] * row["run_queue_latency"]["count"]
    behind = {o["tid"]: o["ns"] for o in result["waited_behind"]}
    # The CPU is never idle while it waits: the holders' time adds up to the waits.
    assert sum(behind.values()) == pytest.approx(total_wait, rel=0.05)
    # The other loop holds the CPU for a good part of the waits (not all: whatever else
    # runs on this shared machine takes its turns too).
    assert behind[procs[1].pid] >= 0.2 * total_wait
    longest = result["longest_waits"]
    assert len(longest) == 10
    waits = [w["wait_ns"] for w in longest]
    assert waits == sorted(waits, reverse=True) and waits[0] >= 1_000_000  # >= 1 ms slices
    for w in longest:
        assert w["tid"] == procs[0].pid and w["cpu"] == cpu
        assert sum(o["ns"] for o in w["ran"]) == pytest.approx(w["wait_ns"], rel=0.02)
    doc = json.loads(trace.read_text())
    per_tid = check_trace_format(doc)
    other = [
        e for e in doc["traceEvents"] if e["ph"] == "X" and e["args"].get("tid") == procs[1].pid
    ]
    assert other and procs[1].pid not in per_tid  # the other loop shows on the CPU track only


# --- session files: record now, report later --------------------------------------------


def test_record_then_report_gives_the_same_result(root: None, tmp_path: Path) -> None:
    session = tmp_path / "known.session"
    done = subprocess.run(
        [*contend_command(), "record", "-o", str(session), "--", sys.executable, "-c", KNOWN],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 42, done.stderr
    assert "0 lost" in done.stdout and session.stat().st_size < 200_000
    report = subprocess.run(
        [*contend_command(), "report", str(session), "--format", "json",
         "--perfetto", str(tmp_path / "p.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    result = json.loads(report.stdout)
    assert result["backend"] == "tracefs" and result["monitors"] == [
        "syscalls", "cpu", "process", "io"]  # fmt: skip
    assert exact_counts(result)["getsid"] == (1234, 0)
    assert exact_counts(result)["writes"] == (500, 500 * 37)
    assert exact_counts(result)["child_exits"] == [(0, 9), (3, 0), (5, 0), (7, 0)]
    assert exact_counts(result)["main_exit"] == [(42, 0)] and result["exit_status"] == 42
    check_trace_format(json.loads((tmp_path / "p.json").read_text()))
    # The same file analysed again, as on another machine: by nobody (no root, no tracefs,
    # no /proc of the traced tasks), from a world-readable copy: the same document.
    shared = Path(tempfile.mkdtemp(prefix="contend-session-"))
    try:
        shared.chmod(0o755)
        copy = shared / "known.session"
        shutil.copy(session, copy)
        copy.chmod(0o644)
        again = subprocess.run(
            [sys.executable, "-c", AS_NOBODY, "report", str(copy), "--format", "json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        shutil.rmtree(shared)
    assert again.returncode == 0, again.stderr
    assert again.stderr.startswith("uid 65534 euid 65534\n"), again.stderr
    assert json.loads(again.stdout) == result


REUSE = """
import os, time
a = os.open("/etc/hostname", os.O_RDONLY)
os.close(a)
b = os.open("/etc/passwd", os.O_RDONLY)  # the same fd number again
assert a == b
os.read(b, 10)
time.sleep(0.3)  # still open when the batch is read
"""


def test_a_reused_fd_is_not_given_the_later_file(root: None) -> None:
    """Paths come from /proc/PID/fd after the batch: an fd closed and opened again in it
    names the later file, so the earlier open is left unnamed (said in a note)."""
    rc, result, err = trace_json("io", "--backend", "tracefs", "--", sys.executable, "-c", REUSE)
    assert rc == 0, err
    pid = next(r["pid"] for r in result["io"])
    mine = {(f["path"], f["op"]): f["count"] for f in result["files"] if f["pid"] == pid}
    assert mine.get(("/etc/passwd", "openat")) == 1, mine
    assert mine.get(("/etc/passwd", "read")) == 1, mine
    assert ("/etc/hostname", "openat") not in mine  # its path could not be known
    assert any("opened files have no path" in n for n in result["notes"])


def test_an_empty_cgroup_is_refused_not_traced_whole(root: None) -> None:
    """An empty set_event_pid records every task: a target with no process is an error."""
    need(os.path.isdir("/sys/fs/cgroup"), "needs cgroups")
    with Sandbox(Limits(1.0, None)) as sandbox:
        group = sandbox.dirs.get("cpu") or next(iter(sandbox.dirs.values()))
        done = subprocess.run(
            [*contend_command(), "trace", "cpu", "--backend", "tracefs", "--cgroup",
             str(group), "--duration", "1"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode != 0 and done.stderr.count("\n") == 1, done.stderr
    assert "no process to trace" in done.stderr


def test_a_session_names_calls_with_the_recording_machines_numbers(
    root: None, tmp_path: Path
) -> None:
    """The machine is in the session: the same numbers read as arm64's are other calls."""
    from contend.monitors.syscalls import table_for

    session = tmp_path / "k.session"
    done = subprocess.run(
        [*contend_command(), "record", "-o", str(session), "--", sys.executable, "-c", KNOWN],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 42, done.stderr
    archive = np.load(session)
    arrays = {k.removesuffix(".npy"): archive[k] for k in archive.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    assert meta["machine"] == platform.machine() == "x86_64"
    meta["machine"] = "aarch64"
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    other = tmp_path / "arm.session"
    with other.open("wb") as f:
        np.savez_compressed(f, **arrays)
    report = subprocess.run(
        [*contend_command(), "report", str(other), "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    names = {r["syscall"] for r in json.loads(report.stdout)["syscalls"]}
    getsid = {nr for nr, name in table_for("x86_64").items() if name == "getsid"}.pop()
    assert table_for("aarch64")[getsid] in names and "getsid" not in names


def test_report_refuses_what_is_not_a_session(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.session"
    bogus.write_text("not a zip")
    done = subprocess.run(
        [*contend_command(), "report", str(bogus)], capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "not a contend session file" in done.stderr
    done = subprocess.run(
        [*contend_command(), "report", str(bogus), "--format", "xml"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and "not text or json" in done.stderr


def test_a_damaged_session_is_one_line(root: None, tmp_path: Path) -> None:
    """Empty, truncated, a column missing or cut short: one line and exit 1, never a
    traceback (nor click's "interrupted" for an empty file); outputs never overwrite it."""
    good = tmp_path / "good.session"
    done = subprocess.run(
        [*contend_command(), "record", "--duration", "0.5", "-o", str(good), "--", "sleep", "0.2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    archive = np.load(good)
    arrays = {k: archive[k] for k in archive.files}
    damaged = {"empty": b"", "truncated": good.read_bytes()[:5000]}
    variants = {
        "no-ts": {k: v for k, v in arrays.items() if k != "sched_switch/ts"},
        "no-prev": {k: v for k, v in arrays.items() if k != "sched_switch/prev_pid"},
        "short": {**arrays, "sched_switch/prev_pid": arrays["sched_switch/prev_pid"][:-1]},
    }
    for name, content in damaged.items():
        (tmp_path / f"{name}.session").write_bytes(content)
    for name, columns in variants.items():
        with (tmp_path / f"{name}.session").open("wb") as f:
            np.savez(f, **columns)
    for name in [*damaged, *variants]:
        done = subprocess.run(
            [*contend_command(), "report", str(tmp_path / f"{name}.session")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1 and done.stderr.count("\n") == 1, (name, done.stderr)
        assert "contend session" in done.stderr, (name, done.stderr)
    for flag in ("-o", "--perfetto", "--html"):
        done = subprocess.run(
            [*contend_command(), "report", str(good), flag, str(good)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2 and "is also the input" in done.stderr, done.stderr
    assert np.load(good).files == archive.files  # untouched


@pytest.mark.parametrize("command", ["record", "diagnose"])
def test_kill_int_from_a_script_stops_record_and_diagnose_cleanly(
    root: None, command: str, tmp_path: Path
) -> None:
    """`setsid contend record ... &` then `kill -INT`: the run stops as on Ctrl-C, and
    what it watched until then is written, not lost."""
    loop = "import os, time\nwhile True:\n    os.getsid(0)\n    time.sleep(0.01)\n"
    target = subprocess.Popen([sys.executable, "-c", loop])
    out_file = tmp_path / ("s.contend" if command == "record" else "d.json")
    args = ["record", "-o", str(out_file)] if command == "record" else [
        "diagnose", "--backend", "tracefs", "--duration", "60", "--format", "json",
        "-o", str(out_file)]  # fmt: skip
    proc = subprocess.Popen(
        [*contend_command(), *args, "--pid", str(target.pid)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **LIKE_SETSID_BACKGROUND,
    )  # fmt: skip
    name = f"contend-{proc.pid}"
    try:
        _wait_for_instance(name)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        target.kill()
        target.wait()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert name not in ours()
    if command == "record":
        done = subprocess.run(
            [*contend_command(), "report", str(out_file), "--format", "json"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        calls = [r for r in json.loads(done.stdout)["syscalls"] if r["syscall"] == "getsid"]
        assert calls and 30 <= calls[0]["count"] <= 20000
    else:
        result = json.loads(out_file.read_text())
        assert result["target"].startswith(f"pid {target.pid} (python")
        assert 0.5 < result["duration_s"] < 30  # stopped by the signal, not at 60 s
        assert [p["pid"] for p in result["processes"]] == [target.pid]
