"""Bad input gets one line, a non-zero exit code, no traceback, and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import contend_cgroups, contend_command
from contend.errors import UsageError
from contend.target import parse_cpus, parse_memory


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*contend_command(), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cpus", "0"], "--cpus: '0' must be greater than 0"),
        (["--cpus", "-1"], "--cpus: '-1' must be greater than 0"),
        (["--cpus", "abc"], "--cpus: 'abc' is not a number"),
        (["--cpus", "99"], "--cpus: '99' is more than the"),
        (["--cpus", "nan"], "--cpus: 'nan' must be greater than 0"),
        (["--memory", "12q"], "--memory: '12q' is not a size"),
        (["--memory", "1k"], "--memory: '1k' is below the 6 MiB minimum"),
        (["--duration", "-3"], "--duration: '-3' is out of range"),
        (["--noise-workers", "x"], "--noise-workers: 'x' is not an integer"),
        (["--n", str(10**9)], "--n: '1000000000' is out of range"),
        (["--rate", "0"], "--rate: '0' is out of range"),
        (
            ["--json", "/nonexistent/dir/x.json"],
            "--json: directory /nonexistent/dir does not exist",
        ),
        (["--bogus"], "No such option '--bogus'"),
        (["--backend", "dtrace"], "--backend: 'dtrace' is not one of auto, procfs, bpftrace"),
        (
            ["--arms", "baseline,nope"],
            "--arms: 'nope' is not one of baseline, contention, unlimited",
        ),
        (["--arms", "baseline"], "--arms: baseline and contention are always run"),
        (["--arms", "baseline,contention,unlimited", "--no-sandbox"], "it needs the sandbox"),
    ],
)
def test_lab_bad_input(args: list[str], message: str) -> None:
    before = contend_cgroups()
    done = run("lab", *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("contend: error: ")
    assert message in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert contend_cgroups() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trace", "cpu", "--duration", ""], "--duration: '' is not a number of seconds"),
        (["trace", "cpu", "--interval", ""], "--interval: '' is not a number of seconds"),
        (["trace", "cpu", "--cgroup", ""], "--cgroup: empty path"),
        (["trace", "cpu", "-o", "/"], "-o: / is a directory"),
        (["trace", "cpu", "-o", ""], "-o: empty path"),
        (["record", "-o", "/tmp/x.session", "--buffer-pages", "3"], "is not a power of 2"),
        (["compare", "/dev/zero"], "/dev/zero: not a regular file"),
    ],
)
def test_trace_record_compare_bad_input(args: list[str], message: str) -> None:
    """Each one line and exit 2, before anything runs (found by a review)."""
    done = run(*args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("contend: error: "), done.stderr
    assert message in lines[0]


def test_a_thread_id_is_not_a_pid() -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import threading, time\n"
         "t = threading.Thread(target=time.sleep, args=(30,)); t.start()\n"
         "print(t.native_id, flush=True); t.join()"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        tid = holder.stdout.readline().strip()
        done = run("trace", "cpu", "--pid", tid, "--backend", "procfs", "--duration", "0.2")
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2
    assert f"--pid: {tid} is a thread of process {holder.pid}; give --pid {holder.pid}" in (
        done.stderr
    )


def test_unknown_subcommand_is_one_line() -> None:
    done = run("frobnicate")
    assert done.returncode == 2
    assert done.stderr.strip() == "contend: error: No such command 'frobnicate'."


def test_memory_syntax_of_docker() -> None:
    assert parse_memory("512m") == 512 << 20
    assert parse_memory("1g") == 1 << 30
    assert parse_memory("1.5G") == 3 << 29
    assert parse_memory("268435456") == 256 << 20
    assert parse_memory("512MB") == 512 << 20
    assert parse_cpus("0.5", available=2) == 0.5
    assert parse_cpus("2", available=2) == 2.0
    with pytest.raises(UsageError):
        parse_cpus("2.01", available=2)
    with pytest.raises(UsageError):
        parse_memory("-5m")


def test_doctor_json_reports_each_check() -> None:
    done = run("doctor", "--json")
    assert done.returncode == 0
    report = json.loads(done.stdout)
    assert [c["name"] for c in report["checks"]] == [
        "root",
        "cgroups",
        "PSI",
        "schedstat",
        "tracefs",
        "bpftrace",
    ]
    import os
    import shutil

    expected = "bpftrace" if os.geteuid() == 0 and shutil.which("bpftrace") else "procfs"
    assert report["backend"] == expected
    for check in report["checks"]:
        assert check["ok"] or check["fix"], check


def test_a_cgroup_is_found_by_its_path_in_the_hierarchy(tmp_path: Path) -> None:
    """--cgroup takes the path /proc/PID/cgroup, top and the exporter's label show
    (/web.slice/app.service), as well as a directory; never a way out of the tree."""
    from contend.target import resolve_target

    root = tmp_path / "cpu"
    group = root / "web.slice" / "app.service"
    group.mkdir(parents=True)
    (group / "cgroup.procs").write_text("")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "cgroup.procs").write_text("")
    assert resolve_target(cgroup="/web.slice/app.service", cgroup_roots=(root,)).cgroup == group
    assert resolve_target(cgroup=str(group), cgroup_roots=(root,)).cgroup == group
    with pytest.raises(UsageError, match="does not exist"):
        resolve_target(cgroup="/../outside", cgroup_roots=(root,))
