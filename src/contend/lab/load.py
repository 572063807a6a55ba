"""Open-loop HTTP load at a fixed rate, with a concurrency cap (what wrk2 does).

Request i is due at t0 + i/rate whatever happened to earlier ones, and its latency is
measured from that due time, so a server that stalls is charged for the requests queued
behind the stall (no coordinated omission). A refused or reset connection is an error
counted in the results, never a crash.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Coroutine

import httpx

from contend.errors import Terminated
from contend.model import RequestSample

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_DRAIN_S = 5.0


async def _load(
    url: str,
    rate_per_s: float,
    duration_s: float,
    concurrency: int,
    timeout_s: float,
    drain_s: float,
    on_result: Callable[[RequestSample], None] | None,
) -> list[RequestSample]:
    results: list[RequestSample] = []
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    def record(sample: RequestSample) -> None:
        results.append(sample)
        if on_result is not None:
            on_result(sample)

    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:

        async def one(intended_ns: int) -> None:
            try:
                async with slots:
                    response = await client.get(url)
                    await response.aread()
                record(
                    RequestSample(
                        intended_ns, time.monotonic_ns() - intended_ns, response.status_code
                    )
                )
            except httpx.HTTPError as e:
                record(
                    RequestSample(
                        intended_ns, time.monotonic_ns() - intended_ns, 0, type(e).__name__
                    )
                )
            except asyncio.CancelledError:
                record(
                    RequestSample(intended_ns, time.monotonic_ns() - intended_ns, 0, "unfinished")
                )
                raise

        count = max(int(rate_per_s * duration_s), 1)
        interval_ns = 1e9 / rate_per_s
        t0 = time.monotonic_ns()
        tasks = []
        for i in range(count):
            due = t0 + int(i * interval_ns)
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
        # Requests still running after the last one was due: give them drain_s more.
        end_due = t0 + int(duration_s * 1e9)
        remaining = max((end_due - time.monotonic_ns()) / 1e9, 0.0) + drain_s
        _, pending = await asyncio.wait(tasks, timeout=remaining)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    return sorted(results, key=lambda r: r.intended_ns)


def run_load(
    url: str,
    rate_per_s: float,
    duration_s: float,
    concurrency: int = 16,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    drain_s: float = DEFAULT_DRAIN_S,
    on_result: Callable[[RequestSample], None] | None = None,
) -> list[RequestSample]:
    """Send `rate_per_s * duration_s` GETs to `url`, open loop; return one sample each."""
    if rate_per_s <= 0 or duration_s <= 0 or concurrency < 1:
        raise ValueError("rate, duration and concurrency must be positive")
    main = _load(url, rate_per_s, duration_s, concurrency, timeout_s, drain_s, on_result)
    return asyncio.run(_ended_by_signal(main))


# What the CLI ends on (its handler raises Terminated). Raised from a signal handler inside
# the event loop, the exception would land in whichever request task was running, die
# there unretrieved, and the load would run on to its end; so inside the loop the signal
# cancels the load instead, and Terminated is raised once the loop is left.
_ENDING = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


async def _ended_by_signal(main: Coroutine[None, None, list[RequestSample]]) -> list[RequestSample]:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main)
    received: list[int] = []

    def ending(signum: int) -> None:
        received.append(signum)
        task.cancel()

    if threading.current_thread() is not threading.main_thread():
        return await task  # signals reach only the main thread: nothing to turn
    previous = {sig: signal.getsignal(sig) for sig in _ENDING}
    for sig in _ENDING:
        loop.add_signal_handler(sig, ending, sig)
    try:
        return await task
    except asyncio.CancelledError:
        if received:
            raise Terminated(received[0]) from None
        raise
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)


def sequential(url: str, count: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[RequestSample]:
    """`count` requests one after another (the calibration warm-up)."""
    out = []
    with httpx.Client(timeout=timeout_s) as client:
        for _ in range(count):
            start = time.monotonic_ns()
            try:
                status = client.get(url).status_code
                out.append(RequestSample(start, time.monotonic_ns() - start, status))
            except httpx.HTTPError as e:
                out.append(RequestSample(start, time.monotonic_ns() - start, 0, type(e).__name__))
    return out


def wait_healthy(url: str, timeout_s: float, alive: Callable[[], bool]) -> bool:
    """Poll `url` until it answers 200, the deadline passes, or `alive()` turns False."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline and alive():
            try:
                if client.get(url).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    return False
