"""`contend advise` against the real kernel: a program recorded unlimited, its throttling
predicted at other quotas, then measured by running it at those quotas (cpu.stat)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import contend_command, need
from contend.analysis.advice import simulate
from contend.collect.cgroups import bandwidth_slice_us
from contend.lab.sandbox import Limits, Sandbox
from contend.monitors import session as sessions
from contend.monitors.demand import demand_of

pytestmark = [pytest.mark.kernel, pytest.mark.timing]

PERIOD_NS = 100_000_000  # the sandbox's period

# Burns `burn` s of CPU in each of its processes at `offset` s into every `every` s of
# CLOCK_MONOTONIC (a group's CFS periods fall on multiples of 100 ms of that clock), `n`
# times; `procs` processes at once.
PROGRAM = """
import os, sys, time
every, burn, offset, n, procs = map(float, sys.argv[1:])
for _ in range(int(procs) - 1):
    if os.fork() == 0:
        break
start = (time.monotonic() // every + 1) * every + offset
for k in range(int(n)):
    d = start + k * every - time.monotonic()
    if d > 0:
        time.sleep(d)
    c = time.thread_time()
    while time.thread_time() - c < burn:
        for _ in range(2000):
            pass
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""


@pytest.fixture(scope="module")
def root() -> None:
    need(os.geteuid() == 0, "needs root")
    need(Path("/sys/kernel/tracing").is_dir(), "needs tracefs")


def _command(*args: float) -> list[str]:
    return [sys.executable, "-c", PROGRAM, *map(str, args)]


def _advice(tmp_path: Path, quotas: str, *args: float, burst: str | None = None) -> dict:
    """The program recorded unlimited, then `contend advise` on the session."""
    session = tmp_path / "demand.npz"
    if not session.exists():
        done = subprocess.run(
            [*contend_command(), "record", "-o", str(session), "--", *_command(*args)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    extra = ["--burst", burst] if burst else []
    done = subprocess.run(
        [*contend_command(), "advise", str(session), "--quota", quotas, *extra, "--format",
         "json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    advice = json.loads(done.stdout)
    assert advice["schema"] == "contend.advice/1"
    return advice


def _predicted(advice: dict, quota: float) -> float:
    return next(
        p["throttled_periods_ratio"] for p in advice["predictions"] if p["quota_cpus"] == quota
    )


def _cpu_stat(box: Sandbox) -> tuple[int, int]:
    stat = box.cpu_stat()
    assert stat is not None
    return stat.nr_periods, stat.nr_throttled


def _measured(quota: float, *args: float, burst_us: int = 0, on_grid: bool = False) -> float:
    """The program run at `quota`: nr_throttled / nr_periods of its group's cpu.stat.

    `on_grid`: its demand placed where the recording's is on a grid of multiples of the
    period of CLOCK_MONOTONIC (its `offset` after a period's start), on the group's own
    grid: writing the quota starts the group's period timer, which ends a period where
    its grid falls (measured here: neither where the quota was written nor on multiples
    of the period), ends one more, idle, and stops; the time of the first is the grid."""
    with Sandbox(Limits(quota, None)) as box:
        if burst_us:
            name = "cpu.max.burst" if box.mode == "v2" else "cpu.cfs_burst_us"
            need((box.dirs["cpu"] / name).exists(), f"needs {name} (kernel >= 5.14)")
            (box.dirs["cpu"] / name).write_text(str(burst_us))
        if on_grid:
            first = _cpu_stat(box)[0]
            deadline = time.monotonic() + 1
            while _cpu_stat(box)[0] == first and time.monotonic() < deadline:
                time.sleep(0.0002)
            grid = time.monotonic_ns() % PERIOD_NS
            assert time.monotonic() < deadline, "the period timer did not fire"
            every, burn, offset, *rest = args
            args = (every, burn, (grid + round(offset * 1e9)) % PERIOD_NS / 1e9, *rest)
            time.sleep(0.25)  # the timer ends one more period, idle, and stops
        before = _cpu_stat(box)
        p = subprocess.Popen(_command(*args), preexec_fn=box.join_function())
        assert p.wait(timeout=120) == 0
        after = _cpu_stat(box)
    periods = after[0] - before[0]
    assert periods > 0
    return (after[1] - before[1]) / periods


def _on_grid(tmp_path: Path, quota: float, burst_cpus: float = 0.0) -> float:
    """The simulation's prediction on a grid of multiples of the period of CLOCK_MONOTONIC,
    the grid the program's demand was recorded on."""
    demand = demand_of(sessions.load(tmp_path / "demand.npz"))
    phase = (demand.start_ns % PERIOD_NS) / PERIOD_NS
    run = simulate(demand, quota, slice_us=bandwidth_slice_us(), burst_cpus=burst_cpus,
                   phase=phase)  # fmt: skip
    return run.throttled_periods / run.periods


def test_periodic_demand_predicted_then_measured(root: None, tmp_path: Path) -> None:
    """40 ms of CPU every 100 ms in one thread: throttled in nearly every period at 0.2
    CPU, in almost none at 0.5; the kernel then agrees within 10 points at both."""
    args = (0.1, 0.04, 0.03, 30, 1)
    advice = _advice(tmp_path, "0.2,0.5", *args)
    assert advice["demand"]["mean_cpus"] == pytest.approx(0.4, abs=0.08)
    assert advice["demand"]["max_parallel"] == 1
    low, high = _predicted(advice, 0.2), _predicted(advice, 0.5)
    assert low >= 0.9 and high <= 0.1, (low, high)
    assert 0.4 <= advice["recommended_quota_cpus"] <= 0.5
    for quota, predicted in ((0.2, low), (0.5, high)):
        measured = _measured(quota, *args)
        assert measured == pytest.approx(predicted, abs=0.10), (quota, predicted, measured)


def test_bursty_demand_throttles_a_quota_above_its_mean(root: None, tmp_path: Path) -> None:
    """4 processes burning 40 ms at the same moment once a second: 0.16 CPU on average,
    yet a 0.5 quota (50 ms a period) throttles the periods of every burst. Where a burst
    falls in its period decides in how many (2 or 3 of 5): the prediction is the mean over
    four grids; on the grid it was recorded on, within 10 points of the kernel's count
    with the bursts at the same place on the group's grid."""
    need((os.cpu_count() or 1) >= 2, "needs 2 CPUs")
    args = (1.0, 0.04, 0.02, 5, 4)
    advice = _advice(tmp_path, "0.5", *args)
    assert advice["demand"]["mean_cpus"] <= 0.3
    assert advice["demand"]["max_parallel"] == 4
    predicted = _predicted(advice, 0.5)
    assert predicted >= 0.25, predicted
    measured = _measured(0.5, *args, on_grid=True)
    on_grid = _on_grid(tmp_path, 0.5)
    assert measured == pytest.approx(on_grid, abs=0.10), (on_grid, measured, predicted)


def test_burst_throttles_less_than_the_same_quota_without(root: None, tmp_path: Path) -> None:
    """One 15 ms spike a second at 0.1 CPU (10 ms a period), 20 ms into a period: each
    spike throttled without burst; with a 10 ms burst the pool holds 20 ms after an idle
    period, predicted and measured to throttle less."""
    args = (1.0, 0.015, 0.02, 5, 1)
    plain = _advice(tmp_path, "0.1", *args)
    bursting = _advice(tmp_path, "0.1", *args, burst="10ms")
    without, with_burst = _predicted(plain, 0.1), _predicted(bursting, 0.1)
    assert with_burst < without
    measured_without = _measured(0.1, *args, on_grid=True)
    measured_with = _measured(0.1, *args, burst_us=10_000, on_grid=True)
    assert measured_with < measured_without, (measured_with, measured_without)
    on_grid = _on_grid(tmp_path, 0.1)
    assert measured_without == pytest.approx(on_grid, abs=0.10), (on_grid, measured_without)
    on_grid = _on_grid(tmp_path, 0.1, burst_cpus=0.1)
    assert measured_with == pytest.approx(on_grid, abs=0.10), (on_grid, measured_with)


def test_the_lab_checks_its_own_advice(root: None, tmp_path: Path) -> None:
    """`contend lab --verify-advice 0.3,0.6`: the app recorded unlimited under its
    calibrated load (0.2 CPU), advised, then run at 0.3, 0.6 and the recommended quota.

    Asserted: what the kernel guarantees beside what the model says. At 0.6 (three times
    the demand) neither predicted nor measured throttles, and the predicted p50 is the
    measured one within 30%; at 0.3 (its requests need 34 ms of CPU, a period holds 30)
    both throttle, the measured p95 is above the 0.6 arm's and the prediction's above the
    recording's. Not asserted: p95 within 30% at 0.3 and 0.6, which this app's own
    arm-to-arm variance breaks (the README and the issue's note give the figures)."""
    out = tmp_path / "check.json"
    done = subprocess.run(
        [*contend_command(), "lab", "--verify-advice", "0.3,0.6", "--duration", "10",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    check = json.loads(out.read_text())
    assert check["schema"] == "contend.advice-check/1"
    advice = check["advice"]
    predicted = {p["quota_cpus"]: p for p in advice["predictions"]}
    measured = {m["quota_cpus"]: m for m in check["measured"]}
    recommended = advice["recommended_quota_cpus"]
    assert set(measured) == {0.3, 0.6, recommended}
    assert 0.3 <= recommended <= 0.6, recommended
    # The calibrated load: 40% of the lab's 0.5 CPU.
    assert advice["demand"]["mean_cpus"] == pytest.approx(0.2, abs=0.06)
    for m in measured.values():
        assert m["errors"] == 0 and m["requests"] == int(check["rate_per_s"] * 10), m
    assert predicted[0.6]["throttled_periods_ratio"] <= 0.05
    assert measured[0.6]["throttled_periods_ratio"] <= 0.05
    p50 = predicted[0.6]["latency_ms"]["p50"]
    assert p50 == pytest.approx(measured[0.6]["latency_ms"]["p50"], rel=0.30)
    assert predicted[0.3]["throttled_periods_ratio"] >= 0.2
    assert measured[0.3]["throttled_periods_ratio"] >= 0.2
    assert measured[0.3]["latency_ms"]["p95"] > measured[0.6]["latency_ms"]["p95"]
    assert predicted[0.3]["latency_ms"]["p95"] > check["recorded_latency_ms"]["p95"]
    assert "p95 latency ms" in done.stdout and "measured" in done.stdout
