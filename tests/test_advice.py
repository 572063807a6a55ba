"""The CFS bandwidth simulation of `contend advise` on demands whose fate under a quota
can be worked out by hand (Documentation/scheduler/sched-bwc.rst)."""

from __future__ import annotations

import subprocess

import pytest

from conftest import contend_command
from contend.analysis.advice import advise, request_latencies, simulate
from contend.model import Demand, ThreadDemand

MS = 1_000_000


def demand(*threads: list[tuple[int, int]], cpus: int = 1, window_ms: int = 1000) -> Demand:
    return Demand(
        target="test",
        window_ns=window_ms * MS,
        cpus=cpus,
        threads=tuple(
            ThreadDemand(
                tid=100 + n, pid=100, comm="t",
                arrivals_ns=tuple(a * MS for a, _ in t), work_ns=tuple(w * MS for _, w in t),
            )
            for n, t in enumerate(threads)
        ),
    )  # fmt: skip


def test_one_busy_thread_runs_half_of_each_period_at_half_a_cpu() -> None:
    """1 s of work at 0.5 CPU: 50 ms in each of 20 periods, throttled at the end of the
    first 19 (50 ms each), done at 1950 ms: 19 periods ended by then, all throttled. With
    the grid a quarter period off, the first 25 ms fit in the first period unthrottled."""
    d = demand([(0, 1000)])
    run = simulate(d, 0.5)
    assert run.throttled_periods == 19
    assert run.periods == 19
    shifted = simulate(d, 0.5, phase=0.75)  # the first period ends at 25 ms
    assert (shifted.periods, shifted.throttled_periods) == (20, 19)
    assert run.throttled_ns == pytest.approx(19 * 50 * MS, abs=MS)
    assert run.finish_ns == [[pytest.approx(1950 * MS, abs=0.2 * MS)]]
    assert simulate(d, None).finish_ns == [[pytest.approx(1000 * MS, abs=0.2 * MS)]]


def test_two_threads_on_two_cpus_use_a_one_cpu_quota_in_half_the_period() -> None:
    """Throttled time is summed over CPUs, as the kernel's cpu.stat."""
    d = demand([(0, 1000)], [(0, 1000)], cpus=2)
    run = simulate(d, 1.0)
    # The slices: the last period's runtime can reach one CPU's queue before the other's,
    # which then finishes a period later.
    assert run.throttled_periods in (19, 20)
    assert run.throttled_ns == pytest.approx(2 * 19 * 50 * MS, rel=0.03)
    assert sorted(f[0] for f in run.finish_ns) == [
        pytest.approx(1950 * MS, abs=3 * MS), pytest.approx(2000 * MS, abs=3 * MS)
    ]  # fmt: skip
    # Two threads on one CPU: shared, never more than the CPU; no quota hit at 1 CPU.
    one = simulate(demand([(0, 1000)], [(0, 1000)], cpus=1), 1.0)
    assert one.throttled_periods == 0
    assert one.finish_ns[0][0] == pytest.approx(2000 * MS, abs=MS)


def test_periodic_demand_fits_a_quota_above_it_and_not_below() -> None:
    """40 ms every 100 ms: never throttled at 0.5 CPU; throttled every period at 0.2 (the
    backlog grows) and at 0.3."""
    d = demand([(20 + 100 * k, 40) for k in range(30)], window_ms=3000)
    assert simulate(d, 0.5).throttled_periods == 0
    for quota in (0.2, 0.3):
        run = simulate(d, quota)
        assert run.throttled_periods / run.periods >= 0.9, quota
    advice = advise(d, (0.2, 0.5))
    assert advice.recommended_quota_cpus is not None
    assert 0.4 <= advice.recommended_quota_cpus <= 0.45
    assert advice.demand.mean_cpus == pytest.approx(0.4)
    assert advice.demand.max_parallel == 1 and advice.demand.bursts == 30
    by_quota = {p.quota_cpus: p for p in advice.predictions}
    assert by_quota[None].delay_per_cpu_s == 0 and by_quota[0.5].delay_per_cpu_s == 0
    assert by_quota[0.2].delay_per_cpu_s > 1  # the backlog of 0.2 CPU short every period


def test_burst_carries_unused_quota_over_idle_periods() -> None:
    """15 ms once a second at 0.1 CPU (10 ms a period): throttled once per spike without
    burst; with a 10 ms burst the pool holds 20 ms after an idle period (the quota was set
    long before the first), so none is."""
    d = demand(*[[(50 + 1000 * k, 15) for k in range(5)]], window_ms=5000)
    assert simulate(d, 0.1).throttled_periods == 5
    bursting = simulate(d, 0.1, burst_cpus=0.1)
    # Each spike done within its period; the timer ends it and one idle period, and stops.
    assert (bursting.throttled_periods, bursting.periods) == (0, 10)
    # The timer stops after an idle period: about 3 periods counted per spike, not 10.
    assert simulate(d, 0.1).periods <= 4 * 5


def test_a_demand_of_every_cpu_needs_them_all() -> None:
    d = demand([(0, 1000)], [(0, 1000)], [(0, 1000)], cpus=2)
    advice = advise(d, ())
    # Three threads of demand on two CPUs: only the whole machine is never throttled.
    assert advice.recommended_quota_cpus == 2.0
    assert advice.predictions[-1].throttled_periods == 0


def test_a_request_throttled_mid_computation_waits_for_the_next_period() -> None:
    """A request computing 30 ms from t = 10 ms, answered by another thread (the event
    loop) 1 ms after: at 0.2 CPU it runs 20 ms, waits for the period to end at 100 ms,
    runs 10 ms more: 70 ms later than unlimited. A request with no demand in it keeps
    its latency; at 0.5 nothing is late."""
    d = demand([(10, 30)], [(41, 0.1)], window_ms=300)
    base = simulate(d, None)
    at = request_latencies(d, [(10 * MS, 32 * MS), (200 * MS, 5 * MS)], [simulate(d, 0.2)], base)
    assert at == [pytest.approx(102, abs=0.2), 5]
    assert request_latencies(d, [(10 * MS, 32 * MS)], [simulate(d, 0.5)], base) == [32]
    advice = advise(d, (0.2,), requests=[(10 * MS, 32 * MS)])
    latency = {p.quota_cpus: p.latency_ms for p in advice.predictions}
    assert latency[None] == {"p50": 32, "p95": 32}
    # Over the four grids: throttled on all but the one whose period ends at 25 ms.
    assert latency[0.2] is not None and latency[0.2]["p95"] > 60


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--quota", "x", "--", "true"], "--quota"),
        (["--quota", "0", "--", "true"], "--quota"),
        (["--slo-throttled", "150%", "--", "true"], "--slo-throttled"),
        (["--period", "0.1ms", "--", "true"], "--period"),
        (["--format", "xml", "--", "true"], "--format"),
        (["no-such.npz"], "no such file"),
        ([], "give a session file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], says: str) -> None:
    done = subprocess.run(
        [*contend_command(), "advise", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
