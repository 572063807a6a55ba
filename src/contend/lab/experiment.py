"""The experiment: the app alone, then the app beside noise, in one CPU-limited sandbox.

1. Open the sandbox (cgroup with --cpus and --memory), start the app inside it.
2. Calibrate: measure the CPU cost of one /compute and pick the request rate that uses
   about 40% of the quota, so the baseline is uncontended by construction.
3. Arm `baseline`: open-loop load at that rate, procfs sampling of the sandbox.
4. Start the noise inside the same sandbox; arm `contention`: same load, same duration.
5. Analyse each arm, compare them; stop everything and remove the sandbox.

With `record_dir` or `timeline` (`contend lab --record DIR / --perfetto FILE`), each arm
also runs a tracefs `Recorder` following the app's and the noise's processes: its session
saved as DIR/ARM.session, its timeline kept for the lab's Perfetto file.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from contend.analysis.advice import advise, latency_summary
from contend.analysis.compare import compare_arms
from contend.analysis.diagnosis import analyse_arm
from contend.analysis.verdict import reference_rows, separating_rows
from contend.collect import bpftrace as bt
from contend.collect.cgroups import bandwidth_slice_us
from contend.collect.procfs import ProcFS, ProcGone
from contend.collect.sampler import Sampler
from contend.errors import ContendError
from contend.lab import app as app_module
from contend.lab import load
from contend.lab.sandbox import Limits, Sandbox
from contend.model import (
    AdviceCheck,
    ArmRecord,
    ArmTimeline,
    CgroupCpuStat,
    CpuSlice,
    LabConfig,
    LabResult,
    MeasuredQuota,
    Pressure,
    RequestSample,
    SchedTimes,
    Snapshot,
)
from contend.monitors import TraceOptions, breakdown, build_program, syscalls, thread_owner
from contend.monitors import session as sessions
from contend.monitors.demand import demand_of
from contend.monitors.tracefs_trace import Recorder, TracefsRun
from contend.prctl import die_with_parent
from contend.target import Target

ARMS = ("baseline", "contention", "unlimited")

# Calibration: the baseline uses this share of the CPU the app can get (the quota, at most
# one CPU: one gunicorn worker runs Python code on one CPU at a time, GIL).
BASELINE_LOAD_SHARE = 0.4
WARMUP_DISCARD = 5
WARMUP_MEASURED = 20


@dataclass(frozen=True)
class LabOptions:
    cpus: float | None = 0.5
    memory_bytes: int | None = 512 << 20
    noise_workers: int = 2
    duration_s: float = 20.0
    rate_per_s: float | None = None  # None: calibrate
    concurrency: int = 16
    compute_n: int = app_module.DEFAULT_N
    sandbox: bool = True
    sample_interval_s: float = 0.25
    request_timeout_s: float = load.DEFAULT_TIMEOUT_S
    # "procfs": sampling only; "bpftrace": also the app's syscalls, exact, with latency;
    # "auto": bpftrace when available (root and bpftrace installed).
    backend: str = "auto"
    # Arms in the order they run: baseline (app alone, quota), contention (app + noise,
    # quota), unlimited (app + noise, the quota lifted: waiting behind neighbours only).
    arms: tuple[str, ...] = ("baseline", "contention")
    # "podman" or "docker": each arm in its own container of the lab's image, with the
    # same --cpus/--memory (contend.lab.container_arms); None: the bare cgroup sandbox.
    engine: str | None = None
    # Each arm also recorded with tracefs (the app's and the noise's processes, every
    # event): its session file saved in `record_dir` as ARM.session; with `timeline`,
    # the arm's timeline kept in `Lab.timelines` (the lab's Perfetto file). Needs root.
    record_dir: Path | None = None
    timeline: bool = False

    @property
    def recording(self) -> bool:
        return self.record_dir is not None or self.timeline


class MeasuredGroup(Protocol):
    """The cgroup an arm is measured through: the sandbox, or an arm's container."""

    @property
    def limits(self) -> Limits: ...

    @property
    def mode(self) -> str: ...

    def pids(self) -> list[int]: ...

    def cpu_stat(self) -> CgroupCpuStat | None: ...

    def cpu_pressure(self) -> Pressure | None: ...


class Progress(Protocol):
    """What the experiment tells whoever watches it (the CLI draws it; tests ignore it)."""

    def phase(self, name: str, total: int | None) -> None: ...

    def request_done(self, sample: RequestSample) -> None: ...


class _Quiet:
    def phase(self, name: str, total: int | None) -> None:
        pass

    def request_done(self, sample: RequestSample) -> None:
        pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Lab:
    def __init__(self, options: LabOptions, progress: Progress | None = None) -> None:
        self.options = options
        self.progress: Progress = progress or _Quiet()
        self.procfs = ProcFS()
        self.sandbox: Sandbox | None = None
        self.group: MeasuredGroup | None = None  # what run_arm measures
        self.app: subprocess.Popen[bytes] | None = None
        self.noise: subprocess.Popen[bytes] | None = None
        # This process drives the load and samples: name it when the app waits behind it.
        self.roles: dict[int, str] = {os.getpid(): "load generator"}
        self._logs: list[IO[bytes]] = []
        self.timelines: list[ArmTimeline] = []
        self._recorder: Recorder | None = None

    # --- processes ------------------------------------------------------------------------

    def _spawn(self, module: str, *args: str) -> subprocess.Popen[bytes]:
        join = self.sandbox.join_function() if self.sandbox else None

        def preexec() -> None:
            if join is not None:
                join()
            die_with_parent(signal.SIGTERM)

        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close(), read on failure
        self._logs.append(log)
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            preexec_fn=preexec,
        )

    def _roots(self) -> dict[int, str]:
        roots = {}
        if self.app is not None:
            roots[self.app.pid] = "app"
        if self.noise is not None:
            roots[self.noise.pid] = "noise"
        return roots

    def _role(self, pid: int, roots: dict[int, str]) -> str:
        seen = 0
        p = pid
        while p > 1 and seen < 64:
            if p in roots:
                return roots[p]
            try:
                p = self.procfs.stat(p).ppid
            except (ProcGone, ValueError):
                break
            seen += 1
        return "other"

    def pids(self) -> list[int]:
        """The processes to sample, with their roles recorded as they are first seen."""
        roots = self._roots()
        if self.group is not None:
            pids = self.group.pids()
        else:
            pids = [d for root in roots for d in self.procfs.descendants(root)]
        for pid in pids:
            if pid not in self.roles:
                self.roles[pid] = self._role(pid, roots)
        return pids

    def _stop(self, proc: subprocess.Popen[bytes] | None, timeout_s: float = 5.0) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _app_error(self) -> str:
        log = self._logs[0] if self._logs else None
        if log is None:
            return ""
        log.seek(0)
        lines = log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    # --- phases ---------------------------------------------------------------------------

    def _start_app(self) -> str:
        port = _free_port()
        self.app = self._spawn("contend.lab.app", "--port", str(port))
        base = f"http://127.0.0.1:{port}"
        app = self.app
        if not load.wait_healthy(f"{base}/health", 30.0, alive=lambda: app.poll() is None):
            raise ContendError(
                f"the lab app did not start: {self._app_error() or 'no answer on ' + base}"
            )
        return base

    def _app_cpu_ns(self) -> int:
        total = 0
        for t in self.procfs.tasks(pid for pid, role in self.roles.items() if role == "app"):
            total += t.on_cpu_ns or 0
        return total

    def request_rate(self, url: str) -> tuple[float | None, float]:
        """The load's rate: as given, or calibrated (then with the measured CPU cost)."""
        if self.options.rate_per_s is not None:
            return None, self.options.rate_per_s
        return self.calibrate(url)

    def calibrate(self, url: str) -> tuple[float, float]:
        """(CPU seconds per request, request rate) measured on the running app."""
        self.progress.phase("calibrating", WARMUP_DISCARD + WARMUP_MEASURED)
        for sample in load.sequential(url, WARMUP_DISCARD, self.options.request_timeout_s):
            self.progress.request_done(sample)
        self.pids()
        before = self._app_cpu_ns()
        samples = load.sequential(url, WARMUP_MEASURED, self.options.request_timeout_s)
        for sample in samples:
            self.progress.request_done(sample)
        after = self._app_cpu_ns()
        failed = [s for s in samples if s.status != 200]
        if failed:
            raise ContendError(f"calibration: {len(failed)} of {len(samples)} requests failed")
        cost_s = max((after - before) / 1e9 / WARMUP_MEASURED, 1e-4)
        capacity = min(self.options.cpus or 1.0, 1.0)
        return cost_s, BASELINE_LOAD_SHARE * capacity / cost_s

    def run_arm(self, name: str, url: str, rate: float) -> ArmRecord:
        opts = self.options
        sb = self.group
        sampler = Sampler(
            self.pids,
            interval_s=opts.sample_interval_s,
            cgroup_cpu=sb.cpu_stat if sb else None,
            cgroup_pressure=sb.cpu_pressure if sb else None,
            procfs=self.procfs,
        )
        self.progress.phase(name, max(int(rate * opts.duration_s), 1))
        tracer = self._syscall_tracer()
        if tracer is not None:
            tracer.start()  # compiles for a second or two: before the window opens
        recorder: Recorder | None = None
        traced_from = time.monotonic()
        try:
            if opts.recording:  # inside: a failure here still stops the tracer above
                recorder = self._start_recorder()
            sampler.start()
            start = time.monotonic_ns()
            requests = self._load(url, rate)
        finally:
            snapshots = sampler.stop()
            end = time.monotonic_ns()
            if recorder is not None:
                recorder.halt()
            traced_s = time.monotonic() - traced_from if tracer is not None else None
            out = tracer.stop() if tracer is not None else None
        if recorder is not None:
            self._keep_recording(name, recorder, start, end, snapshots)
        times = breakdown.sched_times(out) if out is not None else None
        if times is not None:
            times = self._resolve_occupants(times)
        return ArmRecord(
            name=name,
            start_ns=start,
            end_ns=end,
            snapshots=snapshots,
            roles=dict(self.roles),
            requests=tuple(requests),
            cpu_limit=sb.limits.cpus if sb else None,
            syscalls=tuple(syscalls.rows(out, resolve=thread_owner)) if out is not None else None,
            syscall_window_s=traced_s,
            sched_times=times,
        )

    def _start_recorder(self) -> Recorder:
        """tracefs following the app's and the noise's processes running now (and what
        they create); closed by `_keep_recording` or, on any exit, by `close()`."""
        self.pids()  # learn the roles of what runs now
        pids = sorted(pid for pid, role in self.roles.items() if role in ("app", "noise"))
        pids = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
        if not pids:
            raise ContendError("the lab has no running process to record")
        recorder = Recorder(("syscalls", "cpu", "process"))
        self._recorder = recorder
        recorder.start(pids)
        return recorder

    def _keep_recording(
        self,
        name: str,
        recorder: Recorder,
        start_ns: int,
        end_ns: int,
        snapshots: tuple[Snapshot, ...],
    ) -> None:
        """The arm's session file and timeline, from the recorder (then given back)."""
        try:
            traced = {pid: r for pid, r in self.roles.items() if r in ("app", "noise")}
            who = "; ".join(
                f"{role} "
                + " ".join(str(p) for p in sorted(p for p, r in traced.items() if r == role))
                for role in ("app", "noise")
                if role in traced.values()
            )
            run = recorder.stop(f"lab arm {name} ({who})")
        finally:
            recorder.close()
            self._recorder = None
        opts = self.options
        if opts.record_dir is not None:
            sessions.save(run, opts.record_dir / f"{name}.session")
        if opts.timeline:
            self.timelines.append(
                ArmTimeline(
                    name=name,
                    start_ns=start_ns,
                    end_ns=end_ns,
                    timeline=run.timeline(),
                    waits=_waits(run),
                    roles=dict(self.roles),
                    snapshots=snapshots,
                )
            )

    def _resolve_occupants(self, times: SchedTimes) -> SchedTimes:
        """Name the process of each task that held a CPU while the app waited (now,
        while the noise still runs)."""
        occupants = []
        for o in times.occupants:
            owner = self.procfs.owner(o.tid) if o.tid else None
            occupants.append(replace(o, pid=owner[0] if owner else (0 if o.tid == 0 else None)))
        return replace(times, occupants=tuple(occupants))

    @property
    def use_bpftrace(self) -> bool:
        if self.options.backend == "procfs":
            return False
        ok, why = bt.available()
        if not ok and self.options.backend == "bpftrace":
            raise ContendError(f"--backend bpftrace: {why}")
        return ok

    def _syscall_tracer(self) -> bt.Bpftrace | None:
        """bpftrace counting and timing every syscall of the app's processes."""
        if not self.use_bpftrace:
            return None
        self.pids()  # learn the roles of what runs now
        app_pids = tuple(sorted(pid for pid, role in self.roles.items() if role == "app"))
        if not app_pids:
            raise ContendError("the lab app has no running process to trace")
        program = build_program(TraceOptions(("syscalls", "breakdown"), Target(pids=app_pids)))
        return bt.Bpftrace(program)

    def run(self) -> LabResult:
        try:
            records, rate, cost_s = self.run_arms()
        finally:
            self.close()
        return self.result(records, rate, cost_s)

    def run_arms(self) -> tuple[list[ArmRecord], float, float | None]:
        opts = self.options
        if opts.sandbox:
            self.sandbox = Sandbox(Limits(opts.cpus, opts.memory_bytes)).open()
            self.group = self.sandbox
        self.progress.phase("starting app", None)
        base = self._start_app()
        url = f"{base}/compute?n={opts.compute_n}"
        cost_s, rate = self.request_rate(url)
        records = [self.run_arm("baseline", url, rate)]
        self.progress.phase("starting noise", None)
        self.noise = self._spawn("contend.lab.noise", "--workers", str(opts.noise_workers))
        time.sleep(0.3)  # let the noise processes fork before the first sample
        records.append(self.run_arm("contention", url, rate))
        if "unlimited" in opts.arms and self.sandbox is not None:
            self.sandbox.set_limits(Limits(None, opts.memory_bytes))
            records.append(self.run_arm("unlimited", url, rate))
            self.sandbox.set_limits(Limits(opts.cpus, opts.memory_bytes))
        return records, rate, cost_s

    def check_advice(self, quotas: tuple[float, ...]) -> AdviceCheck:
        """`contend lab --verify-advice`: the app alone and unlimited under the calibrated
        load, recorded with tracefs (the scheduler's events); `advise` on that demand and
        the load's requests; then an arm at each quota asked and the one recommended, each
        measured by its group's cpu.stat and the load's latency."""
        opts = self.options
        self.sandbox = Sandbox(Limits(None, opts.memory_bytes)).open()
        self.group = self.sandbox
        self.progress.phase("starting app", None)
        url = f"{self._start_app()}/compute?n={opts.compute_n}"
        _, rate = self.request_rate(url)
        self.pids()
        app_pids = sorted(p for p, r in self.roles.items() if r == "app")
        recorder = Recorder(("cpu",))
        self._recorder = recorder
        recorder.start(app_pids)
        self.progress.phase("recording unlimited", max(int(rate * opts.duration_s), 1))
        try:
            requests = self._load(url, rate)
            recorder.halt()
            run = recorder.stop("lab app " + " ".join(map(str, app_pids)))
        finally:
            recorder.close()
            self._recorder = None
        answered = [(r.intended_ns, r.latency_ns) for r in requests if r.status == 200]
        advice = advise(
            demand_of(run),
            quotas,
            slice_us=bandwidth_slice_us(),
            requests=answered,
        )
        recommended = advice.recommended_quota_cpus
        asked = sorted(set(quotas) | ({recommended} if recommended is not None else set()))
        measured = []
        for q in asked:
            self.sandbox.set_limits(Limits(q, opts.memory_bytes))
            time.sleep(0.3)  # the quota's timer: a period, an idle one, then it stops
            before = self.sandbox.cpu_stat()
            self.progress.phase(f"quota {q:g}", max(int(rate * opts.duration_s), 1))
            at = self._load(url, rate)
            after = self.sandbox.cpu_stat()
            periods = throttled = 0
            if before is not None and after is not None:
                periods = after.nr_periods - before.nr_periods
                throttled = after.nr_throttled - before.nr_throttled
            measured.append(
                MeasuredQuota(
                    quota_cpus=q,
                    periods=periods,
                    throttled_periods=throttled,
                    throttled_periods_ratio=throttled / periods if periods else None,
                    latency_ms=_latency_ms(at),
                    requests=len(at),
                    errors=sum(1 for r in at if r.status != 200),
                )
            )
        return AdviceCheck(
            advice=advice,
            measured=tuple(measured),
            rate_per_s=rate,
            duration_s=opts.duration_s,
            recorded_latency_ms=_latency_ms(requests),
        )

    def _load(self, url: str, rate: float) -> list[RequestSample]:
        """One arm's load: the options' duration, concurrency and timeout."""
        opts = self.options
        return load.run_load(
            url,
            rate,
            opts.duration_s,
            concurrency=opts.concurrency,
            timeout_s=opts.request_timeout_s,
            on_result=self.progress.request_done,
        )

    def result(self, records: list[ArmRecord], rate: float, cost_s: float | None) -> LabResult:
        opts = self.options
        baseline = records[0]
        limit = baseline.cpu_limit
        arms = [analyse_arm(record, app_module.COMM) for record in records]
        config = LabConfig(
            cpus=limit,
            memory_bytes=self.group.limits.memory_bytes if self.group else None,
            noise_workers=opts.noise_workers,
            rate_per_s=rate,
            duration_s=opts.duration_s,
            backend="procfs+bpftrace" if baseline.syscalls is not None else "procfs",
            concurrency=opts.concurrency,
            compute_n=opts.compute_n,
            cost_per_request_ms=cost_s * 1e3 if cost_s is not None else None,
            cgroup_mode=self.group.mode if self.group else None,
            engine=opts.engine,
        )
        return LabResult(
            config=config,
            arms=tuple(arms),
            reference=reference_rows(arms[0].metrics, arms[1].metrics),
            separating=separating_rows(arms[0].metrics, arms[1].metrics),
            comparisons=tuple(compare_arms(arms[0], other) for other in arms[1:]),
        )

    def close(self) -> None:
        """Stop the noise and the app, then remove the sandbox (killing any leftover)."""
        errors = []
        if self._recorder is not None:  # an arm ended early: give tracefs back first
            try:
                self._recorder.close()
            except BaseException as e:
                errors.append(e)
            self._recorder = None
        for proc in (self.noise, self.app):
            try:
                self._stop(proc)
            except BaseException as e:  # keep going: the sandbox must still be removed
                errors.append(e)
        # Without a sandbox, leftovers die through PR_SET_PDEATHSIG (noise workers) and
        # gunicorn's parent check (its worker); killing remembered PIDs could hit reused ones.
        if self.sandbox is not None:
            self.sandbox.close()
        for log in self._logs:
            log.close()
        self._logs = []
        if errors:
            raise errors[0]


def _waits(run: TracefsRun) -> tuple[CpuSlice, ...]:
    """The traced threads' run-queue waits, each clipped to begin after the thread's
    previous on-CPU slice (a wakeup of a running task would start one mid-slice), so a
    thread's waits and slices never overlap on its track."""
    s = run.slices
    if s is None or len(s.wait_tid) == 0:
        return ()
    out: list[CpuSlice] = []
    for tid in np.unique(s.wait_tid).tolist():
        ends = np.sort(s.end[s.tid == tid])
        mine = s.wait_tid == tid
        lo, hi, cpu = s.wait_start[mine], s.wait_end[mine], s.wait_cpu[mine]
        k = np.searchsorted(ends, hi, "right") - 1
        prev_end = np.where(k >= 0, ends[np.maximum(k, 0)] if len(ends) else 0, lo)
        lo = np.maximum(lo, prev_end)
        pid = run.tasks.pid_of(tid)
        out += [
            CpuSlice(pid, tid, c, a, b)
            for a, b, c in zip(lo.tolist(), hi.tolist(), cpu.tolist(), strict=True)
            if b > a
        ]
    out.sort(key=lambda w: (w.start_ns, w.tid))
    return tuple(out)


def _latency_ms(requests: list[RequestSample]) -> dict[str, float] | None:
    return latency_summary([r.latency_ns / 1e6 for r in requests if r.status == 200])


def check_advice(
    options: LabOptions, quotas: tuple[float, ...], progress: Progress | None = None
) -> AdviceCheck:
    """`contend lab --verify-advice`: see `Lab.check_advice`; everything stopped after."""
    lab = Lab(options, progress)
    try:
        return lab.check_advice(quotas)
    finally:
        lab.close()


def run_lab(
    options: LabOptions,
    progress: Progress | None = None,
    timelines: list[ArmTimeline] | None = None,
) -> LabResult:
    """Run the lab; with `timelines` (and `options.timeline`), each arm's timeline is
    appended to it."""
    lab: Lab
    if options.engine is not None:
        from contend.lab.container_arms import ContainerLab

        lab = ContainerLab(options, progress)
    else:
        lab = Lab(options, progress)
    try:
        return lab.run()
    finally:
        if timelines is not None:
            timelines.extend(lab.timelines)
