"""The diagnosis, `contend compare` and the HTML report, on a lab built with a fake clock
(known answers), the report opened in a real headless Chromium."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from browser import ink_fraction, json_value, open_page
from conftest import contend_command
from contend.analysis.compare import compare_arms, mann_whitney
from contend.analysis.diagnosis import analyse_arm, diagnose
from contend.analysis.verdict import reference_rows, separating_rows
from contend.model import (
    ArmRecord,
    BreakdownOccupant,
    CgroupCpuStat,
    HistBucket,
    LabConfig,
    LabResult,
    Pressure,
    RequestSample,
    SchedTimes,
    Snapshot,
    TaskStat,
    ThreadTime,
    lab_from_json_dict,
)
from contend.render import html
from test_diagnose import victim_and_hog

S = 1_000_000_000
MS = 1_000_000


def _task(pid: int, cpu_ms: int, wait_ms: int, slices: int) -> TaskStat:
    return TaskStat(pid=pid, tid=pid, comm=f"p{pid}", start_ticks=1, utime_ticks=cpu_ms // 10,
                    stime_ticks=0, voluntary_switches=slices, involuntary_switches=0,
                    on_cpu_ns=cpu_ms * MS, run_queue_wait_ns=wait_ms * MS, slices=slices)  # fmt: skip


def fake_arm(name: str, quota: bool, noise_cores: float, wait_per_run: float,
             latency_ms: float, seed: int) -> ArmRecord:  # fmt: skip
    """10 s sampled every second: the app uses 0.2 CPU and waits `wait_per_run` times as
    long; the noise uses `noise_cores`; the scheduler events say who held the CPU."""
    snaps = []
    for i in range(11):
        app_ms = 200 * i
        snaps.append(Snapshot(
            i * S,
            (_task(10, app_ms, int(app_ms * wait_per_run), 20 * i),
             _task(20, int(1000 * noise_cores) * i, 0, 10 * i)),
            cgroup_cpu=CgroupCpuStat(10 * i, 10 * i if quota else 0, 700 * MS * i if quota else 0),
            psi_system=Pressure(500_000 * i, 0),
            psi_cgroup=Pressure(400_000 * i, 300_000 * i if quota else 0),
        ))  # fmt: skip
    rng = random.Random(seed)
    requests = tuple(
        RequestSample(k * 100 * MS, int(rng.uniform(0.8, 1.2) * latency_ms * MS), 200)
        for k in range(100)
    )
    run = 400 * MS
    wait = int(run * wait_per_run)
    occupants = (
        (
            BreakdownOccupant(0, "swapper/0", wait * 3 // 4, pid=0),
            BreakdownOccupant(21, "contend-noise", wait // 4, pid=20),
        )
        if quota
        else (BreakdownOccupant(21, "contend-noise", wait, pid=20),)
    )
    app = ThreadTime(10, 10, "contend-app", run, wait, {"futex": 10 * S - run - wait}, 10 * S)
    times = SchedTimes(
        window_ns=10 * S,
        threads=(app,),
        occupants=occupants if wait else (),
        run_queue_us=(HistBucket(8, 15, 100), HistBucket(1024, 2047, int(100 * wait_per_run))),
        slice_us=(HistBucket(512, 1023, 200),),
    )
    return ArmRecord(name, 0, 10 * S, tuple(snaps), {10: "app", 20: "noise"}, requests,
                     cpu_limit=0.5 if quota else None, sched_times=times)  # fmt: skip


@pytest.fixture(scope="module")
def lab() -> LabResult:
    arms = [
        analyse_arm(fake_arm("baseline", True, 0.0, 0.1, 30, 1), "contend-app"),
        analyse_arm(
            fake_arm("contention", True, 0.3, 20.0, 3000, 2), "contend-app"
        ),  # 0.4 s run, 8 s wait
        analyse_arm(fake_arm("unlimited", False, 1.5, 1.5, 80, 3), "contend-app"),
    ]
    config = LabConfig(0.5, 512 << 20, 2, 10.0, 10.0, "procfs+bpftrace", 16, 480000, 20.0, "v1")
    return LabResult(config, tuple(arms), reference_rows(arms[0].metrics, arms[1].metrics),
                     separating_rows(arms[0].metrics, arms[1].metrics),
                     tuple(compare_arms(arms[0], a) for a in arms[1:]))  # fmt: skip


def test_diagnosis_on_known_sessions(lab: LabResult) -> None:
    base, cont, unl = lab.arms
    assert base.verdict.contention is False and base.verdict.causes == ()
    top = cont.verdict.ranked[0]
    # Of 8.4 s of demand (0.4 running + 8 waiting), 6 s throttled and 2 s behind the noise.
    assert (top.kind, top.ns, round(top.share_of_demand, 4)) == ("quota", 6 * S, 0.7143)
    assert cont.verdict.ranked[1].who == "the noise" and cont.verdict.ranked[1].pids == (20,)
    assert cont.verdict.causes[0].startswith(
        "Runnable but throttled by the 0.5-CPU quota of the lab's sandbox: 71%"
    )
    assert [c.kind for c in unl.verdict.ranked] == ["neighbour"]
    assert unl.verdict.ranked[0].share_of_demand == pytest.approx(0.6)
    assert [b.label for b in cont.breakdown] == ["app", "app: contend-app (TID 10)"]
    for arm in lab.arms:
        assert sum(s.pct for s in arm.breakdown[0].shares) == pytest.approx(100.0)
        assert len(arm.series) == 10
    # The series: the noise's 0.3 CPU in every interval of the contention arm.
    assert {p.cpu_cores["noise"] for p in cont.series} == {0.3}
    assert cont.series[0].throttled_ms_per_s == pytest.approx(700.0)


def test_mann_whitney_and_cliffs_delta_agree_with_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(7)
    a = [round(rng.gauss(10, 3), 1) for _ in range(40)]
    b = [round(rng.gauss(12, 3), 1) for _ in range(55)]
    u, p = mann_whitney([(x, 1) for x in a], [(x, 1) for x in b]) or (0.0, 0.0)
    ref = stats.mannwhitneyu(b, a, alternative="two-sided", method="asymptotic")
    assert u == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)
    # Binned data: weights are ties, the same as repeating the values.
    hist = mann_whitney([(1.0, 3), (2.0, 2)], [(2.0, 1), (3.0, 4)])
    flat = mann_whitney([(1.0, 1)] * 3 + [(2.0, 1)] * 2, [(2.0, 1)] + [(3.0, 1)] * 4)
    assert hist == pytest.approx(flat)
    ref = stats.mannwhitneyu([2, 3, 3, 3, 3], [1, 1, 1, 2, 2], method="asymptotic")
    assert hist is not None and hist[1] == pytest.approx(ref.pvalue, rel=1e-9)


def test_comparison_says_which_is_slower(lab: LabResult) -> None:
    c = lab.comparisons[0]
    lat = c.tests[0]
    assert lat.cliffs_delta == 1.0 and lat.effect == "large" and lat.significant
    assert lat.median_ratio == pytest.approx(100, rel=0.1)
    assert c.conclusion.startswith("contention is slower than baseline")
    # The median's ratio and the mean per slice's, from the arms' own numbers.
    rq = next(t for t in c.tests if t.name == "run-queue wait")
    per_slice = next(m for m in c.metrics if m.metric == "run-queue wait per slice")
    assert per_slice.ratio is not None and rq.median_ratio is not None
    assert c.conclusion.endswith(
        f"run-queue wait: median x{rq.median_ratio:.0f} ({rq.effect}), "
        f"per slice x{per_slice.ratio:.0f}."
    )
    same = compare_arms(lab.arms[0], lab.arms[0])
    assert same.tests[0].cliffs_delta == 0.0 and not same.tests[0].significant
    assert same.conclusion.startswith("baseline is no different from baseline")


def test_lab_json_round_trips(lab: LabResult) -> None:
    doc = lab.to_json_dict()
    assert lab_from_json_dict(json.loads(json.dumps(doc))) == lab


def test_compare_command(lab: LabResult, tmp_path: Path) -> None:
    path = tmp_path / "lab.json"
    path.write_text(json.dumps(lab.to_json_dict()))
    done = subprocess.run([*contend_command(), "compare", str(path), "--format", "json"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["schema"] == "contend.compare/1"
    assert [(c["a"], c["b"]) for c in out["comparisons"]] == [
        ("baseline", "contention"), ("baseline", "unlimited")
    ]  # fmt: skip
    assert out["comparisons"][0]["tests"][0]["cliffs_delta"] == 1.0
    done = subprocess.run([*contend_command(), "compare", str(path), str(path), "--arm",
                           "unlimited"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "unlimited (lab.json) is no different from unlimited (lab.json)" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.json"], "missing.json: no such file"),
        (["bad.json"], "bad.json: not JSON"),
        (["other.json"], "other.json: schema 'contend.trace/1': expected a lab result"),
        (["binary.bin"], "binary.bin: not text, not a session file: expected a lab result"),
        (["lab.json", "diag.json"], "lab.json: a lab result; compare it with another lab"),
        (["lab.json", "--arm", "nope"], "--arm: no arm 'nope'"),
    ],
)
def test_compare_bad_input_is_one_line(
    lab: LabResult, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "lab.json").write_text(json.dumps(lab.to_json_dict()))
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "other.json").write_text('{"schema": "contend.trace/1"}')
    (tmp_path / "binary.bin").write_bytes(b"\xc7\x00\xff" * 10)
    (tmp_path / "diag.json").write_text(json.dumps(diagnose(victim_and_hog()).to_json_dict()))
    done = subprocess.run([*contend_command(), "compare", *args], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr
    assert "Traceback" not in done.stderr


def check_report(page_path: Path, doc: dict[str, object]) -> None:
    """What a person opening the report sees: no error, plots drawn, numbers = JSON."""
    page = open_page(page_path)
    assert page.console_errors == []
    assert page.svg_count >= 8 and page.drawn_series >= 12
    assert ink_fraction(page.screenshot) > 0.02  # not a blank page
    assert len(page.marked) >= 20
    for key, (raw, text) in page.marked.items():
        want = json_value(doc, key)
        if want is None:
            assert raw == "" and text == "n/a", key
        else:
            assert isinstance(want, int | float)
            assert float(raw) == pytest.approx(float(want), rel=1e-12), key


def test_html_report_in_a_real_browser(lab: LabResult, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text(html.render([lab]))
    text = path.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in text  # nothing to run, nothing to fetch
    check_report(path, lab.to_json_dict())


def test_report_html_of_a_recorded_session(tmp_path: Path) -> None:
    """Record a busy loop sharing a CPU with another, report it as HTML: the page shows
    the loop's time split and names the other loop as who held the CPU."""
    import os
    import sys

    from conftest import need

    need(os.geteuid() == 0, "needs root (tracefs)")

    def pinned() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                preexec_fn=lambda: os.sched_setaffinity(0, {1}))  # fmt: skip

    a, b = pinned(), pinned()
    session, page, doc = tmp_path / "s.session", tmp_path / "r.html", tmp_path / "r.json"
    try:
        done = subprocess.run([*contend_command(), "record", "--pid", str(a.pid), "--duration",
                               "2", "-o", str(session)], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    finally:
        for p in (a, b):
            p.kill()
            p.wait()
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*contend_command(), "report", str(session), "--format", "json",
                           "-o", str(doc), "--html", str(page)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(doc.read_text())
    shown = open_page(page)
    # Drawn: the thread's running and waiting segments, and at least one CPU holder.
    assert shown.console_errors == [] and shown.drawn_series >= 3
    assert ink_fraction(shown.screenshot) > 0.02
    assert len(shown.marked) >= 6
    for key, (raw, text) in shown.marked.items():
        want = json_value(result, key)
        if want is None:
            assert raw == "" and text == "n/a", key
        else:
            assert isinstance(want, int | float)
            assert float(raw) == pytest.approx(float(want)), key
    text = page.read_text()
    assert "Who held the CPU while target threads waited" in text
    assert f"({b.pid})" in text  # the other loop, named
