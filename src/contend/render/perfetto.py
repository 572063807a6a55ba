"""A `Timeline` as a Chrome trace-event JSON file, which ui.perfetto.dev and
chrome://tracing open.

The format, modelled below as dataclasses, is Google's "Trace Event Format":
https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU
Times (`ts`, `dur`) are in microseconds (floats keep the nanoseconds); `ph` is the
event type: `X` complete event (a slice with its duration), `i` instant (scope `s`:
`t` thread), `C` counter (each key of `args` a series), `M` metadata
(`process_name`, `thread_name`, `process_sort_index`), `s`/`f` a flow (arrow) from
one slice to another, bound to the enclosing slice (`bp: e`).

Tracks: every target thread in its process, with its on-CPU slices (CPU in args) and its
wakeups as instants and as flows from the waker; one pseudo-process "CPUs" with a
track per CPU showing who held it; counters of target threads waiting per CPU.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from contend.model import Timeline

# Above PID_MAX_LIMIT (4194304, include/linux/threads.h): never a real process.
CPUS_PID = 4194305
CPU_TID_BASE = 4194400


@dataclass(frozen=True, slots=True)
class CompleteEvent:
    name: str
    ts: float
    dur: float
    pid: int
    tid: int
    cat: str = "sched"
    args: dict[str, Any] = field(default_factory=dict)
    ph: str = "X"


@dataclass(frozen=True, slots=True)
class InstantEvent:
    name: str
    ts: float
    pid: int
    tid: int
    s: str = "t"
    cat: str = "sched"
    args: dict[str, Any] = field(default_factory=dict)
    ph: str = "i"


@dataclass(frozen=True, slots=True)
class CounterEvent:
    name: str
    ts: float
    pid: int
    args: dict[str, float]
    ph: str = "C"


@dataclass(frozen=True, slots=True)
class MetadataEvent:
    name: str  # process_name | thread_name | process_sort_index | thread_sort_index
    pid: int
    tid: int
    args: dict[str, Any]
    ph: str = "M"


@dataclass(frozen=True, slots=True)
class FlowEvent:
    name: str
    ts: float
    pid: int
    tid: int
    id: int
    ph: str  # s (start) | f (finish)
    cat: str = "wakeup"
    bp: str = "e"


TraceEventT = CompleteEvent | InstantEvent | CounterEvent | MetadataEvent | FlowEvent


@dataclass(frozen=True, slots=True)
class TraceDocument:
    """The JSON Object Format: `traceEvents` plus optional fields."""

    traceEvents: list[TraceEventT]
    displayTimeUnit: str = "ns"
    otherData: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def _us(ns: int, origin: int) -> float:
    return (ns - origin) / 1000.0


def document(timeline: Timeline, title: str = "contend") -> TraceDocument:
    starts = [s.start_ns for s in timeline.slices] + [s.start_ns for s in timeline.cpu_slices]
    origin = min(starts) if starts else 0
    events: list[TraceEventT] = []
    pids = {pid for pid, _, _ in timeline.threads}
    for pid in sorted(pids):
        leader = next((c for p, t, c in timeline.threads if p == pid and t == pid), None)
        name = leader or next(c for p, _, c in timeline.threads if p == pid)
        events.append(MetadataEvent("process_name", pid, pid, {"name": f"{name} {pid}"}))
    for pid, tid, comm in timeline.threads:
        events.append(MetadataEvent("thread_name", pid, tid, {"name": f"{comm} {tid}"}))
    events.append(MetadataEvent("process_name", CPUS_PID, CPUS_PID, {"name": "CPUs"}))
    events.append(MetadataEvent("process_sort_index", CPUS_PID, CPUS_PID, {"sort_index": -1}))
    for cpu in sorted({s.cpu for s in timeline.cpu_slices}):
        events.append(
            MetadataEvent("thread_name", CPUS_PID, CPU_TID_BASE + cpu, {"name": f"CPU {cpu}"})
        )
    for s in timeline.slices:
        events.append(
            CompleteEvent(
                name=timeline.names.get(s.tid, str(s.tid)),
                ts=_us(s.start_ns, origin),
                dur=(s.end_ns - s.start_ns) / 1000.0,
                pid=s.pid,
                tid=s.tid,
                args={"cpu": s.cpu},
            )
        )
    for s in timeline.cpu_slices:
        events.append(
            CompleteEvent(
                name=f"{timeline.names.get(s.tid, '?')} {s.tid}",
                ts=_us(s.start_ns, origin),
                dur=(s.end_ns - s.start_ns) / 1000.0,
                pid=CPUS_PID,
                tid=CPU_TID_BASE + s.cpu,
                args={"tid": s.tid},
            )
        )
    pid_of = {t: p for p, t, _ in timeline.threads}
    for i, w in enumerate(timeline.wakeups):
        ts = _us(w.ts_ns, origin)
        waker = timeline.names.get(w.waker_tid, "")
        events.append(
            InstantEvent(
                "wakeup", ts, w.pid, w.tid,
                args={"waker": f"{waker} {w.waker_tid}", "target_cpu": w.cpu},
            )
        )  # fmt: skip
        if w.waker_tid in pid_of:
            events.append(FlowEvent("wakeup", ts, pid_of[w.waker_tid], w.waker_tid, i + 1, "s"))
            events.append(FlowEvent("wakeup", ts, w.pid, w.tid, i + 1, "f"))
    for c in timeline.runnable:
        events.append(
            CounterEvent(
                f"runnable target threads, CPU {c.cpu}",
                _us(c.ts_ns, origin),
                CPUS_PID,
                {"waiting": float(c.value)},
            )
        )
    return TraceDocument(
        events, otherData={"producer": title, "clock": "CLOCK_MONOTONIC", "origin_ns": str(origin)}
    )


def render(timeline: Timeline, title: str = "contend") -> str:
    return document(timeline, title).to_json()
