"""Shared fixtures. Kernel-facing tests skip on a laptop without root, but under
CONTEND_REQUIRE_KERNEL=1 (set by .ci/run) a missing capability fails the test instead."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contend.collect.cgroups import detect_layout

REQUIRE_KERNEL = os.environ.get("CONTEND_REQUIRE_KERNEL") == "1"
# How much slower than this machine the tests run (`make vmtest`'s TCG: about 5x): waits
# for something to start scale by it, never an assertion.
TIME_SCALE = float(os.environ.get("CONTEND_TEST_TIME_SCALE") or 1)

# Started in the background of a shell without job control, pytest inherits SIGINT
# ignored, and so would every contend the tests start (Python installs no Ctrl-C handler
# then): the Ctrl-C tests need it delivered, as a terminal would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def need(condition: bool, why: str) -> None:
    """Skip (or, in CI, fail) when a kernel capability is missing."""
    if condition:
        return
    if REQUIRE_KERNEL:
        pytest.fail(f"CONTEND_REQUIRE_KERNEL=1 but {why}")
    pytest.skip(why)


@pytest.fixture
def root_cgroups() -> None:
    need(os.geteuid() == 0, "needs root")
    need(detect_layout().mode is not None, "needs cgroup v1 or v2 with cpu and memory")


def contend_cgroups() -> list[Path]:
    layout = detect_layout()
    roots = set(layout.v1_roots.values())
    if layout.v2_root is not None:
        roots.add(layout.v2_root)
    return sorted(d for r in roots if r.is_dir() for d in r.glob("contend-*"))


@pytest.fixture(autouse=True)
def no_cgroup_left_behind() -> Iterator[None]:
    """Every test must give back the cgroups it made."""
    before = set(contend_cgroups())
    yield
    left = set(contend_cgroups()) - before
    assert not left, f"cgroups left behind: {sorted(map(str, left))}"


def pgrep(name: str) -> list[int]:
    done = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()]


def _as_a_shell_background_job() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# How `setsid contend ... &` in a script starts contend: its own session, SIGINT ignored
# (a shell without job control ignores it in background jobs). `kill -INT` must stop it
# all the same, as it stops perf and bpftrace.
LIKE_SETSID_BACKGROUND: dict[str, Any] = {
    "start_new_session": True,
    "preexec_fn": _as_a_shell_background_job,
}


def quiet_cpu(window_s: float = 0.3) -> int:
    """The CPU that was idle longest over `window_s` (/proc/stat). A test that pins its own
    loops together pins them there: on a machine busy elsewhere (CI's busy neighbour,
    anyone's), they then compete with each other, as the test reasons, and not with a
    third loop it knows nothing of."""

    def idle() -> dict[int, int]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name != "cpu":
                    out[int(name[3:])] = int(fields[3]) + int(fields[4])  # idle + iowait
        return out

    before = idle()
    time.sleep(window_s)
    after = idle()
    allowed = os.sched_getaffinity(0)
    return max(allowed, key=lambda c: (after.get(c, 0) - before.get(c, 0), -c))


def contend_command() -> list[str]:
    return [sys.executable, "-m", "contend"]


# Every module imported first (their files may not be readable by nobody), then root is
# dropped for good, then the CLI runs.
AS_NOBODY = """
import os, pkgutil, importlib, sys
import encodings.cp437, zipfile  # read by numpy.load: /root/.pyenv is not for nobody
import contend
for m in pkgutil.walk_packages(contend.__path__, "contend."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
from contend.cli import main
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
sys.stderr.write(f"uid {os.getuid()} euid {os.geteuid()}\\n")
sys.exit(main(sys.argv[1:]))
"""


def busy_loop(cpu: int | None = None, join: Any = None) -> subprocess.Popen[bytes]:
    """`while True: pass`, pinned to `cpu` and run in a cgroup by `join` (a sandbox's
    join_function) when given, before it starts."""

    def setup() -> None:
        if join is not None:
            join()
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    return subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=setup)
