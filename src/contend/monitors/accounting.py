"""The continuous accounting's loop: read the machine every interval on a thread of its
own and fold each reading (the fold is analysis/accounting.py's, given by the caller, so
this part does not import the analysis). `top` and `exporter` read `latest()`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from contend.model import MachineSample

T = TypeVar("T")


class Engine(Generic[T]):
    def __init__(
        self,
        read: Callable[[], MachineSample],
        fold: Callable[[MachineSample], T],
        interval_s: float,
    ) -> None:
        self.read = read
        self.fold = fold
        self.interval_s = interval_s
        self._latest: T | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._new = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.error: str | None = None  # the last reading's failure, if it failed
        self.errors = 0  # readings that failed

    def step(self) -> T:
        """One reading, folded (the loop's body; also called directly by `--once`)."""
        result = self.fold(self.read())
        with self._new:
            self._latest = result
            self.steps += 1
            self._new.notify_all()
        return result

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
                self.error = None
            except Exception as e:  # a reading that failed is skipped, the next one tried
                self.error = f"{type(e).__name__}: {e}"
                self.errors += 1
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="contend-accounting", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def latest(self) -> T | None:
        with self._lock:
            return self._latest

    def wait_steps(self, n: int, timeout_s: float) -> bool:
        """Until `n` readings are folded (False if `timeout_s` passed first)."""
        with self._new:
            return self._new.wait_for(lambda: self.steps >= n, timeout=timeout_s)
