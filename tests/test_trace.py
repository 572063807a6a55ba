"""contend trace on bpftrace, for real: exact counts of programs whose behaviour we know."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import LIKE_SETSID_BACKGROUND, contend_command, need, pgrep, quiet_cpu
from contend.collect import bpftrace as bt
from contend.collect.procfs import ProcFS
from contend.monitors import MONITORS, TraceOptions, build_program
from contend.monitors.syscalls import syscall_name
from contend.target import Target

KNOWN = textwrap.dedent(
    """
    import os, sys, threading
    fd = os.open("/dev/null", os.O_WRONLY)
    for _ in range(1234):
        os.getsid(0)
    for _ in range(500):
        os.write(fd, b"x" * 37)
    for code in (3, 5, 7):
        pid = os.fork()
        if pid == 0:
            os._exit(code)
        os.waitpid(pid, 0)
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), 9)
    os.waitpid(pid, 0)
    threads = [threading.Thread(target=lambda: None) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sys.exit(42)
    """
)


@pytest.fixture(scope="module")
def kernel_tracing() -> None:
    need(os.geteuid() == 0, "needs root")
    need(shutil.which("bpftrace") is not None, "needs bpftrace (make install as root)")


def trace_json(*args: str, timeout: float = 120) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [*contend_command(), "trace", "--format", "json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON (rc {done.returncode}): {done.stderr}")
    return done.returncode, result, done.stderr


@pytest.fixture(scope="module")
def known_run(kernel_tracing: None) -> tuple[int, dict[str, Any]]:
    rc, result, _ = trace_json("all", "--", sys.executable, "-c", KNOWN)
    return rc, result


def test_command_exit_status_is_ours(known_run: tuple[int, dict[str, Any]]) -> None:
    rc, result = known_run
    assert rc == 42
    assert result["exit_status"] == 42
    assert result["schema"] == "contend.trace/1" and result["backend"] == "bpftrace"
    assert result["lost_events"] == 0


def _main_pid(result: dict[str, Any]) -> int:
    (pid,) = {r["pid"] for r in result["syscalls"] if r["syscall"] == "getsid"}
    return int(pid)


def test_exact_syscall_counts(known_run: tuple[int, dict[str, Any]]) -> None:
    _, result = known_run
    pid = _main_pid(result)
    rows = {r["syscall"]: r for r in result["syscalls"] if r["pid"] == pid}
    assert rows["getsid"]["count"] == 1234
    assert rows["getsid"]["errors"] == 0
    assert rows["getsid"]["blocking"] is False
    assert rows["getsid"]["avg_ns"] > 0 and rows["getsid"]["max_ns"] >= rows["getsid"]["avg_ns"]
    assert rows["exit_group"]["count"] == 1  # counted at entry: it never returns
    assert rows["wait4"]["blocking"] is True
    assert rows["wait4"]["count"] == 4


def test_exact_io_counts_and_bytes(known_run: tuple[int, dict[str, Any]]) -> None:
    _, result = known_run
    pid = _main_pid(result)
    devnull = [f for f in result["files"] if f["pid"] == pid and f["path"] == "/dev/null"]
    by_op = {f["op"]: f for f in devnull}
    assert by_op["write"]["count"] == 500
    assert by_op["write"]["bytes"] == 500 * 37
    assert by_op["openat"]["count"] == 1


def test_process_lifecycle(known_run: tuple[int, dict[str, Any]]) -> None:
    _, result = known_run
    pid = _main_pid(result)
    events = result["process"]
    forks = [e for e in events if e["event"] == "fork" and e["ppid"] == pid]
    assert len(forks) == 4
    children = {e["pid"] for e in forks}
    exits = {
        e["pid"]: e
        for e in events
        if e["event"] == "exit" and e["pid"] in children and e["pid"] == e["tid"]
    }
    assert sorted((e["exit_code"], e["signal"]) for e in exits.values()) == [
        (0, 9),
        (3, 0),
        (5, 0),
        (7, 0),
    ]
    threads = [e for e in events if e["event"] == "thread" and e["pid"] == pid]
    assert len(threads) == 4
    main_exit = [e for e in events if e["event"] == "exit" and e["pid"] == pid and e["tid"] == pid]
    assert [(e["exit_code"], e["signal"]) for e in main_exit] == [(42, 0)]
    summary = {r["pid"]: r["syscalls"] for r in result["process_syscalls"]}
    assert summary[pid] > 1234 + 500


def test_text_output_has_the_original_blocks(kernel_tracing: None) -> None:
    done = subprocess.run(
        [
            *contend_command(),
            "trace",
            "all",
            "--",
            sys.executable,
            "-c",
            "import os; os.write(1, b'hi\\n')",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for block in ("=== System Calls Summary ===", "=== Average Execution Time (ns) ===",
                  "=== Process Activity Summary ===", "=== I/O Operations Summary ===",
                  "=== CPU Scheduling Summary ==="):  # fmt: skip
        assert block in done.stdout
    assert "hi\n" in done.stdout


def _busy_pinned(cpu: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "while True: pass"],
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )


@pytest.mark.parametrize("monitors", [("cpu",), ("all",)])
def test_the_whole_system_is_traced_when_no_target_is_given(
    kernel_tracing: None, monitors: tuple[str, ...]
) -> None:
    """No target: the programs' predicate is `1`, which bpftrace 0.17 compiled into code
    the verifier rejected for sched_switch (a compile check does not run the verifier)."""
    loop = _busy_pinned(1)
    try:
        time.sleep(0.3)
        rc, result, err = trace_json(*monitors, "--duration", "1.5")
    finally:
        loop.kill()
        loop.wait()
    assert rc == 0, err
    assert "no target given: the whole system was traced" in result["notes"]
    row = next(r for r in result["cpu"] if r["pid"] == loop.pid)
    # The loop shares CPU 1 with the tracer itself (every syscall of the machine with
    # `all`): 28% of the window seen once, about 100% with cpu alone.
    assert row["on_cpu_ns"] >= 0.15 * result["duration_s"] * 1e9 and row["slices"] >= 1, row
    assert len({r["pid"] for r in result["cpu"]}) >= 3


# Not in `make test-loaded` for now: beside its busy loop, 2 of 7 runs on 2026-12-03 took
# 36 s and `trace cpu` printed no row at all for the two loops (bpftrace's start, starved
# on both CPUs, then saw none of their switches). An open bug, in issue 13's note; the
# test runs unloaded in `make test` and in the VM.
def test_two_pinned_busy_loops_share_one_cpu(kernel_tracing: None) -> None:
    cpu = quiet_cpu()
    procs = [_busy_pinned(cpu), _busy_pinned(cpu)]
    fs = ProcFS()
    try:
        time.sleep(0.5)
        before = {p.pid: next(iter(fs.tasks([p.pid]))) for p in procs}
        rc, result, err = trace_json(
            "cpu", "--pid", str(procs[0].pid), "--pid", str(procs[1].pid), "--duration", "3"
        )
        after = {p.pid: next(iter(fs.tasks([p.pid]))) for p in procs}
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert rc == 0, err
    rows = {r["pid"]: r for r in result["cpu"] if r["tid"]}
    total = sum(r["on_cpu_ns"] for r in rows.values())
    for p in procs:
        share = rows[p.pid]["on_cpu_ns"] / total
        assert 0.45 <= share <= 0.55, share
        # The trace window lies inside the schedstat window: compare per-second rates.
        b, a = before[p.pid], after[p.pid]
        assert a.slices is not None and b.slices is not None
        assert a.run_queue_wait_ns is not None and b.run_queue_wait_ns is not None
        assert a.on_cpu_ns is not None and b.on_cpu_ns is not None
        sched_slices = a.slices - b.slices
        sched_wait = a.run_queue_wait_ns - b.run_queue_wait_ns
        sched_run = a.on_cpu_ns - b.on_cpu_ns
        ours = rows[p.pid]
        # Slice length and wait per slice agree with the kernel's own accounting.
        assert ours["on_cpu_ns"] / ours["slices"] == pytest.approx(
            sched_run / sched_slices, rel=0.10
        )
        rq = ours["run_queue_latency"]
        assert rq["avg_ns"] == pytest.approx(sched_wait / sched_slices, rel=0.10)
        assert ours["involuntary_switches"] >= 0.9 * ours["slices"]
    assert result["fairness_index"] > 0.99


@pytest.mark.parametrize("monitors", [("syscalls",), ("cpu",), ("process",), ("io",), MONITORS])
@pytest.mark.parametrize(
    "target",
    [
        Target(pids=(1, 2)),
        Target(comm='x"; exit(); //'),
        Target(command=("true",)),
        Target(),
        Target(cgroup=Path("/sys/fs/cgroup/unified"), cgroup_id=1),
    ],
    ids=["pid", "comm", "command", "system", "cgroup"],
)
def test_every_generated_program_compiles(
    kernel_tracing: None, monitors: tuple[str, ...], target: Target
) -> None:
    program = build_program(
        TraceOptions(monitors, target), initial_pids=(1,) if target.command else ()
    )
    ok, errors = bt.compile_check(program)
    assert ok, errors + "\n" + program.text()


def test_comm_is_a_parameter_never_code(kernel_tracing: None) -> None:
    hostile = 'x"; exit(); //'
    program = build_program(
        TraceOptions(("syscalls", "cpu", "process", "io"), Target(comm=hostile))
    )
    assert hostile not in program.text() and "exit();" not in program.text()
    assert program.predicate.positional == (hostile,)
    rc, result, err = trace_json("syscalls", "--comm", hostile, "--duration", "0.5")
    assert rc == 0, err
    assert result["syscalls"] == []  # matched literally: no task has that name
    done = subprocess.run(
        [*contend_command(), "trace", "syscalls", "--comm", "a" * 16],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "longer than 15 bytes" in done.stderr


def test_a_non_ascii_name_comes_back_as_itself(kernel_tracing: None, tmp_path: Path) -> None:
    """bpftrace 0.17's JSON writes bytes >= 0x80 as "\\uffffffc3": read back as UTF-8."""
    named = tmp_path / "héllo"
    named.symlink_to(sys.executable)
    proc = subprocess.Popen(
        [str(named), "-c", "import os, time\nfor _ in range(1000):\n    os.getsid(0)\n"
         "    time.sleep(0.01)\n"],
    )  # fmt: skip
    try:
        rc, result, err = trace_json("syscalls", "--comm", "héllo", "--duration", "1.5")
    finally:
        proc.kill()
        proc.wait()
    assert rc == 0, err
    rows = [r for r in result["syscalls"] if r["syscall"] == "getsid"]
    assert [(r["comm"], r["pid"]) for r in rows] == [("héllo", proc.pid)]
    assert rows[0]["count"] >= 50


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_no_bpftrace_outlives_contend(kernel_tracing: None, sig: int) -> None:
    assert pgrep("bpftrace") == []
    sleeper = subprocess.Popen(["sleep", "60"])
    proc = subprocess.Popen(
        [*contend_command(), "trace", "syscalls", "--pid", str(sleeper.pid), "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **LIKE_SETSID_BACKGROUND,
    )
    try:
        deadline = time.monotonic() + 60
        while not pgrep("bpftrace") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # past the attach
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        sleeper.kill()
        sleeper.wait()
    if sig == signal.SIGKILL:
        assert proc.returncode == -9
    else:
        assert proc.returncode == 0, err
        result = json.loads(out)
        assert "stopped by a signal before the end" in result["notes"]
    deadline = time.monotonic() + 5
    while pgrep("bpftrace") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pgrep("bpftrace") == []


def test_a_bpftrace_that_does_not_end_in_time_is_killed_and_said(kernel_tracing: None) -> None:
    # 1 ms after SIGINT is too soon for bpftrace to print its maps and detach: it is
    # killed, the output says so, and its process is gone with its programs.
    tracer = bt.Bpftrace('BEGIN { printf("contend-ready\\n"); }\n'
                         "tracepoint:raw_syscalls:sys_enter { @n = count(); }\n")  # fmt: skip
    tracer.start()
    pid = tracer.pid
    assert pid is not None and tracer.output.attached_probes == 2
    out = tracer.stop(timeout_s=0.001, working_cap_s=0.001)
    assert out.killed_after_s is not None and out.killed_after_s < 1 and tracer.proc is not None
    assert tracer.proc.returncode == -signal.SIGKILL
    assert "@n" not in out.maps  # what it prints at its exit never came
    assert not Path(f"/proc/{pid}").exists()


def test_a_bpftrace_given_time_while_it_works_is_killed_once_it_hangs(
    kernel_tracing: None,
) -> None:
    """A stopped bpftrace (SIGSTOP: it uses no CPU) is killed once it made no progress
    for IDLE_S, not kept for the `working_cap_s` a still-working one gets; a working one
    that needs more than `timeout_s` to detach and print is given it, and its maps come."""
    program = ('BEGIN { printf("contend-ready\\n"); }\n'
               "tracepoint:raw_syscalls:sys_enter { @n = count(); }\n")  # fmt: skip
    hung = bt.Bpftrace(program)
    hung.start()
    assert hung.pid is not None
    os.kill(hung.pid, signal.SIGSTOP)
    begun = time.monotonic()
    out = hung.stop(timeout_s=1, working_cap_s=60)
    killed = out.killed_after_s
    assert killed is not None and bt.IDLE_S <= killed < bt.IDLE_S + 3, killed
    assert time.monotonic() - begun < bt.IDLE_S + 5
    working = bt.Bpftrace(program)
    working.start()
    out = working.stop(timeout_s=0.001, working_cap_s=60)
    assert out.killed_after_s is None and working.proc is not None
    assert working.proc.returncode == 0 and "@n" in out.maps


def test_syscall_table_maps_known_numbers() -> None:
    assert [syscall_name(n, "x86_64") for n in (0, 1, 39, 59, 202, 231)] == [
        "read", "write", "getpid", "execve", "futex", "exit_group"]  # fmt: skip
    assert [syscall_name(n, "aarch64") for n in (63, 64, 172, 221, 98, 94)] == [
        "read", "write", "getpid", "execve", "futex", "exit_group"]  # fmt: skip
    assert syscall_name(99999, "x86_64") == "syscall_99999"


SAMPLED = textwrap.dedent(
    """
    import os, subprocess, sys, time
    time.sleep(0.3)
    child = subprocess.Popen(["sleep", "0.5"])
    fd = os.open("/dev/null", os.O_WRONLY)
    for _ in range(500):
        os.write(fd, b"x" * 10)
    end = time.thread_time() + 0.2
    while time.thread_time() < end:
        pass
    child.wait()
    time.sleep(0.3)
    sys.exit(7)
    """
)


def test_procfs_backend_without_a_tracer() -> None:
    """--backend procfs: sampled counts of a program whose behaviour we know."""
    rc, result, err = trace_json("all", "--backend", "procfs", "--", sys.executable, "-c", SAMPLED)
    assert rc == 7, err
    assert result["backend"] == "procfs" and result["exit_status"] == 7
    assert result["syscalls"] == []
    assert any("syscalls: unavailable on procfs" in n for n in result["notes"])
    main = next(e["pid"] for e in result["process"] if e["event"] == "exit" and e["exit_code"] == 7)
    writes = {r["op"]: r for r in result["io"] if r["pid"] == main}["write-like"]
    assert 500 <= writes["count"] <= 505 and 5000 <= writes["bytes"] <= 5100
    cpu = {r["pid"]: r for r in result["cpu"] if r["tid"] == r["pid"]}
    assert 0.2e9 <= cpu[main]["on_cpu_ns"] <= 0.6e9
    assert cpu[main]["wakeups"] is None  # procfs cannot see them: null, not 0
    forks = [e for e in result["process"] if e["event"] == "fork" and e["ppid"] == main]
    assert [e["comm"] for e in forks] == ["sleep"]
    assert result["overhead"]["tracer_cpu_s"] < 1.0


def test_auto_falls_back_to_procfs_without_bpftrace(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a user without root sees: auto picks procfs and says why."""
    from contend import cli

    monkeypatch.setattr(bt, "available", lambda: (False, "bpftrace needs root"))
    rc = cli.main(
        [
            "trace",
            "cpu",
            "--format",
            "json",
            "--",
            sys.executable,
            "-c",
            "import time; time.sleep(0.3)",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert result["backend"] == "procfs"
    assert result["notes"][0] == "backend auto -> procfs: bpftrace needs root"


def test_lost_events_are_counted_and_said(kernel_tracing: None, tmp_path: Path) -> None:
    """A one-page event buffer cannot keep up with 300k writes: losses are reported.
    Whether the reader falls behind depends on scheduling, so up to three tries."""
    storm = "import os\nfd = os.open('/dev/null', os.O_WRONLY)\nfor _ in range(300000):\n    os.write(fd, b'x')\n"
    args = ["io", "--events", "--buffer-pages", "1", "--", sys.executable, "-c", storm]
    for _ in range(3):
        rc, result, err = trace_json(*args)
        assert rc == 0, err
        if result["lost_events"] > 0:
            break
    assert result["lost_events"] > 0
    assert f"{result['lost_events']} events were lost: results are incomplete" in result["notes"]
    # The in-kernel counts do not go through that buffer: still exact.
    writes = [r for r in result["io"] if r["op"] == "write"]
    assert sum(r["count"] for r in writes) >= 300000
    for _ in range(3):
        done = subprocess.run(
            [*contend_command(), "trace", *args], capture_output=True, text=True, timeout=120
        )
        if " 0 lost" not in done.stdout:
            break
    assert "events were lost: results are incomplete" in done.stdout
    assert done.stdout.rstrip().splitlines()[-2].endswith(" lost") and " 0 lost" not in done.stdout
    bad = subprocess.run(
        [*contend_command(), "trace", "io", "--buffer-pages", "3"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "not a power of 2" in bad.stderr


def test_interval_prints_summaries_so_far(kernel_tracing: None) -> None:
    """--interval 0.3 over a 1.5 s command that calls getsid 100 times every 0.1 s."""
    program = "import os, time\nfor _ in range(15):\n    [os.getsid(0) for _ in range(100)]\n    time.sleep(0.1)\n"
    done = subprocess.run(
        [*contend_command(), "trace", "syscalls", "--interval", "0.3", "--format", "json",
         "--", sys.executable, "-c", program],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    intervals = [json.loads(line) for line in lines if line.startswith('{"')]
    final = json.loads("\n".join(lines[len(intervals) :]))

    def getsid(doc: dict[str, Any]) -> int:
        return sum(r["count"] for r in doc["syscalls"] if r["syscall"] == "getsid")

    counts = [getsid(doc) for doc in intervals]
    assert len(intervals) >= 3
    assert counts == sorted(counts) and 0 < counts[0] < 1500
    assert getsid(final) == 1500


@pytest.mark.parametrize("monitors", [("process",), MONITORS])
def test_interval_programs_compile(kernel_tracing: None, monitors: tuple[str, ...]) -> None:
    opts = TraceOptions(monitors, Target(pids=(1,)), interval_s=1.0, events=True)
    ok, errors = bt.compile_check(build_program(opts))
    assert ok, errors


def test_fresh_machine_without_tracefs_mounted(kernel_tracing: None) -> None:
    """As on a new machine: tracefs unmounted. The io program must still get its probes."""
    subprocess.run(["umount", str(bt.TRACEFS)], check=False, capture_output=True)
    assert not (bt.TRACEFS / "events").is_dir()
    text = build_program(TraceOptions(("io",), Target(pids=(1,)))).text()
    assert "sys_enter_write" in text and "sys_exit_openat" in text
    assert (bt.TRACEFS / "events").is_dir()


def test_a_call_still_in_flight_at_the_end_is_counted_not_timed(kernel_tracing: None) -> None:
    sleeper = "import time\ntime.sleep(60)\n"
    _, result, err = trace_json("syscalls", "--duration", "2", "--", sys.executable, "-c", sleeper)
    assert result["exit_status"] is not None, err  # stopped by contend after --duration
    (row,) = [
        r for r in result["syscalls"] if r["syscall"] in ("clock_nanosleep", "nanosleep", "select")
    ]
    assert row["count"] == 1 and row["avg_ns"] is None and row["blocking"] is True


def test_procfs_exit_status_above_128_is_a_code_not_a_signal() -> None:
    rc, result, err = trace_json(
        "process", "--backend", "procfs", "--", "sh", "-c", "sleep 0.3; exit 200"
    )
    assert rc == 200, err
    (leader_exit,) = [
        e for e in result["process"] if e["event"] == "exit" and e["exit_code"] is not None
    ]
    assert (leader_exit["exit_code"], leader_exit["signal"]) == (200, 0)


def test_unknown_container_is_one_clear_line() -> None:
    done = subprocess.run(
        [*contend_command(), "trace", "syscalls", "--container", "contend-no-such-container"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.stderr.count("\n") == 1, done.stderr
    if "no container engine answers" in done.stderr:
        assert done.returncode == 1  # neither podman nor docker here: not the user's input
    else:
        assert done.returncode == 2 and "contend-no-such-container" in done.stderr
    bad = subprocess.run(
        [*contend_command(), "trace", "syscalls", "--container", "x; rm -rf /"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "is not a container name or ID" in bad.stderr


def test_sampled_rows_name_a_call_timed_but_not_counted() -> None:
    """Sampled latency: counts come from entries, times from returns; a call entered
    before the trace (number -1 here, as seen tracing the whole system) is timed only.
    It used to be a KeyError on its name."""
    from contend.collect.bpftrace import Output
    from contend.monitors import syscalls

    out = Output(
        maps={"@sys_count": {"7,0,cat": 16}},
        stats={"@sys_time": {"7,0,cat": {"count": 1, "total": 500, "average": 500},
                             "7,-1,cat": {"count": 1, "total": 90, "average": 90}}},
    )  # fmt: skip
    rows = {r.syscall: r for r in syscalls.rows(out, machine="x86_64")}
    assert rows["read"].count == 16 and rows["read"].comm == "cat"
    (other,) = [r for r in rows.values() if r.syscall != "read"]
    assert (other.pid, other.comm, other.count, other.timed) == (7, "cat", 0, 1)


def test_sampled_latency_times_a_sixteenth_and_exact_times_all(
    known_run: tuple[int, dict[str, Any]],
) -> None:
    _, sampled = known_run  # the default: --latency sampled
    assert sampled["syscall_latency"] == "sampled 1/16"
    (getsid,) = [r for r in sampled["syscalls"] if r["syscall"] == "getsid"]
    assert getsid["count"] == 1234  # counts stay exact
    assert 20 <= getsid["timed"] <= 250  # about 1234 / 16 = 77
    rc, exact, err = trace_json("syscalls", "--latency", "exact", "--", sys.executable, "-c", KNOWN)
    assert rc == 42, err
    assert exact["syscall_latency"] == "exact"
    (getsid,) = [r for r in exact["syscalls"] if r["syscall"] == "getsid"]
    assert getsid["count"] == getsid["timed"] == 1234
