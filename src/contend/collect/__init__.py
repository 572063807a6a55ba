"""Collection backends and what this machine offers them.

Each probe says whether a capability is there, and if not, why and how to fix it
(pyperf's `available()`/`show()` shape). `choose_backend()` picks the best backend
that is both implemented and available, and says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from contend.collect.cgroups import detect_layout, parse_mountinfo
from contend.collect.procfs import ProcFS

# Documentation/trace/ftrace.rst: tracefs is mounted at /sys/kernel/tracing (older
# systems: /sys/kernel/debug/tracing through debugfs).
TRACEFS = Path("/sys/kernel/tracing")

# `auto` prefers bpftrace (exact, aggregated in the kernel, cheapest per event) and falls
# back on procfs (sampled, no root needed, always there).


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _mounted(fstype: str) -> list[str]:
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return []
    return [str(m.mount_point) for m in parse_mountinfo(text, (fstype,))]


def bpftrace_version() -> str | None:
    path = shutil.which("bpftrace")
    if path is None:
        return None
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or done.stderr.strip() or "unknown version"


def checks() -> list[Check]:
    root = os.geteuid() == 0
    out = [
        Check(
            "root",
            root,
            "running as root" if root else f"running as uid {os.geteuid()}",
            "" if root else "run as root (sudo) for the sandbox, tracefs and bpftrace",
        )
    ]
    layout = detect_layout()
    out.append(
        Check(
            "cgroups",
            layout.mode is not None,
            layout.describe(),
            "" if layout.mode else "mount cgroup2 with the cpu and memory controllers",
        )
    )
    psi = ProcFS().system_pressure()
    out.append(
        Check(
            "PSI",
            psi is not None,
            "/proc/pressure/cpu readable" if psi else "/proc/pressure/cpu missing",
            "" if psi else "boot with psi=1 (kernel built with CONFIG_PSI)",
        )
    )
    schedstat = Path(f"/proc/{os.getpid()}/schedstat").exists()
    out.append(
        Check(
            "schedstat",
            schedstat,
            "/proc/PID/schedstat present" if schedstat else "/proc/PID/schedstat missing",
            "" if schedstat else "needs a kernel with CONFIG_SCHED_INFO",
        )
    )
    mounts = _mounted("tracefs")
    if mounts:
        tracefs = Check("tracefs", True, f"mounted at {', '.join(mounts)}")
    elif TRACEFS.is_dir():
        tracefs = Check(
            "tracefs",
            root,
            f"not mounted; mountable at {TRACEFS}",
            f"{'' if root else 'as root: '}mount -t tracefs nodev {TRACEFS}",
        )
    else:
        tracefs = Check("tracefs", False, "no /sys/kernel/tracing", "kernel without CONFIG_TRACING")
    out.append(tracefs)
    version = bpftrace_version()
    out.append(
        Check(
            "bpftrace",
            version is not None,
            version or "not installed",
            "" if version else "as root: make install (installs Debian's bpftrace)",
        )
    )
    return out


def choose_backend() -> tuple[str, str]:
    """(backend `auto` picks, reason)."""
    from contend.collect import bpftrace

    ok, why = bpftrace.available()
    if ok:
        return "bpftrace", "root and bpftrace: exact counts and latencies, aggregated in the kernel"
    return "procfs", f"unprivileged sampling of /proc, schedstat, cgroup cpu.stat and PSI ({why})"
