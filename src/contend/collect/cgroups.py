"""Where the cgroup hierarchies are on this machine, and what each offers.

Detected from /proc/self/mountinfo (Documentation/filesystems/proc.rst, "mountinfo"),
never assumed: machines run pure cgroup v2 (most today), pure v1, or the hybrid layout
(v1 controllers beside a controller-less cgroup2 tree, as on this project's CI machine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from contend.collect.procfs import read_cpu_stat_file, read_pressure_file
from contend.model import CgroupCpuStat, Pressure

# The v1 controllers contend uses: cpu (CFS bandwidth: cfs_quota_us/cfs_period_us,
# Documentation/scheduler/sched-bwc.rst) and memory (limit_in_bytes,
# Documentation/admin-guide/cgroup-v1/memory.rst).
V1_CONTROLLERS = ("cpu", "memory")


@dataclass(frozen=True, slots=True)
class Mount:
    mount_point: Path
    fstype: str
    super_options: tuple[str, ...]


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and i + 3 < len(path) and path[i + 1 : i + 4].isdigit():
            out.append(chr(int(path[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str, fstypes: tuple[str, ...] = ("cgroup", "cgroup2")) -> list[Mount]:
    """Mounts of `fstypes` (default: the cgroup ones) from mountinfo lines:
    ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTS
    """
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields_left = left.split()
        fields_right = right.split()
        if len(fields_left) < 5 or len(fields_right) < 3:
            continue
        fstype = fields_right[0]
        if fstype not in fstypes:
            continue
        mounts.append(
            Mount(
                mount_point=Path(_unescape(fields_left[4])),
                fstype=fstype,
                super_options=tuple(fields_right[2].split(",")),
            )
        )
    return mounts


@dataclass(frozen=True)
class CgroupLayout:
    """The hierarchies of this machine.

    `mode` is "v2" when a cgroup2 tree offers both cpu and memory controllers, "v1" when
    v1 hierarchies do (the unified tree, if any, then only gives PSI and cgroup.kill),
    and None when limits cannot be set at all.
    """

    v2_root: Path | None
    v2_controllers: frozenset[str]
    v1_roots: dict[str, Path] = field(default_factory=dict)

    @property
    def mode(self) -> str | None:
        if self.v2_root is not None and {"cpu", "memory"} <= self.v2_controllers:
            return "v2"
        if all(c in self.v1_roots for c in V1_CONTROLLERS):
            return "v1"
        return None

    @property
    def hybrid(self) -> bool:
        return self.mode == "v1" and self.v2_root is not None

    def describe(self) -> str:
        if self.mode == "v2":
            return f"cgroup v2 at {self.v2_root} (controllers: {' '.join(sorted(self.v2_controllers))})"
        if self.mode == "v1":
            text = (
                "cgroup v1 ("
                + ", ".join(f"{c} at {self.v1_roots[c]}" for c in V1_CONTROLLERS)
                + ")"
            )
            if self.v2_root is not None:
                text += f" + controller-less cgroup2 at {self.v2_root} (PSI, cgroup.kill)"
            return text
        return "no usable cgroup hierarchy with cpu and memory controllers"


def detect_layout(mountinfo: str | None = None) -> CgroupLayout:
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            mountinfo = ""
    v2_root: Path | None = None
    v2_controllers: frozenset[str] = frozenset()
    v1_roots: dict[str, Path] = {}
    for m in parse_mountinfo(mountinfo):
        if m.fstype == "cgroup2":
            if v2_root is None:
                v2_root = m.mount_point
                try:
                    text = (m.mount_point / "cgroup.controllers").read_text()
                    v2_controllers = frozenset(text.split())
                except OSError:
                    v2_controllers = frozenset()
        else:
            for opt in m.super_options:
                if opt in ("cpu", "memory", "cpuacct", "cpuset", "pids") and opt not in v1_roots:
                    v1_roots[opt] = m.mount_point
    return CgroupLayout(v2_root=v2_root, v2_controllers=v2_controllers, v1_roots=v1_roots)


# --- reading a group's counters -----------------------------------------------------------


def cpu_stat(group_dirs: dict[str, Path]) -> CgroupCpuStat | None:
    """Bandwidth counters of a group, from the hierarchy that holds the cpu controller.

    `group_dirs` maps "cpu" and/or "unified" to the group's directories.
    """
    stat = None
    if "cpu" in group_dirs:
        stat = read_cpu_stat_file(group_dirs["cpu"] / "cpu.stat")
    if "unified" in group_dirs:
        unified = read_cpu_stat_file(group_dirs["unified"] / "cpu.stat")
        if stat is None:
            return unified
        if unified is not None and stat.usage_ns is None:
            return CgroupCpuStat(
                stat.nr_periods, stat.nr_throttled, stat.throttled_ns, unified.usage_ns
            )
    return stat


def cpu_pressure(group_dirs: dict[str, Path]) -> Pressure | None:
    """A group's CPU PSI: only cgroup2 trees have cpu.pressure (also without the cpu
    controller, Documentation/accounting/psi.rst "Cgroup2 interface")."""
    if "unified" in group_dirs:
        return read_pressure_file(group_dirs["unified"] / "cpu.pressure")
    return None
