"""Where the cgroup hierarchies are on this machine, and what each offers.

Detected from /proc/self/mountinfo (Documentation/filesystems/proc.rst, "mountinfo"),
never assumed: machines run pure cgroup v2 (most today), pure v1, or the hybrid layout
(v1 controllers beside a controller-less cgroup2 tree, as on this project's CI machine).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from contend.collect.procfs import Read, read_cpu_stat_file, read_pressure_file, read_small
from contend.model import CgroupCpuStat, CgroupSample, GroupNames, Pressure

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


def cpu_stat(group_dirs: dict[str, Path], read: Read = read_small) -> CgroupCpuStat | None:
    """Bandwidth counters of a group, from the hierarchy that holds the cpu controller.

    `group_dirs` maps "cpu" and/or "unified" to the group's directories; `read` reads a
    file (a HeldFiles' for readers that come back every second).
    """
    stat = None
    if "cpu" in group_dirs:
        stat = read_cpu_stat_file(f"{group_dirs['cpu']}/cpu.stat", read)
    if "unified" in group_dirs:
        unified = read_cpu_stat_file(f"{group_dirs['unified']}/cpu.stat", read)
        if stat is None:
            return unified
        if unified is not None and stat.usage_ns is None:
            stat = replace(stat, usage_ns=unified.usage_ns)
    if stat is not None and stat.usage_ns is None and "cpuacct" in group_dirs:
        # Pure v1: usage is cpuacct's (ns, all CPUs), cgroup-v1/cpuacct.rst.
        try:
            usage = int((group_dirs["cpuacct"] / "cpuacct.usage").read_text())
        except (OSError, ValueError):
            return stat
        stat = replace(stat, usage_ns=usage)
    return stat


def cpu_pressure(group_dirs: dict[str, Path], read: Read = read_small) -> Pressure | None:
    """A group's CPU PSI: only cgroup2 trees have cpu.pressure (also without the cpu
    controller, Documentation/accounting/psi.rst "Cgroup2 interface")."""
    if "unified" in group_dirs:
        return read_pressure_file(f"{group_dirs['unified']}/cpu.pressure", read)
    return None


# --- the cgroups of any task ----------------------------------------------------------------

# Container ids in cgroup paths: docker (`docker-ID.scope`, `/docker/ID`), podman
# (`libpod-ID.scope`, `/libpod-ID`), containerd/CRI-O (`cri-containerd-ID.scope`,
# `crio-ID.scope`): 64 hex digits.
# docker-ID.scope (systemd driver), /docker/ID (cgroupfs driver), or ID alone under any
# parent (`dockerd --cgroup-parent`, kubelet's cgroupfs pods): a 64-hex-digit component.
_CONTAINER_ID = re.compile(
    r"(?:^|/)(?:docker-|libpod-|crio-|cri-containerd-)?([0-9a-f]{64})(?:\.scope)?(?:/|$)"
)


def container_in_path(path: str) -> str | None:
    """The short (12-digit) id of the container a cgroup path belongs to, if any."""
    m = _CONTAINER_ID.search(path)
    return m.group(1)[:12] if m else None


# Kubernetes pods: `pod<uid>` (cgroupfs driver: /kubepods/burstable/pod<uid>/<id>) or
# `kubepods-<qos>-pod<uid with _ for ->.slice` (systemd driver).
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?(?:/|$)"
)
_UNIT = re.compile(r"[^/]+\.(?:service|scope|socket|mount|swap|slice)$")


def names_in_path(path: str) -> GroupNames:
    """What a cgroup path says of who runs there: a container, a systemd unit, a pod."""
    pod = _POD_UID.search(path)
    unit = _UNIT.search(path)
    return GroupNames(
        container=container_in_path(path),
        unit=unit.group(0) if unit else None,
        pod_uid=pod.group(1).replace("_", "-") if pod else None,
    )


@dataclass(frozen=True)
class TaskGroup:
    """A task's cgroup: `path` within its hierarchy (the cpu controller's on v1, where
    the quota lives), and the directories that hold its files ("cpu", "unified")."""

    path: str
    dirs: dict[str, Path]


def task_group(pid: int, layout: CgroupLayout, proc_root: str = "/proc") -> TaskGroup | None:
    """/proc/PID/cgroup: `0::/path` on cgroup2, `N:cpu,cpuacct:/path` on v1
    (Documentation/admin-guide/cgroup-v2.rst "Processes"; cgroup-v1/cgroups.rst).
    None when the task is gone."""
    try:
        text = Path(proc_root, str(pid), "cgroup").read_text()
    except OSError:
        return None
    return group_of_cgroup_file(text, layout)


def group_of_cgroup_file(text: str, layout: CgroupLayout) -> TaskGroup | None:
    """The TaskGroup a /proc/PID/cgroup text names (None: no hierarchy contend reads)."""
    v1_cpu = v1_cpuacct = unified = None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            unified = path or "/"
            continue
        if "cpu" in controllers.split(","):
            v1_cpu = path or "/"
        if "cpuacct" in controllers.split(","):
            v1_cpuacct = path or "/"
    dirs: dict[str, Path] = {}
    on_v1 = v1_cpu is not None and "cpu" in layout.v1_roots
    label = v1_cpu if on_v1 else unified
    if label is None:
        return None
    # Only files of this one group: on a hybrid machine the task's cgroup2 group (usage,
    # PSI) or its cpuacct group (usage) may be another group than its cpu one (quota,
    # throttling), and is then left out rather than mixed in under the cpu group's name.
    if unified is not None and layout.v2_root is not None and unified == label:
        dirs["unified"] = layout.v2_root / unified.lstrip("/")
        if "cpu" in layout.v2_controllers:
            dirs["cpu"] = dirs["unified"]
    if on_v1:
        dirs["cpu"] = layout.v1_roots["cpu"] / label.lstrip("/")
        if v1_cpuacct == label and "cpuacct" in layout.v1_roots:
            dirs["cpuacct"] = layout.v1_roots["cpuacct"] / label.lstrip("/")
    return TaskGroup(label, {k: d for k, d in dirs.items() if d.is_dir()})


def read_quota(cpu_dir: Path) -> tuple[int | None, int | None]:
    """(quota, period) in us of a group's CFS bandwidth, None without a quota: v2
    `cpu.max` ("max 100000" or "50000 100000"), v1 `cpu.cfs_quota_us` (-1) and
    `cpu.cfs_period_us` (Documentation/scheduler/sched-bwc.rst)."""
    d = str(cpu_dir)
    try:
        try:
            quota, period = read_small(f"{d}/cpu.max").split()[:2]
        except FileNotFoundError:
            quota = read_small(f"{d}/cpu.cfs_quota_us").strip()
            period = read_small(f"{d}/cpu.cfs_period_us").strip()
    except (OSError, ValueError):
        return None, None
    if not period.isdigit():
        return None, None
    if quota in ("max", "-1") or not quota.isdigit():
        return None, int(period)
    return int(quota), int(period)


def _tightest_ancestor(cpu_dir: Path, root: Path) -> tuple[Path, float] | None:
    """The ancestor (not the group itself) with the lowest quota in CPUs, if any: a
    parent's quota limits every group under it."""
    best: tuple[Path, float] | None = None
    d = cpu_dir.parent
    while d.is_relative_to(root) and d != root:
        quota, period = read_quota(d)
        if quota is not None and period:
            cpus = quota / period
            if best is None or cpus < best[1]:
                best = (d, cpus)
        d = d.parent
    return best


@dataclass(frozen=True)
class GroupLimits:
    """A group's quota (the tightest of it and its ancestors), where it comes from, and
    its burst: what changes only when someone changes it."""

    quota_us: int | None
    period_us: int | None
    quota_from: str | None
    burst_us: int | None
    limiting_dir: Path | None  # the quota's group, when an ancestor's


def group_limits(group: TaskGroup, layout: CgroupLayout) -> GroupLimits:
    quota = period = None
    quota_from = None
    root = None
    limiting = None
    cpu_dir = group.dirs.get("cpu")
    if cpu_dir is None:
        return GroupLimits(None, None, None, None, None)
    quota, period = read_quota(cpu_dir)
    roots = [r for r in (layout.v1_roots.get("cpu"), layout.v2_root) if r is not None]
    root = next((r for r in roots if cpu_dir.is_relative_to(r)), None)
    above = _tightest_ancestor(cpu_dir, root) if root is not None else None
    if (
        root is not None
        and above is not None
        and (quota is None or not period or above[1] < quota / period)
    ):
        limiting = above[0]
        quota, period = read_quota(limiting)
        quota_from = "/" + str(limiting.relative_to(root))
    return GroupLimits(quota, period, quota_from, read_burst(limiting or cpu_dir), limiting)


def sample_group(
    group: TaskGroup,
    layout: CgroupLayout,
    t_ns: int,
    limits: GroupLimits | None = None,
    read: Read = read_small,
) -> CgroupSample:
    """A group's counters, PSI and quota now (the tightest of it and its ancestors);
    `limits` as read before, if the caller keeps them."""
    limits = limits or group_limits(group, layout)
    stat = cpu_stat(group.dirs, read)
    if limits.limiting_dir is not None and stat is not None:
        # Throttling is counted in the group whose quota ran out (its cfs_rq is the one
        # throttled, kernel/sched/fair.c throttle_cfs_rq), not in its children: read it
        # there, with this group's own usage.
        limiting = read_cpu_stat_file(f"{limits.limiting_dir}/cpu.stat", read)
        if limiting is not None:
            stat = replace(limiting, usage_ns=stat.usage_ns)
    return CgroupSample(
        path=group.path,
        t_ns=t_ns,
        cpu=stat,
        pressure=cpu_pressure(group.dirs, read),
        quota_us=limits.quota_us,
        period_us=limits.period_us,
        quota_from=limits.quota_from,
        burst_us=limits.burst_us,
    )


def read_burst(cpu_dir: Path) -> int | None:
    """The burst a group may bank, in us (sched-bwc.rst "Burst feature"): v2
    `cpu.max.burst`, v1 `cpu.cfs_burst_us`; None where the kernel has neither (< 5.14)."""
    for name in ("cpu.max.burst", "cpu.cfs_burst_us"):
        try:
            return int(read_small(f"{cpu_dir}/{name}"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return None
    return None


# Documentation/scheduler/sched-bwc.rst: "the amount of run-time ... transferred each time
# a cfs_rq requests quota" (default 5 ms), /proc/sys/kernel/sched_cfs_bandwidth_slice_us.
BANDWIDTH_SLICE = Path("/proc/sys/kernel/sched_cfs_bandwidth_slice_us")


def bandwidth_slice_us(default: int = 5000) -> int:
    """This machine's CFS bandwidth slice in microseconds (the default where unreadable)."""
    try:
        value = int(BANDWIDTH_SLICE.read_text().strip())
    except (OSError, ValueError):
        return default
    return value if value > 0 else default
