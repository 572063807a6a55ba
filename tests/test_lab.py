"""The lab for real, with short arms: the verdicts, the JSON, and cleanup on signals."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import contend_cgroups, contend_command, pgrep


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


def test_lab_diagnosis_names_the_right_cause(lab_json: dict[str, Any]) -> None:
    """The quota arm is blamed on throttling, the unlimited arm on the noise, the baseline
    on nothing; each breakdown covers its threads' wall time."""
    arms = {a["name"]: a for a in lab_json["arms"]}
    for arm in arms.values():
        whole = arm["breakdown"][0]
        assert whole["label"] == "app" and whole["source"].startswith("exact")
        assert sum(s["pct"] for s in whole["shares"]) == pytest.approx(100.0, abs=0.01)
        unaccounted = sum(s["pct"] for s in whole["shares"] if s["state"] == "unaccounted")
        assert unaccounted < 1.0
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
