"""The tracefs backend's time breakdown (monitors/tracefs_breakdown.py): exact numbers on
hand-made captures (fake clock, in ns), then two real workloads (root, tracefs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import need, quiet_cpu
from contend.collect import tracefs as tf
from contend.model import HistBucket, SchedTimes, ThreadTime
from contend.monitors import TraceOptions, tracefs_trace
from contend.monitors import timeline as tl
from contend.monitors.syscalls import syscall_name
from contend.monitors.tracefs_breakdown import run_window, sched_times
from contend.target import Target

CLONE_THREAD = 0x00010000
S, D, DEAD, RUNNABLE = 0x1, 0x2, 0x10, 0x0
READ, WRITE, POLL, FUTEX, CLOCK_NANOSLEEP = 0, 1, 7, 202, 230  # x86_64


class Events:
    """A capture built event by event, as the decoder's columns (ts, cpu, common_pid,
    the event's fields)."""

    def __init__(self, names: dict[int, str]) -> None:
        self.names = names
        self.rows: dict[str, list[dict[str, Any]]] = {}

    def add(self, event: str, ts: int, cpu: int, by: int, **fields: Any) -> Events:
        self.rows.setdefault(event, []).append({"ts": ts, "cpu": cpu, "common_pid": by, **fields})
        return self

    def switch(self, ts: int, cpu: int, prev: int, state: int, nxt: int) -> Events:
        return self.add(
            "sched_switch", ts, cpu, prev, prev_pid=prev, prev_state=state, next_pid=nxt,
            prev_comm=self.names[prev].encode(), next_comm=self.names[nxt].encode(),
        )  # fmt: skip

    def wakeup(self, ts: int, tid: int, cpu: int, by: int = 0, new: bool = False) -> Events:
        name = "sched_wakeup_new" if new else "sched_wakeup"
        return self.add(name, ts, cpu, by, pid=tid, target_cpu=cpu)

    def enter(self, ts: int, tid: int, nr: int) -> Events:
        return self.add("sys_enter", ts, 0, tid, id=nr, **{"args[0]": 0})

    def exit(self, ts: int, tid: int, nr: int) -> Events:
        return self.add("sys_exit", ts, 0, tid, id=nr, ret=0)

    def capture(self) -> tf.Capture:
        events = {}
        for event, rows in self.rows.items():
            rows = sorted(rows, key=lambda r: r["ts"])
            cols = {}
            for key in rows[0]:
                values = [r[key] for r in rows]
                if key.endswith("comm"):
                    cols[key] = np.array(values, dtype="S16")
                elif key == "cpu":
                    cols[key] = np.array(values, dtype=np.int16)
                elif key.endswith("pid"):
                    cols[key] = np.array(values, dtype=np.int32)
                else:
                    cols[key] = np.array(values, dtype=np.int64)
            events[event] = cols
        return tf.Capture(events, {0: 0, 1: 0})


def analysed(
    events: Events, tgid: dict[int, int], monitors: tuple[str, ...] = ("syscalls", "cpu", "process")
) -> tracefs_trace.TracefsRun:
    tasks = tl.Tasks(tgid=dict(tgid), targets=set(tgid))
    return tracefs_trace.analyse(monitors, events.capture(), tasks, {}, "x86_64")


def by_tid(times: SchedTimes) -> dict[int, ThreadTime]:
    return {t.tid: t for t in times.threads}


A, B, N, HOG = 10, 11, 12, 20  # A and B: threads of process 10; N: B's thread, born and gone
NAMES = {0: "swapper/0", A: "a", B: "b", N: "n", HOG: "hog"}


def two_threads_and_a_hog() -> Events:
    """CPU 0, 0-10000 ns. B runs since before the start (its first event: returning from
    read at 0); A sleeps since before it, in futex (its first syscall event returns from
    it), until woken at 500. A preempts B at 1000, sleeps in clock_nanosleep at 2200
    (the hog runs, B waits), B runs at 3000, sleeps outside any syscall at 3500, is woken
    at 4000 and runs at 4600 after the hog, whose switch from idle went unrecorded. B
    starts thread N at 5000 (woken at 5010), which runs 5500-6100 and exits. A, woken at
    7000, runs 8000-9000, then the hog, then B from 9500 to the end while A waits."""
    ev = Events(NAMES)
    ev.exit(0, B, READ)
    ev.wakeup(500, A, 0, by=B)
    ev.switch(1000, 0, B, RUNNABLE, A)
    ev.exit(2000, A, FUTEX).enter(2100, A, CLOCK_NANOSLEEP)
    ev.switch(2200, 0, A, S, HOG)
    ev.switch(3000, 0, HOG, RUNNABLE, B)
    ev.switch(3500, 0, B, D, 0)
    ev.wakeup(4000, B, 0)
    ev.switch(4600, 0, HOG, RUNNABLE, B)  # idle -> hog at 4200 is not recorded (no target)
    ev.add("task_newtask", 5000, 0, B, pid=N, comm=b"n", clone_flags=CLONE_THREAD | 0x100)
    ev.wakeup(5010, N, 0, by=B, new=True)
    ev.switch(5500, 0, B, RUNNABLE, N)
    ev.add("sched_process_exit", 6000, 0, N, pid=N, comm=b"n")
    ev.switch(6100, 0, N, DEAD, B)
    ev.wakeup(7000, A, 0)
    ev.switch(8000, 0, B, RUNNABLE, A)
    ev.switch(9000, 0, A, RUNNABLE, HOG)
    ev.switch(9500, 0, HOG, RUNNABLE, B)
    ev.enter(10000, B, WRITE)
    return ev


def test_running_runnable_sleeping_and_who_held_the_cpu() -> None:
    run = analysed(two_threads_and_a_hog(), {A: 10, B: 10})
    times = sched_times(run)
    assert times is not None
    assert times.window_ns == 10000 and run_window(run) == (0, 10000)
    assert by_tid(times) == {
        # Slices 1000-2200, 8000-9000; waits 500-1000, 7000-8000 and 9000-10000 (still
        # waiting at the end); asleep 0-500 in futex and 2200-7000 in clock_nanosleep.
        A: ThreadTime(10, A, "a", 2200, 2500, {"clock_nanosleep": 4800, "futex": 500}, 10000),
        # Slices 0-1000 (running at the start), 3000-3500, 4600-5500, 6100-8000 and
        # 9500-10000 (at the end); waits 1000-3000, 4000-4600, 5500-6100, 8000-9500.
        B: ThreadTime(10, B, "b", 4800, 4700, {"(no syscall)": 500}, 10000),
        N: ThreadTime(10, N, "n", 600, 490, {}, 1100),  # born at 5000, gone at 6100
    }
    for t in times.threads:
        assert t.running_ns + t.runnable_ns + sum(t.sleeping_ns.values()) <= t.wall_ns
    assert [(o.tid, o.comm, o.wait_ns, o.pid) for o in times.occupants] == [
        (B, "b", 500 + 490 + 1000 + 500, 10),  # behind B: A, N, A, A
        (A, "a", 1200 + 1000, 10),  # B behind A twice
        (HOG, "hog", 800 + 2 * 500, 20),  # B, then A and B together 9000-9500
        (0, "idle", 600, 0),  # 4000-4600: the hog's hold has no recorded start
        (N, "n", 600, 10),
    ]
    assert sum(o.wait_ns for o in times.occupants) == sum(t.runnable_ns for t in times.threads)
    # Whole waits and slices only (not those cut by the window's edges), in microseconds.
    assert times.run_queue_us == (HistBucket(0, 0, 4), HistBucket(1, 1, 2), HistBucket(2, 3, 1))
    assert times.slice_us == (HistBucket(0, 0, 3), HistBucket(1, 1, 3))


def test_only_the_chosen_processes_wait_and_a_traced_hog_is_a_holder() -> None:
    """The hog traced too (its slice from idle is then inferred, 3500-4600) but only
    process 10 chosen: the hog is not a thread of the breakdown, and B's wait 4000-4600
    is charged to it instead of idle."""
    run = analysed(two_threads_and_a_hog(), {A: 10, B: 10, HOG: HOG})
    times = sched_times(run, pids={10})
    assert times is not None
    assert sorted(by_tid(times)) == [A, B, N]
    assert by_tid(times)[A].runnable_ns == 2500 and by_tid(times)[B].runnable_ns == 4700
    assert [(o.tid, o.wait_ns, o.pid) for o in times.occupants] == [
        (B, 2490, 10),
        (HOG, 800 + 1000 + 600, HOG),
        (A, 2200, 10),
        (N, 600, 10),
    ]


W, SL, Q, HOG2 = 30, 31, 32, 40  # threads of process 30; Q has no event at all
NAMES2 = {0: "swapper", W: "w", SL: "s", Q: "q", HOG2: "hog"}


def edges_on_two_cpus() -> Events:
    """CPU 0: W waits since before the first event (its first is a switch-in, at 300,
    from the hog) and runs until it sleeps in poll at 800. CPU 1: SL sleeps since before,
    is woken at 1000, runs from then (the switch from idle unrecorded, as this VM's
    kernel does on CPU 1), returns from futex at 1100 and sleeps in read at 1500."""
    ev = Events(NAMES2)
    ev.switch(300, 0, HOG2, RUNNABLE, W)
    ev.enter(700, W, POLL)
    ev.switch(800, 0, W, S, 0)
    ev.wakeup(1000, SL, 1)
    ev.exit(1100, SL, FUTEX).enter(1200, SL, READ)
    ev.switch(1500, 1, SL, D, 0)
    return ev


def test_states_open_at_the_edges_of_a_given_window() -> None:
    run = analysed(edges_on_two_cpus(), {W: 30, SL: 30, Q: 30})
    assert run.slices is not None and run.slices.inferred == 1  # SL's, from its wakeup
    times = sched_times(run, window=(0, 2000), asleep={Q: CLOCK_NANOSLEEP})
    assert times is not None and times.window_ns == 2000
    assert by_tid(times) == {
        W: ThreadTime(30, W, "w", 500, 300, {"poll": 1200}, 2000),
        SL: ThreadTime(30, SL, "s", 500, 0, {"futex": 1000, "read": 500}, 2000),
        # No name of its own known: its process's.
        Q: ThreadTime(30, Q, "w", 0, 0, {"clock_nanosleep": 2000}, 2000),
    }
    # W's wait since the start: behind the hog, CPU 0's first holder.
    assert [(o.tid, o.wait_ns, o.pid) for o in times.occupants] == [(HOG2, 300, HOG2)]
    assert times.run_queue_us == (HistBucket(0, 0, 1),)  # SL's, 0 (inferred); W's is cut
    assert times.slice_us == (HistBucket(0, 0, 2),)
    # The default window: the first to the last event. Q, silent, is not known without
    # `asleep`; W's sleep ends with the window.
    times = sched_times(run)
    assert times is not None and times.window_ns == 1500 - 300
    assert by_tid(times)[W] == ThreadTime(30, W, "w", 500, 0, {"poll": 700}, 1200)
    assert sorted(by_tid(times)) == [W, SL]


def test_sleeps_where_syscalls_were_not_traced_are_unknown_and_no_cpu_monitor_is_none() -> None:
    ev = edges_on_two_cpus()
    del ev.rows["sys_enter"], ev.rows["sys_exit"]
    times = sched_times(analysed(ev, {W: 30, SL: 30}, ("cpu",)), window=(0, 2000))
    assert times is not None
    assert {t.tid: t.sleeping_ns for t in times.threads} == {
        W: {"unknown": 1200},
        SL: {"unknown": 1500},
    }
    assert sched_times(analysed(ev, {W: 30, SL: 30}, ("syscalls",))) is None


def simulated(seed: int, hi: int = 14001) -> tuple[Events, dict[str, Any]]:
    """A scheduler on two CPUs (a run queue each, no migration): three target threads and
    two other tasks are preempted, sleep (in a syscall or not), are woken onto a CPU and
    picked from its queue, an idle CPU picking a woken task some time later. Every event
    inside [lo, hi] is recorded (the tasks' states at lo come from before it); the truth
    is each state's time inside [lo, hi], and who held the CPU a target waited on."""
    rng = np.random.default_rng(seed)
    targets, others = [101, 102, 103], [201, 202]
    names = {0: "swapper", 101: "t1", 102: "t2", 103: "t3", 201: "h1", 202: "h2"}
    ev = Events(names)
    current = {0: 0, 1: 0}
    queue: dict[int, list[int]] = {0: [], 1: []}
    state: dict[int, tuple[str, int]] = {}
    for t in targets + others:
        c = int(rng.integers(2))
        queue[c].append(t)
        state[t] = ("wait", c)
    in_call: dict[int, int] = {}
    lo = 2001
    truth: dict[str, Any] = {"lo": lo, "hi": hi, "asleep": {}}
    times = {t: {"running": 0, "runnable": 0, "sleeping": {}} for t in targets}
    behind: dict[int, int] = {}
    now = 0

    def record(ts: int) -> bool:
        return lo <= ts <= hi

    def switch(c: int, prev: int, prev_state: int, nxt: int) -> None:
        current[c] = nxt
        if nxt:
            state[nxt] = ("run", c)
        if record(now):
            ev.switch(now, c, prev, prev_state, nxt)
            if nxt in in_call:
                ev.exit(now, nxt, in_call[nxt])
        in_call.pop(nxt, None)

    while now < hi:
        dt = 2 * int(rng.integers(1, 30))
        a, b = max(now, lo), min(now + dt, hi)
        if now <= lo < now + dt:
            truth["asleep"] = {
                t: s[1] for t, s in state.items() if s[0] == "sleep" and t in targets
            }
        if b > a:
            for t in targets:
                kind, where = state[t]
                if kind == "run":
                    times[t]["running"] += b - a
                elif kind == "wait":
                    times[t]["runnable"] += b - a
                    behind[current[where]] = behind.get(current[where], 0) + b - a
                else:
                    name = syscall_name(where, "x86_64") if where >= 0 else "(no syscall)"
                    times[t]["sleeping"][name] = times[t]["sleeping"].get(name, 0) + b - a
        now += dt
        choices = [("switch", c) for c in (0, 1) if queue[c]]
        choices += [("sleep", c) for c in (0, 1) if current[c]]
        choices += [("wake", t) for t, s in state.items() if s[0] == "sleep"]
        action, arg = choices[int(rng.integers(len(choices)))]
        if action == "switch":
            prev = current[arg]
            if prev:
                queue[arg].append(prev)
                state[prev] = ("wait", arg)
            switch(arg, prev, RUNNABLE, queue[arg].pop(0))
        elif action == "sleep":
            t = current[arg]
            nr = [FUTEX, READ, POLL, -1][int(rng.integers(4))] if t in targets else -1
            if nr >= 0:
                in_call[t] = nr
                if record(now - 1):
                    ev.enter(now - 1, t, nr)
            state[t] = ("sleep", nr)
            switch(arg, t, S, queue[arg].pop(0) if queue[arg] else 0)
        else:
            c = int(rng.integers(2))
            queue[c].append(arg)
            state[arg] = ("wait", c)
            if record(now):
                ev.wakeup(now, arg, c)
    truth["threads"] = times
    truth["behind"] = {t: ns for t, ns in behind.items() if ns}
    return ev, truth


@pytest.mark.parametrize("seed", range(8))
def test_a_simulated_scheduler_is_told_exactly(seed: int) -> None:
    ev, truth = simulated(seed)
    run = analysed(ev, dict.fromkeys((101, 102, 103), 100))
    lo, hi = truth["lo"], truth["hi"]
    times = sched_times(run, window=(lo, hi), asleep=truth["asleep"])
    assert times is not None
    got = {
        t.tid: {"running": t.running_ns, "runnable": t.runnable_ns, "sleeping": t.sleeping_ns}
        for t in times.threads
    }
    assert got == truth["threads"]
    assert all(t.wall_ns == hi - lo for t in times.threads)
    assert {o.tid: o.wait_ns for o in times.occupants} == truth["behind"]


# --- the real kernel (root, tracefs): not run beside another kernel test ------------------


@pytest.fixture
def root_tracefs() -> None:
    need(os.geteuid() == 0, "needs root")
    need(tf.TRACEFS.is_dir(), "needs tracefs")


def _pinned_loop(cpu: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "while True: pass"],
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )


def _syscall_now(pid: int) -> int:
    """The syscall a sleeping process is in (/proc/PID/syscall), -1 for none."""
    first = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    return -1 if first == "running" else int(first)


@pytest.mark.timing
@pytest.mark.kernel
def test_a_loop_sharing_a_cpu_waits_behind_the_other(root_tracefs: None) -> None:
    cpu = quiet_cpu()
    a, b = _pinned_loop(cpu), _pinned_loop(cpu)
    try:
        time.sleep(0.5)
        run = tracefs_trace.run_tracefs(
            TraceOptions(("syscalls", "cpu", "process"), Target(pids=(a.pid,)), 3.0)
        )
    finally:
        for p in (a, b):
            p.kill()
            p.wait()
    times = sched_times(run)
    assert times is not None
    mine = by_tid(times)[a.pid]
    assert mine.wall_ns >= 0.9 * 3e9 and mine.wall_ns == times.window_ns
    assert abs(mine.running_ns + mine.runnable_ns - mine.wall_ns) <= 0.02 * mine.wall_ns, mine
    assert 0.3 <= mine.running_ns / mine.wall_ns <= 0.7, mine
    top = times.occupants[0]
    assert top.pid == b.pid and top.wait_ns >= 0.6 * mine.runnable_ns, times.occupants
    assert sum(o.wait_ns for o in times.occupants) == sum(t.runnable_ns for t in times.threads)


@pytest.mark.kernel
def test_sleepers_sleep_in_clock_nanosleep(root_tracefs: None) -> None:
    """`sleep 30` makes no event while traced (its state at the start comes from /proc, as
    the caller gives it); a Python loop of time.sleep(0.1) wakes 20 times."""
    quiet = subprocess.Popen(["sleep", "30"])
    ticking = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.1)"])
    try:
        time.sleep(0.5)
        asleep = {quiet.pid: _syscall_now(quiet.pid)}
        run = tracefs_trace.run_tracefs(
            TraceOptions(("syscalls", "cpu", "process"), Target(pids=(quiet.pid, ticking.pid)), 2.0)
        )
    finally:
        for p in (quiet, ticking):
            p.kill()
            p.wait()
    times = sched_times(run, asleep=asleep)
    assert times is not None and times.window_ns >= 1.5e9
    threads = by_tid(times)
    for pid in (quiet.pid, ticking.pid):
        t = threads[pid]
        assert t.wall_ns == times.window_ns
        assert t.sleeping_ns.get("clock_nanosleep", 0) >= 0.99 * t.wall_ns, t
