"""`contend lab --engine podman|docker`: each arm in its own container of the image
`dtrace-cpu-contention`, started with the lab's `--cpus` and `--memory` as the engine's
own flags, measured through the container's cgroup.

- `baseline`: the image with `CONTEND_NOISE=0` (the app alone under the quota);
- `contention`: the image as the original document runs it (app + noise);
- `unlimited`: app + noise without `--cpus`.

The limits the engine set are read back from the container's cgroup, never assumed.
Containers are named `contend-lab-<our pid>-<n>`; each is removed (`rm -f`) when its arm
ends, on an exception, Ctrl-C or SIGTERM (the CLI turns SIGTERM into an exception), and a
later `contend lab --engine` removes those whose owner was SIGKILLed.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

from contend.collect import cgroups
from contend.collect import engine as engines
from contend.collect.containers import cgroup_dirs
from contend.collect.engine import Engine
from contend.errors import ContendError
from contend.lab import image, load
from contend.lab.experiment import Lab, LabOptions, Progress
from contend.lab.sandbox import CpuLimit, Limits, MemoryLimit
from contend.model import ArmRecord, CgroupCpuStat, Pressure

NAME_PREFIX = "contend-lab-"
_sequence = itertools.count(1)
ROLES = {"contend-app": "app", "contend-noise": "noise"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def reclaim_stale(engine: Engine) -> list[str]:
    """Remove lab containers whose contend process is gone (it was SIGKILLed)."""
    done = engine.run(
        ["ps", "-a", "--filter", f"name={NAME_PREFIX}", "--format", "{{.Names}}"], check=False
    )
    removed = []
    for name in done.stdout.split():
        owner = name[len(NAME_PREFIX) :].split("-")[0]
        if name.startswith(NAME_PREFIX) and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            engine.remove_container(name)
            removed.append(name)
    return removed


class ContainerGroup:
    """One arm's container; `open()` starts it, `close()` removes it (idempotent)."""

    def __init__(self, engine: Engine, limits: Limits, noise_workers: int) -> None:
        self.engine = engine
        self.requested = limits
        self.limits = limits
        self.noise_workers = noise_workers
        self.name = f"{NAME_PREFIX}{os.getpid()}-{next(_sequence)}"
        self.port = _free_port()
        self.pid: int | None = None
        self.dirs: dict[str, Path] = {}
        self._mode = cgroups.detect_layout().mode or "v1"
        self._started = False

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> ContainerGroup:
        args = ["run", "-d", "--name", self.name]
        if self.requested.cpus is not None:
            args.append(f"--cpus={self.requested.cpus:g}")
        if self.requested.memory_bytes is not None:
            args += ["-m", str(self.requested.memory_bytes)]
        if self.engine.publishes_ports():
            args += ["-p", f"127.0.0.1:{self.port}:5000"]
        else:  # the host's network, the app on loopback only
            args += ["--network", "host", "-e", "HOST=127.0.0.1", "-e", f"PORT={self.port}"]
        args += ["-e", f"CONTEND_NOISE={1 if self.noise_workers else 0}"]
        args += ["-e", f"CONTEND_NOISE_WORKERS={self.noise_workers}", image.IMAGE]
        self._started = True  # from here on close() must remove it, even if run fails
        try:
            self.engine.run(args, timeout_s=120)
            done = self.engine.run(["inspect", "--format", "{{.State.Pid}}", self.name])
            pid_text = done.stdout.strip()
            if not pid_text.isdigit() or int(pid_text) == 0:
                raise ContendError(f"lab container {self.name} is not running")
            self.pid = int(pid_text)
            self.dirs = cgroup_dirs(self.pid)
            if "cpu" not in self.dirs:
                raise ContendError(f"lab container {self.name}: cannot find its cpu cgroup")
            self.limits = self._read_back()
        except BaseException:
            self.close()
            raise
        return self

    def _read_back(self) -> Limits:
        """What the engine really set, from the kernel; refuse a mismatch."""
        cpus = CpuLimit.read_back(self.dirs, self.mode)
        memory = MemoryLimit.read_back(self.dirs, self.mode) if "memory" in self.dirs else None
        want = self.requested
        if (cpus is None) != (want.cpus is None) or (
            cpus is not None and want.cpus is not None and abs(cpus - want.cpus) > 1e-3
        ):
            raise ContendError(f"{self.engine.name} set cpus={cpus}, not {want.cpus}")
        if want.memory_bytes is not None and (
            memory is None or abs(memory - want.memory_bytes) >= os.sysconf("SC_PAGE_SIZE")
        ):
            raise ContendError(f"{self.engine.name} set memory={memory}, not {want.memory_bytes}")
        return Limits(cpus, memory)

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.dirs["cpu"] / "cgroup.procs").read_text().split()]
        except (OSError, KeyError):
            return []

    def cpu_stat(self) -> CgroupCpuStat | None:
        return cgroups.cpu_stat(self.dirs)

    def cpu_pressure(self) -> Pressure | None:
        return cgroups.cpu_pressure(self.dirs)

    def close(self) -> None:
        if not self._started:
            return
        self._started = False
        self.engine.remove_container(self.name)
        # The engine removes the container's cgroups after its processes are gone.
        deadline = time.monotonic() + 10
        while any(d.exists() for d in self.dirs.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [str(d) for d in dict.fromkeys(self.dirs.values()) if d.exists()]
        if left:
            raise ContendError(f"{self.engine.name} left the cgroups of {self.name}: {left}")


class ContainerLab(Lab):
    """The lab's arms, each in a container; analysis and output as the bare lab's."""

    def __init__(self, options: LabOptions, progress: Progress | None = None) -> None:
        super().__init__(options, progress)
        self.current: ContainerGroup | None = None
        self.engine: Engine | None = None

    def pids(self) -> list[int]:
        """The container's processes; roles by name (the image names them)."""
        pids = self.current.pids() if self.current is not None else []
        for pid in pids:
            if pid not in self.roles:
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue
                self.roles[pid] = ROLES.get(comm, "other")
        return pids

    def _start(self, cpus: float | None, noise_workers: int) -> str:
        assert self.engine is not None
        self.close_current()
        group = ContainerGroup(self.engine, Limits(cpus, self.options.memory_bytes), noise_workers)
        self.current = group
        self.group = group
        group.open()
        alive = Path(f"/proc/{group.pid}")
        if not load.wait_healthy(f"{group.base_url}/health", 60.0, alive=alive.exists):
            raise ContendError(f"lab container {group.name}: the app did not answer in 60 s")
        if noise_workers:
            time.sleep(0.3)  # let the noise processes fork before the first sample
        return f"{group.base_url}/compute?n={self.options.compute_n}"

    def run_arms(self) -> tuple[list[ArmRecord], float, float | None]:
        opts = self.options
        self.progress.phase(f"finding {opts.engine}", None)
        self.engine = engines.find(opts.engine)
        reclaim_stale(self.engine)
        self.progress.phase(f"image {image.IMAGE}", None)
        image.build(self.engine)
        self.progress.phase("starting app container", None)
        url = self._start(opts.cpus, 0)
        cost_s, rate = self.request_rate(url)
        records = [self.run_arm("baseline", url, rate)]
        self.progress.phase("starting app + noise container", None)
        url = self._start(opts.cpus, opts.noise_workers)
        records.append(self.run_arm("contention", url, rate))
        if "unlimited" in opts.arms:
            self.progress.phase("starting unlimited container", None)
            url = self._start(None, opts.noise_workers)
            records.append(self.run_arm("unlimited", url, rate))
        return records, rate, cost_s

    def close_current(self) -> None:
        current, self.current = self.current, None
        if current is not None:
            current.close()

    def close(self) -> None:
        try:
            self.close_current()
        finally:
            super().close()
