"""The original document's container, for real: the image `dtrace-cpu-contention` built
without a registry, run by podman under `--cpus=0.5 -m 512m`, traced by name with each
monitor, and the document's steps 1-4 typed with the `docker` command.

Kernel tests need root, bpftrace and podman (`make install` as root installs them);
under CONTEND_REQUIRE_KERNEL=1 a missing one fails instead of skipping. Every container a
test starts is removed (`rm -f`) in a `finally`, and its cgroups are checked gone.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import TIME_SCALE, contend_command, need
from contend.collect import bpftrace as bt
from contend.collect.cgroups import detect_layout
from contend.collect.procfs import read_cpu_stat_file
from contend.lab import image

IMAGE = image.IMAGE
PREFIX = f"contend-test-{os.getpid()}"


# --- pure: the build's inputs -------------------------------------------------------------


def test_containerfile_copies_exactly_the_image_sources() -> None:
    text = image.CONTAINERFILE.read_text()
    copied = set()
    for line in text.splitlines():
        if line.startswith("COPY "):
            copied.update(w.removeprefix("src/contend/") for w in line.split()[1:-1])
    assert copied == set(image.IMAGE_SOURCES)
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^FROM \$\{BASE\}$", text, re.M)
    assert "HEALTHCHECK" in text and "EXPOSE 5000" in text


def test_image_sources_do_not_need_contend_internals() -> None:
    """The image carries six files and Flask/gunicorn; nothing else of contend."""
    allowed = {"contend.prctl", "contend.lab.app", "contend.lab.noise"}
    for rel in image.IMAGE_SOURCES:
        source = (image.PACKAGE_ROOT / rel).read_text()
        imported = set(re.findall(r"^\s*(?:from|import) (contend[\w.]*)", source, re.M))
        assert imported <= allowed, (rel, imported - allowed)


def test_mirror_is_read_from_apt_sources_in_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://ignored.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] https://packages.example.com/apt cloud main\n"
        "deb http://security.example/debian-security bookworm-security main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert image.debian_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text("deb http://one.example/debian bookworm main contrib\n")
    assert image.debian_mirror("bookworm", tmp_path) == "http://one.example/debian"
    with pytest.raises(Exception, match="no apt source for trixie main"):
        image.debian_mirror("trixie", tmp_path)


def test_podman_dropin_stays_within_hard_limits(tmp_path: Path) -> None:
    text = image.podman_dropin_text(nofile_hard=20000, nproc_hard=96365)
    assert text.startswith(image.DROPIN_MARKER)
    assert 'default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]' in text
    assert 'runtime = "runc"' in text and 'cgroup_manager = "cgroupfs"' in text
    # Someone else's file is never rewritten.
    theirs = tmp_path / "50-contend.conf"
    theirs.write_text("[engine]\nruntime = 'crun'\n")
    assert "left as it is" in image.ensure_podman_config(theirs)
    assert theirs.read_text() == "[engine]\nruntime = 'crun'\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["image", "build", "--engine", "lxc"], "--engine: 'lxc' is not one of podman, docker"),
        (["image", "build", "--base", "x; rm -rf /"], "is not an image reference"),
        (["image", "build", "--base", "Python:3.11"], "is not an image reference"),
    ],
)
def test_image_build_bad_input_is_one_line(args: list[str], expected: str) -> None:
    done = subprocess.run([*contend_command(), *args], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr


def test_no_engine_is_one_line(tmp_path: Path) -> None:
    """PATH without podman or docker: exit 1 and what each engine said, for the image
    build and for --container alike."""
    env = {**os.environ, "PATH": str(tmp_path)}
    for args in (["image", "build"], ["trace", "cpu", "--container", "web"]):
        done = subprocess.run([*contend_command(), *args], capture_output=True, text=True, env=env)
        assert done.returncode == 1, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert "no container engine answers: podman: not installed; docker: not installed" in (
            done.stderr
        )


def test_docker_client_without_daemon_is_passed_over(tmp_path: Path) -> None:
    """A Docker CLI whose daemon is not running does not answer; the error says why."""
    client = _real_docker_client()
    if client is None:
        pytest.skip("no Docker client without a daemon on this machine")
    (tmp_path / "docker").symlink_to(client)
    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run(
        [*contend_command(), "image", "build", "--engine", "docker"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "docker: Cannot connect to the Docker daemon" in done.stderr


def _real_docker_client() -> str | None:
    for candidate in ("/usr/local/bin/docker", "/usr/bin/docker"):
        path = Path(candidate)
        if path.is_file() and path.read_bytes()[:2] != b"#!":
            probe = subprocess.run(
                [candidate, "version", "--format", "{{.Server.Version}}"],
                capture_output=True,
                timeout=20,
            )
            if probe.returncode != 0:
                return candidate
    return None


# --- the image, for real ------------------------------------------------------------------


@dataclass
class Built:
    seconds: float
    stdout: str


def _podman() -> str:
    need(os.geteuid() == 0, "needs root")
    path = shutil.which("podman")
    need(path is not None, "needs podman (make install as root installs it)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def built_image() -> Built:
    """`contend image build`, once per session: the first build on a fresh machine runs
    debootstrap (about 45 s); later ones reuse what exists."""
    _podman()
    started = time.monotonic()
    done = subprocess.run(
        [*contend_command(), "image", "build", "--engine", "podman"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr
    return Built(time.monotonic() - started, done.stdout)


def _images() -> set[str]:
    done = subprocess.run(
        ["podman", "images", "-a", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(done.stdout.split("\n")) - {""}


@pytest.mark.kernel
def test_second_build_reuses_and_leaves_only_the_two_images(built_image: Built) -> None:
    assert f"{IMAGE}:" in built_image.stdout
    before = _images()
    started = time.monotonic()
    done = subprocess.run(
        [*contend_command(), "image", "build"], capture_output=True, text=True, timeout=300
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert f"{IMAGE}: up to date" in done.stdout and "base localhost/contend-base reused" in (
        done.stdout
    )
    assert seconds < 20, seconds  # no debootstrap, no build
    assert _images() == before
    names = {line.split()[0] for line in before}
    assert {f"localhost/{IMAGE}:latest", "localhost/contend-base:latest"} <= names
    assert not any(n.startswith("<none>") for n in names), names
    # The label that makes the second build a no-op is the digest of today's inputs.
    label = subprocess.run(
        [
            "podman",
            "image",
            "inspect",
            "--format",
            '{{index .Config.Labels "contend.context"}}',
            IMAGE,
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert label == image.context_digest(image.LOCAL_BASE)


# --- a running container ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    name: str
    port: int
    pid: int  # State.Pid: the container's init, on the host
    cgroup_dirs: list[Path] = field(default_factory=list)

    def usage_ns(self) -> int:
        """The container's CPU time so far, as its cgroup counts it (cpu.stat's usage on
        cgroup2, also the controller-less one beside v1; cpuacct.usage on pure v1)."""
        for d in self.cgroup_dirs:
            stat = read_cpu_stat_file(d / "cpu.stat")
            if stat is not None and stat.usage_ns is not None:
                return stat.usage_ns
        for d in self.cgroup_dirs:
            if (d / "cpuacct.usage").exists():
                return int((d / "cpuacct.usage").read_text())
        raise AssertionError(f"no CPU usage counter in {self.cgroup_dirs}")

    def procs(self) -> set[int]:
        pids: set[int] = set()
        for d in self.cgroup_dirs:
            try:
                pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return pids


def _cgroup_dirs(pid: int) -> list[Path]:
    """Every directory of `pid`'s cgroups, v1 controllers and cgroup2 alike."""
    layout = detect_layout()
    dirs = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and layout.v2_root is not None:
            dirs.append(layout.v2_root / path.lstrip("/"))
        for ctl in controllers.split(","):
            if ctl in layout.v1_roots:
                dirs.append(layout.v1_roots[ctl] / path.lstrip("/"))
    return sorted({d for d in dirs if d.is_dir() and path not in ("", "/")})


def _wait_healthy(port: int, timeout_s: float = 60) -> None:
    timeout_s *= TIME_SCALE  # the app's start-up under a 0.5-CPU quota, in a TCG VM too
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the app on port {port} did not answer in {timeout_s} s")
        time.sleep(0.2)


# Where the kernel cannot make podman's bridge (`make vmtest`'s VM has no modules to
# load), the app runs on the host's network, on loopback only.
HOST_NETWORK = os.environ.get("CONTEND_TEST_HOST_NETWORK") == "1"


def _publish(port: int) -> list[str]:
    if HOST_NETWORK:
        return ["--network", "host", "-e", "HOST=127.0.0.1", "-e", f"PORT={port}"]
    return ["-p", f"127.0.0.1:{port}:5000"]


def _start(name: str, *extra: str) -> Running:
    podman = _podman()
    port = _free_port()
    done = subprocess.run(
        [
            podman,
            "run",
            "-d",
            "--name",
            name,
            "--cpus=0.5",
            "-m",
            "512m",
            *_publish(port),
            *extra,
            IMAGE,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    pid = int(
        subprocess.run(
            [podman, "inspect", "-f", "{{.State.Pid}}", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    return Running(name, port, pid, _cgroup_dirs(pid))


def _remove(running: Running) -> None:
    subprocess.run(["podman", "rm", "-f", running.name], capture_output=True, timeout=120)
    left = [d for d in running.cgroup_dirs if d.exists()]
    assert not left, f"container cgroups left behind: {left}"


@pytest.fixture(scope="module")
def container(built_image: Built) -> Iterator[Running]:
    running = _start(f"{PREFIX}-app")
    try:
        _wait_healthy(running.port)
        yield running
    finally:
        _remove(running)


class Load:
    """`count` GET /compute, one every `interval_s`, in a thread; counts the 200s. Then
    runs `exec_after`, if given."""

    def __init__(
        self,
        port: int,
        count: int = 10,
        interval_s: float = 0.25,
        exec_after: tuple[str, ...] = (),
    ) -> None:
        self.ok = 0
        self.failed = 0
        self.exec_after = exec_after
        self._thread = threading.Thread(target=self._run, args=(port, count, interval_s))

    def _run(self, port: int, count: int, interval_s: float) -> None:
        for _ in range(count):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/compute", timeout=30) as r:
                    self.ok += r.status == 200
            except OSError:
                self.failed += 1
            time.sleep(interval_s)
        if self.exec_after:
            subprocess.run(self.exec_after, capture_output=True, check=True, timeout=60)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(60)


DECOY = """
import sys, time
from contend.prctl import set_comm
set_comm("contend-app")  # the container's app's name, on the host
while True:
    with open("/etc/hostname", "rb") as f:
        f.read()
    end = time.thread_time() + 0.002
    while time.thread_time() < end:
        pass
    time.sleep(0.01)
"""


@pytest.fixture
def host_decoy() -> Iterator[int]:
    """A host process with the app's comm, busy with CPU, syscalls and I/O."""
    proc = subprocess.Popen([sys.executable, "-c", DECOY])
    try:
        deadline = time.monotonic() + 60  # Python starts in seconds on a slow machine
        comm = Path(f"/proc/{proc.pid}/comm")
        while comm.read_text().strip() != "contend-app":
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


class CgroupWatch:
    """Every PID seen in the container's cgroups while tracing (polled every 10 ms), so
    processes that came and went (`podman exec`) count as the container's."""

    def __init__(self, running: Running) -> None:
        self.running = running
        self.seen: set[int] = running.procs()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.seen |= self.running.procs()

    def __enter__(self) -> CgroupWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seen |= self.running.procs()


def _trace(*args: str, timeout: float = 120) -> dict[str, Any]:
    need(bt.available()[0], f"needs bpftrace: {bt.available()[1]}")
    done = subprocess.run(
        [*contend_command(), "trace", *args, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _trace_around(load: Load, tmp_path: Path, *args: str) -> dict[str, Any]:
    """Trace while `load` runs, all of it inside the window: the load starts once the
    first `--interval` summary is out (the probes are attached), and Ctrl-C ends the
    trace after the last request (contend trace then writes its result, as on
    --duration)."""
    need(bt.available()[0], f"needs bpftrace: {bt.available()[1]}")
    result_file, progress = tmp_path / "trace.json", tmp_path / "intervals.jsonl"
    with progress.open("w") as sink:
        proc = subprocess.Popen(
            [
                *contend_command(),
                "trace",
                *args,
                "--interval",
                "0.5",
                "--duration",
                "120",
                "--format",
                "json",
                "-o",
                str(result_file),
            ],
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not progress.read_text().strip():
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "no summary from contend trace in 60 s"
                time.sleep(0.05)
            with load:
                pass  # runs the load to its end
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(result_file.read_text())
    assert "stopped by a signal before the end" in result["notes"]
    return result


def _pids_in(result: dict[str, Any]) -> dict[str, set[int]]:
    return {
        key: {int(r["pid"]) for r in result[key] if r.get("pid")}
        for key in ("syscalls", "cpu", "process", "process_syscalls", "io", "files")
    }


def _only_the_container(result: dict[str, Any], seen: set[int], decoy: int) -> None:
    by_section = _pids_in(result)
    everyone = set().union(*by_section.values())
    assert everyone, "the trace saw nothing of the container"
    assert decoy not in everyone
    outside = everyone - seen
    assert not outside, {k: sorted(v - seen) for k, v in by_section.items() if v - seen}


def _app_worker(running: Running) -> int:
    """The gunicorn worker: the contend-app whose parent is a contend-app."""
    for pid in running.procs():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if comm == "contend-app" and Path(f"/proc/{ppid}/comm").read_text().strip() == comm:
            return pid
    raise AssertionError("no gunicorn worker in the container")


@pytest.mark.kernel
def test_trace_syscalls_sees_the_requests_of_the_container_only(
    container: Running, host_decoy: int, tmp_path: Path
) -> None:
    worker = _app_worker(container)
    load = Load(container.port)
    with CgroupWatch(container) as watch:
        result = _trace_around(load, tmp_path, "syscalls", "--container", container.name)
    assert load.ok == 10 and load.failed == 0, (load.ok, load.failed)
    assert result["target"].startswith(f"container {container.name} (podman, pid {container.pid})")
    _only_the_container(result, watch.seen, host_decoy)
    calls = {r["syscall"]: r["count"] for r in result["syscalls"] if r["pid"] == worker}
    # Each request is one connection: accepted and answered by the worker.
    assert calls.get("accept4", 0) == load.ok, calls
    assert calls.get("sendto", 0) >= load.ok, calls
    # The decoy was busy all along: a trace by name does see it, so its absence above
    # is the --container filter's doing.
    by_name = _trace("syscalls", "--comm", "contend-app", "--duration", "1.5")
    assert host_decoy in {r["pid"] for r in by_name["syscalls"]}


@pytest.mark.kernel
def test_trace_cpu_sees_the_noise_push_the_app_off_the_cpu(
    container: Running, host_decoy: int
) -> None:
    with CgroupWatch(container) as watch, Load(container.port, count=20, interval_s=0.2) as load:
        result = _trace("cpu", "--container", container.name, "--duration", "5")
    assert load.ok >= 10, (load.ok, load.failed)
    _only_the_container(result, watch.seen, host_decoy)
    rows = [r for r in result["cpu"] if r["tid"]]
    total = next(r for r in result["cpu"] if not r["tid"])
    comms = {r["comm"] for r in rows}
    assert {"contend-app", "contend-noise"} <= comms, comms
    # The container as a whole runs at its 0.5-CPU quota (the noise alone wants 2 CPUs).
    used = total["on_cpu_ns"] / 1e9 / result["duration_s"]
    assert 0.35 <= used <= 0.6, used
    # The app's busy threads wait on the run queue for milliseconds per slice...
    app = [r for r in rows if r["comm"] == "contend-app" and r["on_cpu_ns"] > 20e6]
    assert app, rows
    waits = [r["run_queue_latency"]["avg_ns"] for r in app]
    assert max(waits) >= 1e6, waits
    # ... and the noise is among those that took the CPU from it.
    preemptors = {p["comm"]: p["count"] for p in result["preemptors"]}
    assert preemptors.get("contend-noise", 0) >= 10, preemptors
    noise_cpu = sum(r["on_cpu_ns"] for r in rows if r["comm"] == "contend-noise")
    app_cpu = sum(r["on_cpu_ns"] for r in app)
    assert noise_cpu > app_cpu, (noise_cpu, app_cpu)


def _diagnose(*args: str) -> dict[str, Any]:
    need(bt.available()[0], f"needs bpftrace: {bt.available()[1]}")
    done = subprocess.run(
        [*contend_command(), "diagnose", *args, "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


@pytest.mark.kernel
def test_diagnose_names_the_noise_and_the_quota(container: Running) -> None:
    """The lab image with its noise on, under load: the app's worker waits behind the
    noise (a neighbour in its own container) and the container's 0.5-CPU quota; the
    container as a target waits behind its own processes, the noise named."""
    worker = _app_worker(container)
    with Load(container.port, count=20, interval_s=0.2):
        one = _diagnose("--pid", str(worker), "--duration", "3")
        whole = _diagnose("--container", container.name, "--duration", "3")
    assert one["verdict"]["contention"] is True
    kinds = {c["kind"]: c for c in one["causes"]}
    # The noise is one of the neighbours (the machine's other tasks, contend's own
    # sampling among them, may be others), in the container.
    noise = [c for c in one["causes"] if c["kind"] == "neighbour" and "contend-noise" in c["comms"]]
    why = (one["causes"], one["notes"], one["sources"])
    assert noise, why
    assert noise[0]["cgroup"] and "container" in noise[0]["cgroup"], noise
    assert "quota" in kinds, why
    limited = [c for c in one["cgroups"] if c["quota_cpus"] is not None]
    assert [c["quota_cpus"] for c in limited] == [pytest.approx(0.5)]
    assert whole["verdict"]["contention"] is True
    own = next(c for c in whole["causes"] if c["kind"] == "own_threads")
    assert "contend-noise" in own["comms"], whole["causes"]
    assert {"contend-app", "contend-noise"} <= {p["comm"] for p in whole["processes"]}


@pytest.mark.kernel
def test_trace_process_and_io_see_an_exec_inside_the_container(
    container: Running, host_decoy: int, tmp_path: Path
) -> None:
    """`podman exec NAME cat /etc/hostname` joins the container's cgroup: the process
    monitor sees its exec and exit code, io sees it read the container's hostname (its
    12-hex-digit ID, 12 bytes, where the host's is another length)."""

    hostname = subprocess.run(
        ["podman", "exec", container.name, "cat", "/etc/hostname"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert len(hostname) == 12, hostname
    assert len(Path("/etc/hostname").read_text()) != len(hostname)
    load = Load(
        container.port, exec_after=("podman", "exec", container.name, "cat", "/etc/hostname")
    )
    with CgroupWatch(container) as watch:
        result = _trace_around(load, tmp_path, "process", "io", "--container", container.name)
    assert load.ok == 10, (load.ok, load.failed)
    _only_the_container(result, watch.seen, host_decoy)
    cats = [e for e in result["process"] if e["comm"] == "cat"]
    assert [e["event"] for e in cats] == ["exec", "exit"], result["process"]
    assert cats[1]["exit_code"] == 0
    reads = [f for f in result["files"] if f["path"] == "/etc/hostname" and f["op"] == "read"]
    assert [f["bytes"] for f in reads] == [12], result["files"]
    app_ops = {r["op"]: r["count"] for r in result["io"] if r["comm"] == "contend-app"}
    assert app_ops.get("close", 0) >= load.ok, app_ops  # one per connection
    app_sys = [r for r in result["process_syscalls"] if r["comm"] == "contend-app"]
    assert sum(r["syscalls"] for r in app_sys) >= 10 * load.ok, app_sys


@pytest.mark.kernel
def test_trace_says_so_when_the_container_stops(built_image: Built) -> None:
    need(bt.available()[0], f"needs bpftrace: {bt.available()[1]}")
    running = _start(f"{PREFIX}-stop", "-e", "CONTEND_NOISE=0")
    trace: subprocess.Popen[str] | None = None
    try:
        _wait_healthy(running.port)
        trace = subprocess.Popen(
            [
                *contend_command(),
                "trace",
                "cpu",
                "--container",
                running.name,
                "--duration",
                "60",
                "--format",
                "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(4)
        started = time.monotonic()
        subprocess.run(["podman", "stop", "-t", "5", running.name], capture_output=True, check=True)
        out, err = trace.communicate(timeout=60)
        assert time.monotonic() - started < 15
        assert trace.returncode == 0, err
        result = json.loads(out)
        assert f"the target stopped mid-trace (pid {running.pid} exited)" in result["notes"]
        assert result["duration_s"] < 30
    finally:
        if trace is not None and trace.poll() is None:
            trace.kill()
            trace.wait()
        _remove(running)


@pytest.mark.kernel
def test_unknown_container_is_a_usage_error(built_image: Built) -> None:
    done = subprocess.run(
        [*contend_command(), "trace", "cpu", "--container", f"{PREFIX}-nobody"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"--container '{PREFIX}-nobody': no such container (podman:" in done.stderr


# --- the document, verbatim ---------------------------------------------------------------


def _podman_as_docker(bindir: Path) -> str:
    """A `docker` command that runs podman, as Debian's podman-docker does."""
    shim = bindir / "docker"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(_podman())} "$@"\n')
    shim.chmod(0o755)
    return str(shim)


STEPS_1_2 = """
docker run -d --name dtrace-app --cpus=0.5 -m 512m -p 5000:5000 dtrace-cpu-contention
# Find the container's main process PID
CONTAINER_PID=$(docker inspect -f '{{.State.Pid}}' dtrace-app)
echo "Container PID: $CONTAINER_PID"
"""

STEP_4 = """
for i in {1..20}; do
  curl http://localhost:5000/compute > /dev/null 2>&1 &
  sleep 0.5
done
wait
"""

SCRIPTS = ("syscalls.d", "cpu_usage.d", "process_info.d", "io_analysis.d")


def _aggregation(text: str, header: str) -> dict[tuple[str, ...], int]:
    """The `printa("%s  %s  %@d")` lines under `=== header ===`, keyed by their words."""
    rows: dict[tuple[str, ...], int] = {}
    lines = text.split(f"=== {header} ===", 1)[1].splitlines()[1:]
    for line in lines:
        if line.startswith("==="):
            break
        words = line.split()
        if len(words) >= 2 and words[-1].isdigit():
            rows[tuple(words[:-1])] = int(words[-1])
    return rows


@pytest.mark.kernel
def test_the_documents_steps_1_to_4_with_podman_as_docker(
    built_image: Built, tmp_path: Path
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    docker = _podman_as_docker(bindir)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    run_the_documents_steps(docker, env, tmp_path, publish="-p 5000:5000", engine="podman")


def run_the_documents_steps(
    docker: str, env: dict[str, str], tmp_path: Path, publish: str, engine: str
) -> None:
    """Steps 1-4 of the original document typed in bash with `docker` (step 1's image is
    built already), then what each of the four D scripts saw."""
    need(bt.available()[0], f"needs bpftrace: {bt.available()[1]}")
    need(shutil.which("curl") is not None, "needs curl")
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", 5000))
        except OSError:
            need(False, "port 5000 is taken: the document's -p 5000:5000 needs it")
    exists = subprocess.run(
        [docker, "container", "inspect", "dtrace-app"], capture_output=True, env=env
    )
    need(exists.returncode != 0, "a container named dtrace-app exists already")
    bindir = tmp_path / "docker-bin"
    bindir.mkdir()
    (bindir / "docker").symlink_to(docker)
    env = {**env, "PATH": f"{bindir}:{env['PATH']}"}
    tracers: list[subprocess.Popen[str]] = []
    try:
        steps = subprocess.run(
            ["bash", "-c", STEPS_1_2.replace("-p 5000:5000", publish)],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert steps.returncode == 0, steps.stderr
        pid = int(re.findall(r"^Container PID: (\d+)$", steps.stdout, re.M)[0])
        running = Running("dtrace-app", 5000, pid, _cgroup_dirs(pid))
        _wait_healthy(5000)
        worker = _app_worker(running)
        # Step 3: `sudo dtrace -p $CONTAINER_PID -s syscalls.d`, one per script.
        for script in SCRIPTS:
            tracers.append(
                subprocess.Popen(
                    [*contend_command(), "dtrace", "-s", script, "-p", str(pid)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for tracer in tracers:
            assert tracer.stderr is not None
            while "matched" not in (line := tracer.stderr.readline()):
                assert line, f"contend dtrace ended before tracing: {tracer.args}"
        # Step 4, in another terminal.
        load = subprocess.run(["bash", "-c", STEP_4], env=env, timeout=120)
        assert load.returncode == 0
        outputs = {}
        for script, tracer in zip(SCRIPTS, tracers, strict=True):
            tracer.send_signal(signal.SIGINT)  # Ctrl-C: dtrace prints its aggregations
            out, err = tracer.communicate(timeout=60)
            assert tracer.returncode == 0, err
            outputs[script] = out
    finally:
        for tracer in tracers:
            if tracer.poll() is None:
                tracer.kill()
                tracer.wait()
        subprocess.run(
            [docker, "rm", "-f", "dtrace-app"], capture_output=True, timeout=120, env=env
        )
    # Each script saw the twenty requests (at least: it matches by name, as dtrace does).
    calls = _aggregation(outputs["syscalls.d"], "System Calls Summary")
    assert calls.get(("contend-app", "accept4"), 0) >= 20, calls
    assert calls.get(("contend-app", "sendto"), 0) >= 20, calls
    on_cpu = re.findall(r"contend-app \(PID:(\d+)\) on CPU", outputs["cpu_usage.d"])
    # The app went on a CPU at least once per request (16 of them for the worker's PID
    # alone were seen once: a thread can serve two requests in one stint on the CPU).
    assert len(on_cpu) >= 20 and str(worker) in on_cpu, on_cpu
    assert "contend-noise (PID:" in outputs["cpu_usage.d"]
    activity = _aggregation(outputs["process_info.d"], "Process Activity Summary")
    assert activity.get(("contend-app",), 0) >= 20 * 10, activity
    ops = _aggregation(outputs["io_analysis.d"], "I/O Operations Summary")
    assert ops.get(("contend-app", "close"), 0) >= 20, ops
    gone = subprocess.run(
        [docker, "container", "inspect", "dtrace-app"], capture_output=True, env=env
    )
    assert gone.returncode != 0, engine
    assert not [d for d in running.cgroup_dirs if d.exists()]


# --- contend lab --engine ------------------------------------------------------------------


def _lab_containers(owner: int) -> list[str]:
    done = subprocess.run(
        ["podman", "ps", "-a", "--filter", f"name=contend-lab-{owner}-", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--engine", "lxc"], "--engine: 'lxc' is not one of podman, docker"),
        (["--engine", "podman", "--no-sandbox"], "drop --no-sandbox"),
    ],
)
def test_lab_engine_bad_input_is_one_line(args: list[str], expected: str) -> None:
    done = subprocess.run([*contend_command(), "lab", *args], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr


@pytest.mark.kernel
def test_lab_engine_runs_each_arm_in_a_container(built_image: Built, tmp_path: Path) -> None:
    need(bt.available()[0], f"needs bpftrace: {bt.available()[1]}")
    out = tmp_path / "lab.json"
    proc = subprocess.Popen(
        [*contend_command(), "lab", "--engine", "podman", "--duration", "4", "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[str, str] = {}  # container -> its CONTEND_NOISE
    while proc.poll() is None:
        for name in _lab_containers(proc.pid):
            if name not in seen:
                env = subprocess.run(
                    ["podman", "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", name],
                    capture_output=True,
                    text=True,
                ).stdout
                noise = re.findall(r"^CONTEND_NOISE=(\d)$", env, re.M)
                seen[name] = noise[0] if noise else "?"
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert "in podman containers of 0.5 CPU, 512 MiB" in stdout
    # One container per arm, app alone then app + noise, and none left.
    assert list(seen.values()) == ["0", "1"], seen
    assert _lab_containers(proc.pid) == []
    result = json.loads(out.read_text())
    cfg = result["config"]
    assert (cfg["engine"], cfg["cpus"], cfg["memory_bytes"]) == ("podman", 0.5, 512 << 20)
    baseline, contention = (arm["metrics"] for arm in result["arms"])
    assert baseline["cpu_cores"].get("noise", 0) == 0
    assert contention["cpu_cores"]["noise"] > 0.1
    # Measured through the container's cgroup: its quota throttles the contention arm.
    assert contention["throttled_period_ratio"] > 0.5 > baseline["throttled_period_ratio"]
    assert contention["wait_to_run_ratio"] > 2 * baseline["wait_to_run_ratio"]
    assert result["arms"][1]["verdict"]["contention"] is True


@pytest.mark.kernel
def _end_lab(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """Whatever a lab test did: the lab ended and its containers removed."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for name in _lab_containers(proc.pid):
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_lab_engine_removes_its_container_on_a_signal(
    built_image: Built, sig: signal.Signals, code: int
) -> None:
    proc = subprocess.Popen(
        [*contend_command(), "lab", "--engine", "podman", "--duration", "60"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (names := _lab_containers(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        pid = int(
            subprocess.run(
                ["podman", "inspect", "-f", "{{.State.Pid}}", names[0]],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        dirs = _cgroup_dirs(pid)
        time.sleep(3)  # into calibration or the arm
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == code, stderr
        assert _lab_containers(proc.pid) == []
        assert dirs and not [d for d in dirs if d.exists()]
    finally:
        _end_lab(proc)


@pytest.mark.kernel
def test_lab_engine_reclaims_the_container_of_a_sigkilled_run(built_image: Built) -> None:
    from contend.collect import engine as engines
    from contend.lab.container_arms import reclaim_stale

    proc = subprocess.Popen(
        [*contend_command(), "lab", "--engine", "podman", "--duration", "60"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (names := _lab_containers(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1)
        proc.kill()
        proc.wait()
        assert _lab_containers(proc.pid) == names  # SIGKILL: nothing could clean up
        assert reclaim_stale(engines.find("podman")) == names
        assert _lab_containers(proc.pid) == []
    finally:
        _end_lab(proc)


@pytest.mark.kernel
def test_record_a_container_then_report_it(
    container: Running, host_decoy: int, tmp_path: Path
) -> None:
    """`contend record --container` (tracefs, every event) keeps only the container's
    processes; the report shows the noise taking the CPU under the quota."""
    session = tmp_path / "c.session"
    with CgroupWatch(container) as watch, Load(container.port, count=10, interval_s=0.2) as load:
        used0, at0 = container.usage_ns(), time.monotonic_ns()
        done = subprocess.run(
            [*contend_command(), "record", "--container", container.name, "--duration", "3",
             "-o", str(session)], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        used1, at1 = container.usage_ns(), time.monotonic_ns()
    assert done.returncode == 0, done.stderr
    assert load.ok >= 5, (load.ok, load.failed)
    report = subprocess.run([*contend_command(), "report", str(session), "--format", "json"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert report.returncode == 0, report.stderr
    result = json.loads(report.stdout)
    assert result["backend"] == "tracefs" and result["target"].startswith(
        f"container {container.name}"
    )
    _only_the_container(result, watch.seen, host_decoy)
    rows = [r for r in result["cpu"] if r["tid"]]
    noise = sum(r["on_cpu_ns"] for r in rows if r["comm"] == "contend-noise")
    app = sum(r["on_cpu_ns"] for r in rows if r["comm"] == "contend-app")
    # Most of the container's CPU is the noise's, and all of it is the quota's 0.5 CPU
    # (the noise keeps it busy): the rate its cgroup counted over the whole `record` run
    # (a busy TCG guest leaves it below 0.5), never above the quota. The slices that come
    # back from throttling on CPU 1, whose switch from idle this VM's ftrace does not
    # record, start at their first sched_stat_runtime: counted from the throttle
    # instead, this was 1.18 CPUs.
    assert noise > app > 0
    total = sum(r["on_cpu_ns"] for r in rows)
    kernel = (used1 - used0) / (at1 - at0)
    assert kernel <= 0.5 * 1.05
    assert total / (result["duration_s"] * 1e9) == pytest.approx(kernel, abs=0.08), (
        kernel, result["notes"],
    )  # fmt: skip
