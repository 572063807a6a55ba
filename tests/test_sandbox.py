"""The cgroup sandbox against the real kernel: limits, CPU share, cleanup, reclaim."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contend.collect.procfs import ProcFS
from contend.errors import PermissionNeeded
from contend.lab.sandbox import PREFIX, CpuLimit, Limits, MemoryLimit, Sandbox, reclaim_stale

BUSY = "while True: pass"


def _spawn_in(sandbox: Sandbox, code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], preexec_fn=sandbox.join_function())


@pytest.mark.usefixtures("root_cgroups")
def test_limits_are_read_back_from_the_kernel() -> None:
    with Sandbox(Limits(cpus=0.5, memory_bytes=64 << 20)) as sb:
        assert CpuLimit.read_back(sb.dirs, sb.mode) == 0.5
        assert MemoryLimit.read_back(sb.dirs, sb.mode) == 64 << 20
        if sb.mode == "v1":
            assert (sb.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
            assert (sb.dirs["cpu"] / "cpu.cfs_period_us").read_text().strip() == "100000"
            assert (sb.dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == str(
                64 << 20
            )
        else:
            assert (sb.dirs["cpu"] / "cpu.max").read_text().split() == ["50000", "100000"]
        sb.set_limits(Limits(cpus=1.5, memory_bytes=None))
        assert sb.limits == Limits(1.5, None)
        names = {d.name for d in sb.dirs.values()}
        assert names == {sb.name} and sb.name.startswith(f"{PREFIX}{os.getpid()}-")
        dirs = list(sb.dirs.values())
    assert not any(d.exists() for d in dirs)


@pytest.mark.usefixtures("root_cgroups")
def test_two_busy_loops_share_half_a_cpu() -> None:
    with Sandbox(Limits(cpus=0.5, memory_bytes=256 << 20)) as sb:
        procs = [_spawn_in(sb, BUSY) for _ in range(2)]
        time.sleep(0.3)
        assert sorted(sb.pids()) == sorted(p.pid for p in procs)
        fs = ProcFS()

        def cpu_ns() -> int:
            return sum(t.on_cpu_ns or 0 for t in fs.tasks([p.pid for p in procs]))

        stat0, t0, c0 = sb.cpu_stat(), time.monotonic(), cpu_ns()
        time.sleep(3.0)
        stat1, t1, c1 = sb.cpu_stat(), time.monotonic(), cpu_ns()
        cores = (c1 - c0) / 1e9 / (t1 - t0)
        assert 0.45 <= cores <= 0.55, cores
        assert stat0 is not None and stat1 is not None
        periods = stat1.nr_periods - stat0.nr_periods
        assert periods >= 25  # ~30 periods of 100 ms in 3 s
        assert (stat1.nr_throttled - stat0.nr_throttled) / periods >= 0.9
        dirs = list(sb.dirs.values())
    for p in procs:
        assert p.wait(timeout=5) == -9  # SIGKILLed by the sandbox on close
    assert not any(d.exists() for d in dirs)


@pytest.mark.usefixtures("root_cgroups")
def test_memory_limit_is_enforced() -> None:
    """A child that allocates past the limit is OOM-killed inside the sandbox."""
    with Sandbox(Limits(cpus=1.0, memory_bytes=32 << 20)) as sb:
        proc = _spawn_in(sb, "x = bytearray(200 << 20); x[::4096] = b'y' * len(x[::4096])")
        assert proc.wait(timeout=30) == -9


@pytest.mark.usefixtures("root_cgroups")
def test_reclaim_removes_groups_of_dead_owners_only() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    with Sandbox(Limits(cpus=0.5, memory_bytes=64 << 20)) as live:
        orphan = Sandbox(Limits(cpus=0.5, memory_bytes=64 << 20))
        orphan.name = f"{PREFIX}{dead.pid}-1"
        orphan.open()
        sleeper = _spawn_in(orphan, "import time; time.sleep(60)")
        orphan_dirs = list(orphan.dirs.values())
        orphan.dirs = {}  # forget it, as a SIGKILLed owner would
        reclaimed = reclaim_stale()
        assert set(reclaimed) == set(orphan_dirs)
        assert sleeper.wait(timeout=5) == -9
        assert not any(d.exists() for d in orphan_dirs)
        assert all(d.exists() for d in live.dirs.values())


def test_without_root_the_sandbox_says_so(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # Root can write anywhere: drop to nobody in a child to see the message.
        code = (
            "import os\n"
            "from contend.lab.sandbox import Sandbox, Limits\n"
            "from contend.errors import PermissionNeeded\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "try:\n    Sandbox(Limits(0.5, 64 << 20)).open()\n"
            "except PermissionNeeded as e:\n    print(e.exit_code, e.message)\n"
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/"
        )
        assert out.stdout.startswith("77 creating a cgroup sandbox needs root"), out.stderr
    else:
        with pytest.raises(PermissionNeeded):
            Sandbox(Limits(0.5, 64 << 20)).open()
