"""Resolve a container name or ID to its init PID and cgroup, through the engine that
answers: podman or docker, found at run time, never assumed. Only `ENGINE inspect` is
run, with the validated name as one argument (no shell)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from contend.collect.cgroups import detect_layout
from contend.errors import ContendError

ENGINES = ("podman", "docker")


@dataclass(frozen=True)
class Container:
    engine: str
    name: str
    pid: int
    cgroup: Path | None  # the directory of its cgroup (v2 if any, else v1 cpu)
    cgroup_id: int | None  # the cgroup2 id, when the container has a cgroup2 directory


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no output"


def inspect(name: str, timeout_s: float = 15.0) -> Container:
    """The running container `name` (already validated), or a one-line ContendError."""
    tried = []
    for engine in ENGINES:
        binary = shutil.which(engine)
        if binary is None:
            continue
        try:
            done = subprocess.run(
                [binary, "inspect", "--format", "{{.State.Pid}}", name],
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            tried.append(f"{engine}: no answer in {timeout_s:.0f} s")
            continue
        pid_text = done.stdout.strip()
        if done.returncode == 0 and pid_text.isdigit():
            pid = int(pid_text)
            if pid == 0:
                raise ContendError(f"container {name!r} ({engine}) is not running")
            cgroup, cgroup_id = cgroup_of(pid)
            return Container(engine, name, pid, cgroup, cgroup_id)
        tried.append(f"{engine}: {_first_line(done.stderr or done.stdout)}")
    if not tried:
        raise ContendError("--container: no container engine found (podman or docker)")
    raise ContendError(f"--container {name!r}: " + "; ".join(tried))


def cgroup_of(pid: int) -> tuple[Path | None, int | None]:
    """The cgroup directory of `pid` (cgroup2 when it has one, else the v1 cpu one) and
    its cgroup2 id. /proc/PID/cgroup: `0::/path` on cgroup2, `N:cpu,...:/path` on v1
    (Documentation/admin-guide/cgroup-v2.rst, "Processes")."""
    layout = detect_layout()
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None, None
    v1_path = None
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and layout.v2_root is not None and path not in ("", "/"):
            d = layout.v2_root / path.lstrip("/")
            if d.is_dir():
                return d, d.stat().st_ino
        if "cpu" in controllers.split(",") and "cpu" in layout.v1_roots:
            v1_path = layout.v1_roots["cpu"] / path.lstrip("/")
    return (v1_path if v1_path is not None and v1_path.is_dir() else None), None
