"""Resolve a container name or ID to its init PID and cgroup, through the engine that
answers: podman or docker, found at run time, never assumed (`contend.collect.engine`).
Only `ENGINE inspect` is run, with the validated name as one argument (no shell)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contend.collect import engine as engines
from contend.collect.cgroups import detect_layout
from contend.errors import ContendError, UsageError


@dataclass(frozen=True)
class Container:
    engine: str
    name: str
    pid: int
    cgroup: Path | None  # the directory of its cgroup (v2 if any, else v1 cpu)
    cgroup_id: int | None  # the cgroup2 id, when the container has a cgroup2 directory


def inspect(name: str, timeout_s: float = 15.0) -> Container:
    """The running container `name` (already validated). No engine answering is a
    ContendError (exit 1); engines answering but none knowing the name, a UsageError
    (exit 2); a stopped container, a ContendError. All one line."""
    unanswered = []
    unknown = []
    for candidate in engines.ENGINES:
        engine, why = engines.probe(candidate, timeout_s)
        if engine is None:
            unanswered.append(why)
            continue
        done = engine.run(
            ["inspect", "--format", "{{.State.Pid}}", name], timeout_s=timeout_s, check=False
        )
        pid_text = done.stdout.strip()
        if done.returncode == 0 and pid_text.isdigit():
            pid = int(pid_text)
            if pid == 0:
                raise ContendError(f"container {name!r} ({engine.name}) is not running")
            cgroup, cgroup_id = cgroup_of(pid)
            return Container(engine.name, name, pid, cgroup, cgroup_id)
        unknown.append(f"{engine.name}: {engines.first_line(done.stderr or done.stdout)}")
    if not unknown:
        raise ContendError("--container: no container engine answers: " + "; ".join(unanswered))
    raise UsageError(f"--container {name!r}: no such container (" + "; ".join(unknown) + ")")


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


def cgroup_dirs(pid: int) -> dict[str, Path]:
    """The directories of `pid`'s cgroup keyed as the lab's sandbox keys its own: "cpu"
    and "memory" (the v1 controllers' directories, or the cgroup2 one) and "unified"
    (the cgroup2 directory: PSI), those that exist."""
    layout = detect_layout()
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return {}
    dirs: dict[str, Path] = {}
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if path in ("", "/"):
            continue
        if hierarchy == "0" and layout.v2_root is not None:
            dirs["unified"] = layout.v2_root / path.lstrip("/")
            if layout.mode == "v2":
                dirs["cpu"] = dirs["memory"] = dirs["unified"]
        for controller in ("cpu", "memory"):
            if controller in controllers.split(",") and controller in layout.v1_roots:
                dirs[controller] = layout.v1_roots[controller] / path.lstrip("/")
    return {key: d for key, d in dirs.items() if d.is_dir()}


class ContainerNames:
    """Container id -> name, from whichever engines answer (asked once each, on first
    sight of an id; an id no engine knows stays unnamed). The exporter and top name
    cgroups with it."""

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self._engines: list[engines.Engine] | None = None
        self._names: dict[str, str | None] = {}

    def name_of(self, short_id: str) -> str | None:
        if short_id in self._names:
            return self._names[short_id]
        if self._engines is None:
            found = (engines.probe(e, self.timeout_s)[0] for e in engines.ENGINES)
            self._engines = [e for e in found if e is not None]
        name = None
        for engine in self._engines:
            try:
                done = engine.run(["inspect", "--format", "{{.Name}}", short_id],
                                  timeout_s=self.timeout_s, check=False)  # fmt: skip
            except ContendError:
                continue
            if done.returncode == 0 and done.stdout.strip():
                name = done.stdout.strip().lstrip("/")  # docker writes "/name"
                break
        self._names[short_id] = name
        return name
