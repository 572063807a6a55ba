"""Where the time went: the analysis on built sessions with known answers, and the
scheduler-event program on the real kernel with workloads whose answer is known."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import need, quiet_cpu
from contend.analysis import breakdown as bd
from contend.collect import bpftrace as bt
from contend.lab.sandbox import Limits, Sandbox
from contend.model import BreakdownOccupant, SchedTimes, ThreadTime
from contend.monitors import TraceOptions, breakdown, build_program
from contend.target import Target

S = 1_000_000_000


def _times(*threads: ThreadTime, occupants: tuple[BreakdownOccupant, ...] = ()) -> SchedTimes:
    return SchedTimes(window_ns=10 * S, threads=threads, occupants=occupants)


def test_shares_add_up_and_runnable_is_split_by_occupant() -> None:
    app = ThreadTime(10, 10, "app", running_ns=2 * S, runnable_ns=6 * S,
                     sleeping_ns={"futex": S, "read": S // 2}, wall_ns=10 * S)  # fmt: skip
    occ = (
        BreakdownOccupant(0, "swapper/0", 3 * S, pid=0),
        BreakdownOccupant(21, "noise", 2 * S, pid=20),
        BreakdownOccupant(11, "app", S, pid=10),
    )
    b = bd.from_events(_times(app, occupants=occ), "app", throttling=True)
    got = {(s.state, s.detail): s.ns for s in b.shares}
    assert got == {
        ("running", ""): 2 * S,
        ("throttled", "by the CPU quota"): 3 * S,
        ("queued", "behind noise (PID 20)"): 2 * S,
        ("queued", "behind its own threads (app)"): S,
        ("sleeping", "futex"): S,
        ("sleeping", "read"): S // 2,
        ("unaccounted", ""): S // 2,
    }
    assert sum(s.pct for s in b.shares) == pytest.approx(100.0)
    causes = bd.causes(b, "app", bd.Context(quota_cpus=0.5, roles={20: "noise"}))
    assert [(c.kind, round(c.share_of_demand, 3)) for c in causes] == [
        ("quota", 0.375), ("neighbour", 0.25), ("own_threads", 0.125)
    ]  # fmt: skip
    assert causes[0].sentence == (
        "Runnable but throttled by the 0.5-CPU quota: 38% of the time app wanted a CPU "
        "(30% of its threads' wall time)."
    )
    assert causes[1].who == "the noise" and causes[1].pids == (20,)
    assert causes[1].sentence.startswith("Queued behind the noise (noise (PID 20)): 25%")


def test_idle_cpu_without_throttling_is_wakeup_latency() -> None:
    app = ThreadTime(10, 10, "app", S, S, {}, 2 * S)
    b = bd.from_events(_times(app, occupants=(BreakdownOccupant(0, "swapper/1", 5, pid=0),)), "app")
    assert [(s.state, s.ns) for s in b.shares] == [("running", S), ("wakeup", S)]
    assert [c.kind for c in bd.causes(b, "app")] == ["wakeup_latency"]


def test_small_causes_are_left_out_and_subsets_get_their_share() -> None:
    a = ThreadTime(10, 10, "a", 9 * S, S, {}, 10 * S)
    b_ = ThreadTime(30, 30, "b", 0, 3 * S, {"futex": 7 * S}, 10 * S)
    occ = (BreakdownOccupant(21, "big", 99, pid=20), BreakdownOccupant(22, "tiny", 1, pid=22))
    times = _times(a, b_, occupants=occ)
    whole = bd.from_events(times, "all")
    assert whole.wall_ns == 20 * S and whole.threads == 2
    assert [c.who for c in bd.causes(whole, "x")] == ["big (PID 20)"]  # tiny: 0.3%
    only_b = bd.from_events(times, "b", {30})
    assert only_b.total("queued") == 3 * S and only_b.total("running") == 0


def test_schedstat_breakdown_says_what_it_cannot_split() -> None:
    b = bd.from_schedstat([(10 * S, 2 * S, 3 * S), (10 * S, 0, 0)], "app")
    assert [(s.state, s.pct) for s in b.shares] == [
        ("running", 10.0), ("runnable", 15.0), ("sleeping", 75.0)
    ]  # fmt: skip
    assert "not split" in b.source
    assert [c.kind for c in bd.causes(b, "app")] == ["runnable_unsplit"]


# --- the real kernel ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel_tracing() -> None:
    need(os.geteuid() == 0, "needs root")
    need(shutil.which("bpftrace") is not None, "needs bpftrace (make install as root)")


def _trace(pids: tuple[int, ...], seconds: float) -> SchedTimes:
    tracer = bt.Bpftrace(build_program(TraceOptions(("breakdown",), Target(pids=pids))))
    tracer.start()
    time.sleep(seconds)
    times = breakdown.sched_times(tracer.stop())
    assert times is not None
    return times


def _busy(cpu: int | None = None, preexec: object = None) -> subprocess.Popen[bytes]:
    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if callable(preexec):
            preexec()

    return subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=setup)


@pytest.mark.timing
def test_a_busy_loop_waits_behind_its_pinned_neighbour(kernel_tracing: None) -> None:
    cpu = quiet_cpu()
    a, b = _busy(cpu), _busy(cpu)
    try:
        time.sleep(0.3)
        times = _trace((a.pid,), 3.0)
    finally:
        for p in (a, b):
            p.kill()
            p.wait()
    (t,) = times.threads
    assert t.pid == a.pid
    # A busy loop does not sleep; a page fault served from the VM's 9p root may block
    # it for a few ms (4 ms of 3 s under TCG), so allow 1% of the window.
    assert sum(t.sleeping_ns.values()) <= 0.01 * t.wall_ns, t.sleeping_ns
    # Everything is accounted for: running + runnable is the window, within 2%.
    assert (t.running_ns + t.runnable_ns) / t.wall_ns == pytest.approx(1.0, abs=0.02)
    # The neighbour was charged for most of the wait, by its tid (other tasks of the
    # machine take their turns on that CPU too), and the two loops shared it evenly;
    # the charges add up to the thread's runnable time.
    charged = {o.tid: o.wait_ns for o in times.occupants}
    assert max(charged, key=lambda tid: charged[tid]) == b.pid
    assert charged[b.pid] >= 0.6 * t.runnable_ns
    assert 0.4 <= t.running_ns / (t.running_ns + charged[b.pid]) <= 0.6
    # (Waits in flight at the window's two ends are where they may part: 3.6% under TCG.)
    assert sum(charged.values()) == pytest.approx(t.runnable_ns, rel=0.05)


@pytest.mark.timing
def test_a_quota_shows_as_throttled_time(kernel_tracing: None) -> None:
    need(os.path.isdir("/sys/fs/cgroup"), "needs cgroups")
    with Sandbox(Limits(0.2, None)) as sandbox:
        p = _busy(preexec=sandbox.join_function())
        try:
            time.sleep(0.5)
            times = _trace((p.pid,), 3.0)
        finally:
            p.kill()
            p.wait()
    b = bd.from_events(times, "loop", throttling=True)
    demand = b.total("running") + b.total("throttled") + b.total("queued") + b.total("wakeup")
    # 0.2 CPU: it runs about 20% of the time and is throttled for most of the rest (80%
    # alone; the machine's other busy tasks take some of it as "queued behind").
    assert 0.15 <= b.total("running") / demand <= 0.25
    assert b.total("throttled") / demand >= 0.45
    assert bd.causes(b, "loop", bd.Context(quota_cpus=0.2))[0].kind == "quota"


def _wait_in_syscall(pid: int, names: tuple[str, ...], timeout_s: float = 60) -> None:
    """Until `pid` is blocked in one of the syscalls `names` (/proc/PID/syscall's first
    field is the number of the syscall it is in)."""
    from contend.monitors.syscalls import syscall_name

    deadline = time.monotonic() + timeout_s
    while True:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
        if fields and fields[0].isdigit() and syscall_name(int(fields[0])) in names:
            time.sleep(0.05)
            return
        assert time.monotonic() < deadline, f"pid {pid} never blocked in {names}: {fields}"
        time.sleep(0.02)


@pytest.mark.timing
def test_sleeps_are_charged_to_the_syscall(kernel_tracing: None) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    reader = subprocess.Popen([sys.executable, "-c", "import os; r, w = os.pipe(); os.read(r, 1)"])
    try:
        # Both asleep before the trace starts (seeded from /proc): waited for in
        # /proc/PID/syscall, not for a fixed time (a slow machine starts Python in > 1 s).
        _wait_in_syscall(sleeper.pid, ("clock_nanosleep", "nanosleep"))
        _wait_in_syscall(reader.pid, ("read",))
        times = _trace((sleeper.pid, reader.pid), 2.0)
    finally:
        for p in (sleeper, reader):
            p.kill()
            p.wait()
    by_pid = {t.pid: t for t in times.threads}
    s, r = by_pid[sleeper.pid], by_pid[reader.pid]
    assert s.sleeping_ns.get("clock_nanosleep", 0) / s.wall_ns >= 0.99
    assert r.sleeping_ns.get("read", 0) / r.wall_ns >= 0.99
