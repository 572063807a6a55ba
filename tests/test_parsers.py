"""The /proc, PSI, cgroup and mountinfo parsers against fixture text for edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from contend.collect.cgroups import detect_layout, parse_mountinfo
from contend.collect.procfs import (
    ProcFS,
    parse_cpu_stat,
    parse_io,
    parse_pressure,
    parse_schedstat,
    parse_stat,
    parse_status_switches,
)

# Field 2 is comm; utime=14 stime=15 starttime=22 (fs/proc/array.c do_task_stat()).
STAT_TAIL = (
    "S 1 42 42 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 3 0 98765 1000 200 18446744073709551615"
)


@pytest.mark.parametrize(
    "comm",
    ["python", "my prog", "a) (b", "x)", "new\nline", ") S 1 2 3", ""],
)
def test_stat_comm_with_spaces_parens_and_newlines(comm: str) -> None:
    fields = parse_stat(f"4242 ({comm}) {STAT_TAIL}\n")
    assert fields.comm == comm
    assert (fields.state, fields.ppid) == ("S", 1)
    assert (fields.utime_ticks, fields.stime_ticks, fields.start_ticks) == (1234, 56, 98765)


def test_status_switches() -> None:
    text = "Name:\tpython\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t325\nnonvoluntary_ctxt_switches:\t38\n"
    assert parse_status_switches(text) == (325, 38)
    with pytest.raises(ValueError):
        parse_status_switches("Name:\tx\n")


def test_schedstat_and_io() -> None:
    assert parse_schedstat("190834144 6947541 363\n") == (190834144, 6947541, 363)
    io = parse_io("rchar: 10\nwchar: 20\nsyscr: 3\nsyscw: 4\nread_bytes: 0\nwrite_bytes: 0\n")
    assert (io["syscr"], io["syscw"], io["wchar"]) == (3, 4, 20)


def test_pressure_with_and_without_full() -> None:
    both = "some avg10=1.71 avg60=1.69 avg300=0.48 total=1773963\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=42\n"
    p = parse_pressure(both)
    assert (p.some_us, p.full_us) == (1773963, 42)
    old_kernel = "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n"
    assert parse_pressure(old_kernel).full_us is None
    with pytest.raises(ValueError):
        parse_pressure("")


def test_cpu_stat_v1_v2_and_unified_without_cpu_controller() -> None:
    v1 = parse_cpu_stat(
        "nr_periods 200\nnr_throttled 150\nthrottled_time 7000000000\nnr_bursts 0\nburst_time 0\n"
    )
    assert (v1.nr_periods, v1.nr_throttled, v1.throttled_ns, v1.usage_ns) == (
        200,
        150,
        7_000_000_000,
        None,
    )
    v2 = parse_cpu_stat(
        "usage_usec 5000\nuser_usec 4000\nsystem_usec 1000\nnr_periods 10\nnr_throttled 5\nthrottled_usec 300\n"
    )
    assert (v2.nr_periods, v2.nr_throttled, v2.throttled_ns, v2.usage_ns) == (
        10,
        5,
        300_000,
        5_000_000,
    )
    unified = parse_cpu_stat("usage_usec 12\nuser_usec 10\nsystem_usec 2\n")
    assert (unified.nr_periods, unified.usage_ns) == (0, 12_000)


HYBRID = """\
25 31 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:5 - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw shared:9 - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw shared:10 - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
30 31 0:27 / /mnt/with\\040space rw - ext4 /dev/sda rw
"""


def test_mountinfo_hybrid_layout(tmp_path: Path) -> None:
    mounts = parse_mountinfo(HYBRID)
    assert [m.fstype for m in mounts] == ["cgroup2", "cgroup", "cgroup", "cgroup"]
    layout = detect_layout(HYBRID)
    assert layout.mode == "v1"
    assert layout.hybrid
    assert layout.v1_roots["cpu"] == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert layout.v1_roots["memory"] == Path("/sys/fs/cgroup/memory")


def test_mountinfo_v2_only_reads_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    text = f"30 25 0:26 / {tmp_path} rw - cgroup2 cgroup2 rw,nsdelegate\n"
    layout = detect_layout(text)
    assert layout.mode == "v2"
    assert layout.v2_root == tmp_path
    assert {"cpu", "memory"} <= layout.v2_controllers


def test_mountinfo_escaped_mount_point_and_none() -> None:
    text = "30 25 0:26 / /sys/fs/cg\\040v2 rw - cgroup2 cgroup2 rw\n"
    assert parse_mountinfo(text)[0].mount_point == Path("/sys/fs/cg v2")
    assert detect_layout("").mode is None


def _fake_task(root: Path, pid: int, tid: int, comm: str, start: int = 500) -> None:
    d = root / str(pid) / "task" / str(tid)
    d.mkdir(parents=True)
    (d / "stat").write_text(f"{tid} ({comm}) {STAT_TAIL.replace('98765', str(start))}\n")
    (d / "status").write_text("voluntary_ctxt_switches:\t7\nnonvoluntary_ctxt_switches:\t3\n")
    (d / "schedstat").write_text("1000 2000 5\n")


def test_procfs_fixture_tree_and_vanished_tasks(tmp_path: Path) -> None:
    _fake_task(tmp_path, 10, 10, "a (b) c")
    _fake_task(tmp_path, 10, 11, "worker")
    (tmp_path / "10" / "stat").write_text(f"10 (a (b) c) {STAT_TAIL}\n")
    (tmp_path / "10" / "io").write_text("syscr: 5\nsyscw: 6\n")
    fs = ProcFS(tmp_path)
    tasks = list(fs.tasks([10, 99]))  # 99 does not exist: skipped, no exception
    assert [(t.tid, t.comm) for t in tasks] == [(10, "a (b) c"), (11, "worker")]
    assert (
        tasks[1].on_cpu_ns == 1000 and tasks[1].run_queue_wait_ns == 2000 and tasks[1].slices == 5
    )
    assert (tasks[0].voluntary_switches, tasks[0].involuntary_switches) == (7, 3)
    io = fs.io(10)
    assert io is not None and (io.syscr, io.syscw) == (5, 6)
    assert fs.io(99) is None
    # A thread whose files disappear mid-read counts as gone.
    (tmp_path / "10" / "task" / "11" / "status").unlink()
    assert fs.task(10, 11) is None


def test_procfs_without_schedstat(tmp_path: Path) -> None:
    _fake_task(tmp_path, 20, 20, "x")
    (tmp_path / "20" / "task" / "20" / "schedstat").unlink()
    (task,) = ProcFS(tmp_path).tasks([20])
    assert task.on_cpu_ns is None and task.slices is None
