"""The procfs backend against the real kernel: children whose behaviour we know."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from conftest import busy_loop, need
from contend.collect.cgroups import detect_layout
from contend.collect.procfs import HeldFiles, ProcFS, parse_cpu_stat, parse_schedstat


def _child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )


def _step(proc: subprocess.Popen[str], expect: str) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == expect


def test_exact_syscw_count_of_known_writes() -> None:
    """1000 os.write calls plus the one that reports 'done': syscw grows by exactly 1001."""
    proc = _child(
        """
        import os, sys
        fd = os.open("/dev/null", os.O_WRONLY)
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        sys.stdin.readline()
        for _ in range(1000):
            os.write(fd, b"x")
        sys.stdout.write("done\\n"); sys.stdout.flush()
        sys.stdin.readline()
        """
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        fs = ProcFS()
        before = fs.io(proc.pid)
        _step(proc, "done")
        after = fs.io(proc.pid)
        assert before is not None and after is not None
        assert after.syscw - before.syscw == 1001
        # The child read exactly one line from stdin in between: one read() call.
        assert after.syscr - before.syscr == 1
    finally:
        proc.kill()
        proc.wait()


def test_busy_loop_cpu_time_and_voluntary_switches() -> None:
    """A child burns 0.4 s of CPU, then sleeps 200 times: schedstat, stat ticks, psutil
    and the voluntary switch count must all agree with that."""
    proc = _child(
        """
        import sys, time
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        sys.stdin.readline()
        end = time.thread_time() + 0.4
        while time.thread_time() < end:
            pass
        for _ in range(200):
            time.sleep(0.001)
        sys.stdout.write("done\\n"); sys.stdout.flush()
        sys.stdin.readline()
        """
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        fs = ProcFS()
        (before,) = list(fs.tasks([proc.pid]))
        _step(proc, "done")
        (after,) = list(fs.tasks([proc.pid]))
        assert before.key == after.key
        assert after.on_cpu_ns is not None and before.on_cpu_ns is not None
        on_cpu_s = (after.on_cpu_ns - before.on_cpu_ns) / 1e9
        assert 0.4 <= on_cpu_s < 0.6
        ticks_s = (
            after.utime_ticks + after.stime_ticks - before.utime_ticks - before.stime_ticks
        ) / 100
        assert abs(ticks_s - on_cpu_s) <= 0.05
        times = psutil.Process(proc.pid).cpu_times()
        assert abs((times.user + times.system) - after.on_cpu_ns / 1e9) <= 0.05
        voluntary = after.voluntary_switches - before.voluntary_switches
        assert 200 <= voluntary <= 230  # 200 sleeps + the stdin read + a few wakeups
        assert after.slices is not None and before.slices is not None
        assert after.slices - before.slices >= voluntary
        # Our figures are those of /proc/PID/status read directly.
        with open(f"/proc/{proc.pid}/task/{proc.pid}/status") as f:
            status = dict(line.split(":\t", 1) for line in f if ":\t" in line)
        assert int(status["voluntary_ctxt_switches"]) == after.voluntary_switches
    finally:
        proc.kill()
        proc.wait()


def test_threads_are_read_one_by_one_and_comm_is_exact() -> None:
    """Three threads, named with spaces and parentheses through prctl."""
    proc = _child(
        """
        import ctypes, sys, threading
        libc = ctypes.CDLL(None)
        libc.prctl(15, b"a) (b c", 0, 0, 0)
        stop = threading.Event()
        threads = [threading.Thread(target=stop.wait) for _ in range(2)]
        for t in threads: t.start()
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        sys.stdin.readline()
        stop.set()
        """
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        tasks = list(ProcFS().tasks([proc.pid]))
        assert len(tasks) == 3
        assert {t.pid for t in tasks} == {proc.pid}
        assert [t.comm for t in tasks] == ["a) (b c"] * 3
    finally:
        proc.kill()
        proc.wait()


def test_vanished_process_is_none_not_an_error() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    fs = ProcFS()
    assert list(fs.tasks([proc.pid])) == []
    assert fs.io(proc.pid) is None


def test_system_pressure_is_read() -> None:
    if not os.path.exists("/proc/pressure/cpu"):
        pytest.skip("kernel without PSI")
    a = ProcFS().system_pressure()
    time.sleep(0.05)
    b = ProcFS().system_pressure()
    assert a is not None and b is not None
    assert b.some_us >= a.some_us


def test_owner_of_a_thread_is_its_process() -> None:
    proc = _child(
        """
        import sys, threading
        stop = threading.Event()
        t = threading.Thread(target=stop.wait); t.start()
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        sys.stdin.readline()
        stop.set()
        """
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        fs = ProcFS()
        tids = fs.tids(proc.pid)
        assert len(tids) == 2
        comm = fs.stat(proc.pid).comm
        assert [fs.owner(t) for t in tids] == [(proc.pid, comm)] * 2
    finally:
        proc.kill()
        proc.wait()
    assert fs.owner(proc.pid) is None


def test_held_files_read_anew_and_follow_what_they_were_opened_on() -> None:
    """A held schedstat re-reads the current counters (pread at 0); once its thread has
    ended it is closed and the path opened afresh; a group removed and made again under
    the same path is read as the new group; past the budget nothing more is held."""
    need(os.geteuid() == 0, "needs root (makes a cgroup)")
    root = detect_layout().v2_root
    need(root is not None, "needs a cgroup2 hierarchy")
    files = HeldFiles(budget=3)
    fds_before = len(os.listdir("/proc/self/fd"))
    loop = busy_loop()
    path = f"/proc/{loop.pid}/task/{loop.pid}/schedstat"
    try:
        first = parse_schedstat(files.read(path))
        time.sleep(0.3)
        second = parse_schedstat(files.read(path))
        assert len(files) == 1
        # The same descriptor gives the counters of now: the loop ran meanwhile.
        assert second[0] - first[0] >= 0.1e9 and second[2] >= first[2]
    finally:
        loop.kill()
        loop.wait()
    with pytest.raises(FileNotFoundError):
        files.read(path)  # its thread is gone: the held file is dropped, the path is gone
    assert len(files) == 0
    group = root / f"contend-held-{os.getpid()}"
    group.mkdir()
    try:
        loop = busy_loop()
        (group / "cgroup.procs").write_text(str(loop.pid))
        time.sleep(0.3)
        loop.kill()
        loop.wait()
        used = parse_cpu_stat(files.read(f"{group}/cpu.stat")).usage_ns
        assert used is not None and used >= 0.1e9
        group.rmdir()
        group.mkdir()
        # The old group's descriptor fails (ENODEV); the path is read as the new group.
        assert parse_cpu_stat(files.read(f"{group}/cpu.stat")).usage_ns == 0
        assert len(files) == 1
        for name in ("cpu.pressure", "cgroup.procs", "cgroup.events"):
            files.read(f"{group}/{name}")
        assert len(files) == 3  # the budget: the fourth was opened and closed
        files.sweep()
        files.read(f"{group}/cpu.stat")
        files.sweep()  # only what was read since the last sweep stays open
        assert len(files) == 1
        kept = HeldFiles(idle_sweeps=2)
        kept.read(f"{group}/cpu.stat")
        kept.sweep()
        kept.sweep()
        assert len(kept) == 1  # read in one of the last 2 periods: kept
        kept.sweep()
        assert len(kept) == 0
        assert len(os.listdir("/proc/self/fd")) == fds_before + 1
        files.close()
        assert len(files) == 0 and len(os.listdir("/proc/self/fd")) == fds_before
    finally:
        files.close()
        group.rmdir()
