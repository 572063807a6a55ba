"""A real Docker daemon (Debian's docker.io), not podman behind a `docker` command: the
original document's steps 1-4 with the real client, `--container` by name and by ID on
`trace`, `record` and `diagnose`, and `lab --engine docker`.

The tests start their own `dockerd` on a private socket, data root, exec root and
cgroup parent (never a user's daemon), and stop it after: no daemon, containerd, mount
or cgroup of it is left, and the fixture checks that. The daemon has no bridge and no
iptables (nothing of the host's network is touched): containers run on the host's
network, the lab's app listening on loopback only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import contend_command, need
from contend.collect import bpftrace as bt
from test_container import (
    IMAGE,
    Built,
    CgroupWatch,
    Load,
    Running,
    _cgroup_dirs,
    _free_port,
    _only_the_container,
    _wait_healthy,
    built_image,  # noqa: F401 (a fixture)
    host_decoy,  # noqa: F401 (a fixture)
    run_the_documents_steps,
)

PREFIX = f"contend-docker-test-{os.getpid()}"


@dataclass
class Daemon:
    client: str
    env: dict[str, str]  # os.environ with DOCKER_HOST at the private socket
    version: str
    root: Path
    cgroup_parent: str

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        done = subprocess.run(
            [self.client, *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check:
            assert done.returncode == 0, f"docker {' '.join(args[:2])}: {done.stderr}"
        return done.stdout

    def contend(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*contend_command(), *args], capture_output=True, text=True, env=self.env,
            timeout=timeout,
        )  # fmt: skip


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return [p for p in points if p == str(root) or p.startswith(f"{root}/")]


def _parent_dirs(parent: str) -> list[Path]:
    """`parent` in every mounted cgroup hierarchy: dockerd makes it in all of them
    (blkio, devices, freezer, ... too), not only in the ones contend reads."""
    with open("/proc/self/mounts") as f:
        roots = {Path(line.split()[1]) for line in f if line.split()[2] in ("cgroup", "cgroup2")}
    return [r / parent for r in roots if (r / parent).is_dir()]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def daemon(built_image: Built) -> Iterator[Daemon]:  # noqa: F811
    need(os.geteuid() == 0, "needs root")
    dockerd = shutil.which("dockerd")
    need(dockerd is not None, "needs dockerd (make install as root installs docker.io)")
    client = shutil.which("docker")
    need(client is not None, "needs a docker client")
    assert dockerd is not None and client is not None
    # /tmp, not pytest's tmp_path: a unix socket's path must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="contend-dockerd-", dir="/tmp"))
    parent = f"ci-dockerd-{os.getpid()}"
    env = {**os.environ, "DOCKER_HOST": f"unix://{root}/docker.sock"}
    log = (root / "dockerd.log").open("w")
    proc = subprocess.Popen(
        [dockerd, "--iptables=false", "--ip-masq=false", "--bridge=none",
         "--host", env["DOCKER_HOST"], "--data-root", f"{root}/data", "--exec-root",
         f"{root}/exec", "--pidfile", f"{root}/dockerd.pid", "--cgroup-parent", parent],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            done = subprocess.run(
                [client, "version", "--format", "{{.Server.Version}}"],
                capture_output=True, text=True, env=env, timeout=30,
            )  # fmt: skip
            if done.returncode == 0:
                break
            assert proc.poll() is None, (root / "dockerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "dockerd did not answer in 60 s"
            time.sleep(0.2)
        d = Daemon(client, env, done.stdout.strip(), root, parent)
        # The base image podman built (debootstrap, no registry), then contend's own
        # build of the lab image with docker.
        save = subprocess.Popen(["podman", "save", "localhost/contend-base:latest"],
                                stdout=subprocess.PIPE)  # fmt: skip
        loaded = subprocess.run([client, "load"], stdin=save.stdout, capture_output=True,
                                text=True, env=env, timeout=300)  # fmt: skip
        assert save.wait() == 0 and loaded.returncode == 0, loaded.stderr
        build = d.contend("image", "build", "--engine", "docker", timeout=600)
        assert build.returncode == 0, build.stderr
        assert f"engine docker {d.version}" in build.stderr, build.stderr
        yield d
    finally:
        subprocess.run([client, "rm", "-f", *subprocess.run(
            [client, "ps", "-aq"], capture_output=True, text=True, env=env).stdout.split()],
            capture_output=True, env=env, timeout=120)  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        # dockerd leaves its default netns bind-mount and the cgroup parent behind.
        for point in sorted(_mounts_under(root), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        for d in _parent_dirs(parent):
            d.rmdir()
        left_procs = _processes_mentioning(str(root))
        shutil.rmtree(root, ignore_errors=True)
    assert left_procs == [], f"dockerd or containerd outlived the daemon's stop: {left_procs}"
    assert _mounts_under(root) == [] and _parent_dirs(parent) == []


def _start(daemon: Daemon, name: str, *extra: str) -> Running:
    port = _free_port()
    daemon.docker(
        "run", "-d", "--name", name, "--cpus=0.5", "-m", "512m", "--network", "host",
        "-e", "HOST=127.0.0.1", "-e", f"PORT={port}", *extra, IMAGE,
    )  # fmt: skip
    pid = int(daemon.docker("inspect", "-f", "{{.State.Pid}}", name))
    return Running(name, port, pid, _cgroup_dirs(pid))


@pytest.fixture(scope="module")
def app(daemon: Daemon) -> Iterator[Running]:
    running = _start(daemon, f"{PREFIX}-app")
    try:
        _wait_healthy(running.port)
        yield running
    finally:
        daemon.docker("rm", "-f", running.name, check=False)
        left = [d for d in running.cgroup_dirs if d.exists()]
        assert not left, f"container cgroups left behind: {left}"


def _json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.kernel
def test_container_by_name_and_by_id_on_trace_record_and_diagnose(
    daemon: Daemon,
    app: Running,
    host_decoy: int,  # noqa: F811
    tmp_path: Path,
) -> None:
    need(bt.available()[0], f"needs bpftrace: {bt.available()[1]}")
    full_id = daemon.docker("inspect", "-f", "{{.Id}}", app.name).strip()
    short_id = full_id[:12]
    assert re.fullmatch(r"[0-9a-f]{64}", full_id), full_id
    # trace, by name: the container's processes only, at its 0.5-CPU quota.
    with CgroupWatch(app) as watch, Load(app.port, count=15, interval_s=0.2) as load:
        traced = _json(daemon.contend("trace", "cpu", "--container", app.name,
                                      "--duration", "3", "--format", "json"))  # fmt: skip
    assert load.ok >= 10, (load.ok, load.failed)
    assert traced["target"].startswith(f"container {app.name} (docker, pid {app.pid})")
    _only_the_container(traced, watch.seen, host_decoy)
    total = next(r for r in traced["cpu"] if not r["tid"])
    used = total["on_cpu_ns"] / 1e9 / traced["duration_s"]
    assert 0.35 <= used <= 0.6, used
    assert {"contend-app", "contend-noise"} <= {r["comm"] for r in traced["cpu"] if r["tid"]}
    # record, by the short ID docker prints: the same container.
    session = tmp_path / "d.session"
    with CgroupWatch(app) as watch, Load(app.port, count=10, interval_s=0.2):
        done = daemon.contend("record", "--container", short_id, "--duration", "3",
                              "-o", str(session))  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = _json(daemon.contend("report", str(session), "--format", "json"))
    assert report["target"].startswith(f"container {short_id} (docker, pid {app.pid})")
    _only_the_container(report, watch.seen, host_decoy)
    # diagnose, by the full ID: the quota, and the noise among its own processes.
    with Load(app.port, count=15, interval_s=0.2):
        diagnosis = _json(daemon.contend("diagnose", "--container", full_id,
                                         "--duration", "3", "--format", "json"))  # fmt: skip
    assert diagnosis["verdict"]["contention"] is True
    kinds = {c["kind"]: c for c in diagnosis["causes"]}
    assert "quota" in kinds and "contend-noise" in kinds["own_threads"]["comms"], kinds
    limited = [c for c in diagnosis["cgroups"] if c["quota_cpus"] is not None]
    assert [c["quota_cpus"] for c in limited] == [pytest.approx(0.5)]


@pytest.mark.kernel
def test_the_documents_steps_1_to_4_with_the_real_docker(daemon: Daemon, tmp_path: Path) -> None:
    # This daemon has no bridge to publish `-p 5000:5000` through: the app is on the
    # host's network instead, on the same port 5000.
    run_the_documents_steps(
        daemon.client, daemon.env, tmp_path, publish="--network host", engine="docker"
    )


def _lab_containers(daemon: Daemon, owner: int) -> list[str]:
    return daemon.docker(
        "ps", "-a", "--filter", f"name=contend-lab-{owner}-", "--format", "{{.Names}}"
    ).split()


@pytest.mark.kernel
def test_lab_engine_docker_runs_each_arm_in_a_container(daemon: Daemon, tmp_path: Path) -> None:
    need(bt.available()[0], f"needs bpftrace: {bt.available()[1]}")
    out = tmp_path / "lab.json"
    proc = subprocess.Popen(
        [*contend_command(), "lab", "--engine", "docker", "--duration", "4", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon.env,
    )  # fmt: skip
    seen: dict[str, str] = {}  # container -> its CONTEND_NOISE
    try:
        while proc.poll() is None:
            for name in _lab_containers(daemon, proc.pid):
                if name not in seen:
                    env = daemon.docker("inspect", "-f",
                                        "{{range .Config.Env}}{{println .}}{{end}}", name,
                                        check=False)  # fmt: skip
                    noise = re.findall(r"^CONTEND_NOISE=(\d)$", env, re.M)
                    seen[name] = noise[0] if noise else "?"
            time.sleep(0.2)
        stdout, stderr = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "in docker containers of 0.5 CPU, 512 MiB" in stdout
    assert list(seen.values()) == ["0", "1"], seen
    assert _lab_containers(daemon, proc.pid) == []
    result = json.loads(out.read_text())
    assert (result["config"]["engine"], result["config"]["cpus"]) == ("docker", 0.5)
    baseline, contention = (arm["metrics"] for arm in result["arms"])
    assert baseline["cpu_cores"].get("noise", 0) == 0
    assert contention["cpu_cores"]["noise"] > 0.1
    assert contention["throttled_period_ratio"] > 0.5 > baseline["throttled_period_ratio"]
    assert result["arms"][1]["verdict"]["contention"] is True
