"""The lab for real, with short arms: the verdicts, the JSON, and cleanup on signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import LIKE_SETSID_BACKGROUND, contend_cgroups, contend_command, pgrep


@pytest.fixture(scope="module")
def lab_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import os

    from conftest import need

    need(os.geteuid() == 0, "needs root")
    need(shutil.which("bpftrace") is not None, "needs bpftrace (make install as root)")
    out = tmp_path_factory.mktemp("lab") / "lab.json"
    report = out.with_suffix(".html")
    before = contend_cgroups()
    args = [*contend_command(), "lab", "--duration", "5", "--arms", "baseline,contention,unlimited",
            "--json", str(out), "--html", str(report)]  # fmt: skip
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Contention vs no contention" in done.stdout
    assert contend_cgroups() == before  # a normal run gives its sandbox back
    result: dict[str, Any] = json.loads(out.read_text())
    result["_stdout"] = done.stdout
    result["_html"] = str(report)
    return result


def test_lab_schema_and_config(lab_json: dict[str, Any]) -> None:
    assert lab_json["schema"] == "contend.lab/2"
    cfg = lab_json["config"]
    assert cfg["cpus"] == 0.5
    assert cfg["memory_bytes"] == 512 << 20
    assert (
        cfg["noise_workers"] == 2 and cfg["backend"] == "procfs+bpftrace" and cfg["duration_s"] == 5
    )
    # Calibrated to 40% of the quota: rate * cost = 0.2 CPU.
    assert cfg["rate_per_s"] * cfg["cost_per_request_ms"] / 1000 == pytest.approx(0.2, rel=1e-6)
    assert [a["name"] for a in lab_json["arms"]] == ["baseline", "contention", "unlimited"]
    for arm in lab_json["arms"]:
        m = arm["metrics"]
        assert set(m["requests"]["latency_ms"]) >= {"p50", "p95", "p99"}
        assert set(m["context_switches_per_s"]) >= {"voluntary", "involuntary"}
        for key in ("avg_on_cpu_slice_us", "run_queue_wait_per_slice_us", "wait_to_run_ratio",
                    "cpu_share", "fairness_index", "throttled_period_ratio", "psi_cpu_some_pct"):  # fmt: skip
            assert key in m
        # bpftrace timed every syscall of the app: blocking waits dominate the plain average.
        assert m["avg_syscall_time_us"] > m["avg_nonblocking_syscall_time_us"] > 0
        assert m["sources"]["avg_syscall_time_us"].startswith("exact")
        assert set(arm["verdict"]) >= {"contention", "severity", "evidence"}
        assert m["requests"]["count"] == int(cfg["rate_per_s"] * 5)


@pytest.mark.timing
def test_lab_baseline_is_calm_and_contention_is_contended(lab_json: dict[str, Any]) -> None:
    base, cont, _ = (a for a in lab_json["arms"])
    assert base["verdict"]["contention"] is False
    assert cont["verdict"]["contention"] is True
    bm, cm = base["metrics"], cont["metrics"]
    assert cm["wait_to_run_ratio"] > bm["wait_to_run_ratio"]
    assert cm["requests"]["latency_ms"]["p95"] > bm["requests"]["latency_ms"]["p95"]
    assert bm["requests"]["errors"] == 0
    # Only the app ran in the baseline; in the contention arm the noise took CPU too.
    assert set(bm["cpu_share"]) == {"app"}
    assert cm["cpu_share"]["noise"] > 0.3
    # Together they cannot exceed the 0.5-CPU quota (10% slack for sampling edges).
    assert sum(cm["cpu_cores"].values()) <= 0.55
    assert cm["throttled_period_ratio"] > 0.5


@pytest.mark.timing
def test_lab_diagnosis_names_the_right_cause(lab_json: dict[str, Any]) -> None:
    """The quota arm is blamed on throttling, the unlimited arm on the noise, the baseline
    on nothing; each breakdown covers its threads' wall time."""
    arms = {a["name"]: a for a in lab_json["arms"]}
    for arm in arms.values():
        whole = arm["breakdown"][0]
        assert whole["label"] == "app" and whole["source"].startswith("exact")
        assert sum(s["pct"] for s in whole["shares"]) == pytest.approx(100.0, abs=0.01)
        unaccounted = sum(s["pct"] for s in whole["shares"] if s["state"] == "unaccounted")
        # Under 0.1% run alone; 1.9 and 2.1% seen in one arm of full-suite runs (5 s arms).
        assert unaccounted < 3.0, (arm["name"], whole["shares"])
        # The app's threads mostly sleep waiting for requests: in futex or epoll_wait.
        sleeping = {s["detail"]: s["pct"] for s in whole["shares"] if s["state"] == "sleeping"}
        assert max(sleeping, key=lambda k: sleeping[k]) in ("futex", "epoll_wait")
        assert arm["series"] and arm["latencies_ms"] and arm["histograms"]["run_queue_us"]
    assert arms["baseline"]["verdict"]["causes"] == []
    # Alone on the machine the quota takes about half of the app's demand (0.49-0.55
    # seen) and the noise a quarter; other busy processes on the host, if any, take
    # their part too, so the quota is compared with the lab's own noise.
    diagnosis = {c["who"].split(" (")[0]: c for c in arms["contention"]["diagnosis"]}
    quota, noise = diagnosis["the 0.5-CPU quota"], diagnosis["the noise"]
    assert quota["share_of_demand"] >= 0.15
    assert quota["share_of_demand"] > noise["share_of_demand"]
    assert any(
        "throttled by the 0.5-CPU quota" in c for c in arms["contention"]["verdict"]["causes"]
    )
    unlimited = arms["unlimited"]["diagnosis"]
    assert unlimited[0]["kind"] == "neighbour" and unlimited[0]["who"].startswith("the noise")
    assert all(c["kind"] != "quota" for c in unlimited)


def test_lab_html_report_in_a_real_browser(lab_json: dict[str, Any]) -> None:
    from test_report import check_report

    doc = {k: v for k, v in lab_json.items() if not k.startswith("_")}
    check_report(Path(lab_json["_html"]), doc)
    text = Path(lab_json["_html"]).read_text()
    assert "Runnable but throttled by the 0.5-CPU quota" in text


def test_lab_prints_verdicts(lab_json: dict[str, Any]) -> None:
    out = lab_json["_stdout"]
    assert "baseline: no contention" in out
    assert "contention: CONTENTION" in out
    assert "What separates the arms here" in out


def _wait_for(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.usefixtures("root_cgroups")
def test_lab_gives_everything_back_on_signal(sig: int, code: int, tmp_path: Path) -> None:
    before = set(contend_cgroups())
    proc = subprocess.Popen(
        [*contend_command(), "lab", "--duration", "10"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **LIKE_SETSID_BACKGROUND,
    )
    try:
        # Wait until the sandbox exists and the noise runs, the state with most to give back.
        # The noise starts after calibration and the 10 s baseline arm: about 15 s.
        assert _wait_for(lambda: len(pgrep("contend-noise")) >= 3, 120), "noise never started"
        assert any(p.name.startswith(f"contend-{proc.pid}-") for p in contend_cgroups())
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert "Traceback" not in err
    assert set(contend_cgroups()) == before
    # Killed processes leave the cgroup at exit; their parent (init) may reap them a moment later.
    assert _wait_for(lambda: pgrep("contend-app") == [] and pgrep("contend-noise") == [], 5)


@pytest.mark.usefixtures("root_cgroups")
def test_after_sigkill_the_next_run_reclaims() -> None:
    from contend.lab.sandbox import reclaim_stale

    before = set(contend_cgroups())
    proc = subprocess.Popen(
        [*contend_command(), "lab", "--duration", "10"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # This run's own sandbox (named after its PID) with its app inside.
        assert _wait_for(
            lambda: (
                any(p.name.startswith(f"contend-{proc.pid}-") for p in contend_cgroups())
                and len(pgrep("contend-app")) >= 2
            ),
            120,
        )
    finally:
        proc.kill()
        proc.wait()
    left = set(contend_cgroups()) - before
    assert left  # SIGKILL gives no chance to clean up
    reclaimed = set(reclaim_stale())
    assert left <= reclaimed
    assert set(contend_cgroups()) == before
    assert _wait_for(lambda: pgrep("contend-app") == [], 5)


def test_lab_without_sandbox(tmp_path: Path) -> None:
    """--no-sandbox: no cgroup, no quota; cgroup metrics are null, the rest is measured."""
    out = tmp_path / "lab.json"
    before = contend_cgroups()
    done = subprocess.run(
        [*contend_command(), "lab", "--no-sandbox", "--backend", "procfs", "--duration", "2", "--noise-workers", "1",
         "--rate", "5", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert contend_cgroups() == before
    result = json.loads(out.read_text())
    assert result["config"]["cpus"] is None and result["config"]["cgroup_mode"] is None
    base, cont = result["arms"]
    for arm in (base, cont):
        m = arm["metrics"]
        assert m["throttled_period_ratio"] is None and m["psi_cgroup_cpu_some_pct"] is None
        assert m["requests"]["count"] == 10
        assert m["avg_syscall_time_us"] is None  # procfs cannot know it: null, not invented
        assert m["wait_to_run_ratio"] is not None
    assert set(cont["metrics"]["cpu_share"]) == {"app", "noise"}
    # One noise process on a 2-CPU machine, no quota: it gets most of a CPU.
    assert cont["metrics"]["cpu_cores"]["noise"] > 0.8
    assert _wait_for(lambda: pgrep("contend-app") == [] and pgrep("contend-noise") == [], 5)


@pytest.mark.usefixtures("root_cgroups")
def test_unlimited_arm_is_blamed_on_the_neighbours(tmp_path: Path) -> None:
    """--arms with unlimited: the quota lifted, the app still waits, behind the noise."""
    out = tmp_path / "lab.json"
    done = subprocess.run(
        [*contend_command(), "lab", "--arms", "baseline,contention,unlimited", "--duration", "4",
         "--backend", "procfs", "--json", str(out)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    arms = {a["name"]: a for a in json.loads(out.read_text())["arms"]}
    assert list(arms) == ["baseline", "contention", "unlimited"]
    unlimited = arms["unlimited"]
    assert unlimited["verdict"]["contention"] is True
    assert unlimited["metrics"]["throttled_period_ratio"] is None  # no quota in that arm
    causes = " ".join(unlimited["verdict"]["causes"])
    assert "neighbours: noise" in causes and "quota" not in causes
    assert any("quota" in c for c in arms["contention"]["verdict"]["causes"])
    # Without the quota the noise takes far more than the 0.35 CPUs it got under it.
    assert unlimited["metrics"]["cpu_cores"]["noise"] > 1.0


# --- the lab's tracefs timeline: --record DIR, --perfetto FILE ----------------------------

TRACEFS_INSTANCES = Path("/sys/kernel/tracing/instances")


def tracefs_instances() -> set[str]:
    if not TRACEFS_INSTANCES.is_dir():
        return set()
    return {n for n in os.listdir(TRACEFS_INSTANCES) if n.startswith("contend-")}


def test_lab_perfetto_document_of_two_arms() -> None:
    """Synthetic arms: roles in the names, the arms' windows, waits beside slices, counters."""
    from contend.model import (
        ArmTimeline,
        CgroupCpuStat,
        CounterSample,
        CpuSlice,
        Pressure,
        Snapshot,
        Timeline,
        Wakeup,
    )
    from contend.render import perfetto
    from test_tracefs_trace import check_trace_format

    ms = 1_000_000
    base = Timeline(
        threads=((10, 10, "contend-app"), (10, 11, "contend-app")),
        slices=(CpuSlice(10, 11, 0, 1 * ms, 2 * ms),),
        wakeups=(Wakeup(1 * ms, 10, 11, 10, 0),),
        cpu_slices=(CpuSlice(0, 11, 0, 1 * ms, 2 * ms),),
        names={10: "contend-app", 11: "contend-app"},
        runnable=(),
    )
    cont = Timeline(
        threads=((10, 11, "contend-app"), (20, 21, "contend-noise")),
        slices=(CpuSlice(20, 21, 0, 10 * ms, 14 * ms), CpuSlice(10, 11, 0, 14 * ms, 15 * ms)),
        wakeups=(Wakeup(11 * ms, 10, 11, 21, 0),),
        cpu_slices=(CpuSlice(0, 21, 0, 10 * ms, 14 * ms), CpuSlice(0, 11, 0, 14 * ms, 15 * ms)),
        names={11: "contend-app", 21: "contend-noise"},
        runnable=(CounterSample(11 * ms, 0, 1), CounterSample(14 * ms, 0, 0)),
    )

    def snap(t_ms: int, periods: int, throttled: int, some_us: int) -> Snapshot:
        return Snapshot(t_ms * ms, (), (), CgroupCpuStat(periods, throttled, 0, t_ms * ms // 2),
                        None, Pressure(some_us, 0))  # fmt: skip

    arms = [
        ArmTimeline("baseline", 0, 5 * ms, base, (), {10: "app"}, (snap(0, 0, 0, 0),)),
        ArmTimeline(
            "contention", 9 * ms, 16 * ms, cont, (CpuSlice(10, 11, 0, 11 * ms, 14 * ms),),
            {10: "app", 20: "noise"}, (snap(9, 10, 0, 0), snap(16, 20, 8, 3500)),
        ),
    ]  # fmt: skip
    doc = json.loads(perfetto.render_lab(arms))
    per_tid = check_trace_format(doc)
    events = doc["traceEvents"]
    meta = {(e["name"], e["pid"], e["tid"]): e["args"] for e in events if e["ph"] == "M"}
    assert meta[("process_name", 10, 10)]["name"] == "app: contend-app 10"
    assert meta[("process_name", 20, 20)]["name"] == "noise: contend-noise 20"
    assert meta[("thread_name", 10, 11)]["name"] == "app: contend-app 11"
    assert meta[("process_sort_index", 10, 10)]["sort_index"] == 0
    windows = [(e["name"], e["ts"], e["dur"]) for e in per_tid[perfetto.LAB_TID]]
    assert windows == [("baseline", 0.0, 5000.0), ("contention", 9000.0, 7000.0)]  # us
    app = [(e["name"], e["ts"], e["dur"]) for e in per_tid[11]]
    assert app == [("app", 1000.0, 1000.0), (perfetto.WAITING, 11000.0, 3000.0),
                   ("app", 14000.0, 1000.0)]  # fmt: skip
    assert [(e["name"], e["ts"]) for e in per_tid[21]] == [("noise", 10000.0)]
    cpu0 = [e["name"] for e in per_tid[perfetto.CPU_TID_BASE]]
    assert cpu0 == ["app: contend-app 11", "noise: contend-noise 21", "app: contend-app 11"]
    counters = {
        e["name"]: e["args"] for e in events if e["ph"] == "C" and e["pid"] == perfetto.LAB_PID
    }
    assert counters["sandbox: throttled periods"] == {"%": 80.0}
    assert counters["sandbox: CPU use"] == {"CPUs": 0.5}
    assert counters["sandbox: cpu.pressure some"] == {"%": 50.0}
    flows = sorted((e["id"], e["ph"], e["tid"]) for e in events if e["ph"] in ("s", "f"))
    assert flows == [(1, "f", 11), (1, "s", 10), (2, "f", 11), (2, "s", 21)]  # ids unique


def test_lab_record_refuses_a_missing_directory(tmp_path: Path) -> None:
    for flag, value in (("--record", "/nonexistent/sessions"), ("--perfetto", "/nonexistent/lab.json"),
                        ("--record", str(tmp_path / "file"))):  # fmt: skip
        (tmp_path / "file").write_text("")
        done = subprocess.run([*contend_command(), "lab", flag, value], capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"contend: error: {flag}")


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _overlap(a: tuple[float, float], union: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(a[1], hi) - max(a[0], lo)) for lo, hi in union)


@pytest.mark.timing
@pytest.mark.kernel
@pytest.mark.usefixtures("root_cgroups")
def test_lab_records_sessions_and_a_perfetto_timeline(tmp_path: Path) -> None:
    """--record DIR --perfetto FILE on short arms: a session per arm that `contend report`
    reads, and a timeline where the noise runs while the app waits for a CPU."""
    from conftest import need
    from contend.render import perfetto
    from test_tracefs_trace import check_trace_format

    need(Path("/sys/kernel/tracing").is_dir(), "needs tracefs")
    before = tracefs_instances()
    trace = tmp_path / "lab.trace.json"
    done = subprocess.run(
        [*contend_command(), "lab", "--duration", "3", "--backend", "procfs",
         "--arms", "baseline,contention,unlimited", "--record", str(tmp_path),
         "--perfetto", str(trace)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert tracefs_instances() == before  # every arm gave its instance back
    arms = ["baseline", "contention", "unlimited"]
    assert sorted(p.name for p in tmp_path.glob("*.session")) == [f"{a}.session" for a in arms]

    comms = {}
    recorded_s: dict[str, float] = {}
    for arm in arms:
        report = subprocess.run(
            [*contend_command(), "report", str(tmp_path / f"{arm}.session"), "--format", "json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert report.returncode == 0, report.stderr
        result = json.loads(report.stdout)
        assert result["backend"] == "tracefs" and result["target"].startswith(f"lab arm {arm}")
        comms[arm] = {r["comm"]: r for r in result["cpu"] if r["tid"]}
        recorded_s[arm] = result["duration_s"]
        assert result["lost_events"] == 0
    assert "contend-app" in comms["baseline"] and "contend-noise" not in comms["baseline"]
    assert {"contend-app", "contend-noise"} <= set(comms["contention"])

    doc = json.loads(trace.read_text())
    per_tid = check_trace_format(doc)
    events = doc["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "process_name"}  # fmt: skip
    role_of = {pid: n.split(":")[0] for pid, n in names.items() if ":" in n}
    assert "app" in role_of.values() and "noise" in role_of.values()
    windows = {e["name"]: (e["ts"], e["ts"] + e["dur"]) for e in per_tid[perfetto.LAB_TID]}
    assert list(windows) == arms
    for arm, (lo, hi) in windows.items():
        # Each arm's slice spans the arm, whose session recorded about as long
        # (microseconds; 3.120 s against 3.130 s seen); that is about the 3 s asked for,
        # but a busy machine starts the recording late (2.697 s was seen), so the wall
        # clock only bounds it loosely.
        assert hi - lo == pytest.approx(recorded_s[arm] * 1e6, abs=100e3), arm
        assert 1.5e6 <= hi - lo <= 10e6
    xs = [e for e in events if e["ph"] == "X" and e["pid"] in role_of]

    def of(role: str, name: str, arm: str) -> list[tuple[float, float]]:
        return [(e["ts"], e["ts"] + e["dur"]) for e in xs
                if role_of[e["pid"]] == role and e["name"] == name and e["args"]["arm"] == arm]  # fmt: skip

    assert of("noise", "noise", "baseline") == []  # no noise in the baseline
    assert of("app", "app", "baseline")
    waiting = {}  # arm -> (us some app thread waited, share of it while some noise ran)
    for arm in arms:
        noise_on = _union(of("noise", "noise", arm))
        app_waits = _union(of("app", perfetto.WAITING, arm))
        waited = sum(hi - lo for lo, hi in app_waits)
        behind = sum(_overlap(w, noise_on) for w in app_waits) / waited if waited else 0.0
        waiting[arm] = (waited, behind)
        print(f"{arm}: app waiting {waited / 1e3:.0f} ms, the noise on a CPU for "
              f"{behind:.0%} of it, {sum(hi - lo for lo, hi in noise_on) / 1e3:.0f} ms in all")  # fmt: skip
    # Seen: baseline 32-160 ms, 0%; contention 2300-3900 ms, 31-58% (the rest throttled:
    # the noise spent the quota); unlimited 800-1200 ms, 84-98% (behind the neighbours).
    assert waiting["baseline"][1] == 0.0
    assert waiting["contention"][0] > 5 * waiting["baseline"][0]
    assert waiting["contention"][1] >= 0.1
    assert waiting["unlimited"][1] >= 0.6
    lo, hi = windows["contention"]
    throttled = [e["args"]["%"] for e in events if e["ph"] == "C"
                 and e["name"] == "sandbox: throttled periods" and lo <= e["ts"] <= hi]  # fmt: skip
    assert throttled and max(throttled) > 50


@pytest.mark.kernel
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.usefixtures("root_cgroups")
def test_lab_recording_gives_tracefs_back_on_signal(sig: int, code: int, tmp_path: Path) -> None:
    from conftest import need

    need(Path("/sys/kernel/tracing").is_dir(), "needs tracefs")
    before = tracefs_instances()
    proc = subprocess.Popen(
        [*contend_command(), "lab", "--duration", "10", "--backend", "procfs",
         "--record", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Mid contention arm: the noise runs and the arm's instance records it.
        assert _wait_for(lambda: len(pgrep("contend-noise")) >= 3, 120), "noise never started"
        assert _wait_for(lambda: f"contend-{proc.pid}" in tracefs_instances(), 10)
        time.sleep(1)
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    assert tracefs_instances() == before
    # The finished arm's session was kept; the interrupted one was not written.
    assert sorted(p.name for p in tmp_path.glob("*.session")) == ["baseline.session"]
