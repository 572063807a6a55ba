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

The lab's file (`lab_document`): every arm on the one clock they ran on, a "lab" track
with the arms' windows and the sandbox's counters, processes and threads named by role
(app, noise), each thread's run-queue waits beside its slices.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from contend.model import ArmTimeline, Timeline

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


# --- the lab: every arm on one clock, the threads named by role -------------------------

LAB_PID = 4194306  # pseudo-process "lab": the arms' windows and the sandbox's counters
LAB_TID = 4194306
ROLE_ORDER = {"app": 0, "noise": 1, "load generator": 2}
WAITING = "waiting for a CPU"


def _labelled(role: str | None, text: str) -> str:
    return f"{role}: {text}" if role else text


def _counters(arm: ArmTimeline, origin: int) -> list[CounterEvent]:
    """The sandbox's throttling, CPU use and pressure between consecutive samples
    (Perfetto names a counter track "NAME KEY": "sandbox: throttled periods %")."""
    out: list[CounterEvent] = []
    for a, b in itertools.pairwise(arm.snapshots):
        dt = b.t_ns - a.t_ns
        if dt <= 0:
            continue
        ts = _us(b.t_ns, origin)
        ca, cb = a.cgroup_cpu, b.cgroup_cpu
        if ca is not None and cb is not None:
            periods = cb.nr_periods - ca.nr_periods
            if periods > 0:
                ratio = 100.0 * (cb.nr_throttled - ca.nr_throttled) / periods
                out.append(CounterEvent("sandbox: throttled periods", ts, LAB_PID, {"%": ratio}))
            if ca.usage_ns is not None and cb.usage_ns is not None:
                cpus = (cb.usage_ns - ca.usage_ns) / dt
                out.append(CounterEvent("sandbox: CPU use", ts, LAB_PID, {"CPUs": cpus}))
        for label, pa, pb in (
            ("sandbox: cpu.pressure some", a.psi_cgroup, b.psi_cgroup),
            ("system: cpu pressure some", a.psi_system, b.psi_system),
        ):
            if pa is not None and pb is not None:
                pct = 100.0 * (pb.some_us - pa.some_us) * 1000 / dt
                out.append(CounterEvent(label, ts, LAB_PID, {"%": pct}))
    return out


def lab_document(arms: Sequence[ArmTimeline], title: str = "contend lab") -> TraceDocument:
    """Every arm of a lab on the one CLOCK_MONOTONIC timeline they ran on: a "lab"
    track with each arm's window and the sandbox's counters, the traced processes and
    threads named by role (app, noise), each thread's on-CPU slices (named by role) and
    run-queue waits ("waiting for a CPU"), and who held each CPU."""
    starts = [a.start_ns for a in arms]
    for a in arms:
        starts += [s.start_ns for s in (*a.timeline.slices, *a.timeline.cpu_slices, *a.waits)]
        starts += [w.ts_ns for w in a.timeline.wakeups[:1]]
        starts += [c.ts_ns for c in a.timeline.runnable]
        starts += [s.t_ns for s in a.snapshots]
    origin = min(starts) if starts else 0
    roles: dict[int, str] = {}
    threads: dict[int, tuple[int, str]] = {}  # tid -> (pid, comm)
    for a in arms:
        roles.update(a.roles)
        for pid, tid, comm in a.timeline.threads:
            threads[tid] = (pid, comm)
    events: list[TraceEventT] = [
        MetadataEvent("process_name", LAB_PID, LAB_PID, {"name": "lab"}),
        MetadataEvent("process_sort_index", LAB_PID, LAB_PID, {"sort_index": -2}),
        MetadataEvent("thread_name", LAB_PID, LAB_TID, {"name": "arms"}),
        MetadataEvent("process_name", CPUS_PID, CPUS_PID, {"name": "CPUs"}),
        MetadataEvent("process_sort_index", CPUS_PID, CPUS_PID, {"sort_index": -1}),
    ]
    for pid in sorted({p for p, _ in threads.values()}):
        comm = (
            threads[pid][1] if pid in threads else next(c for p, c in threads.values() if p == pid)
        )
        role = roles.get(pid)
        events.append(
            MetadataEvent("process_name", pid, pid, {"name": _labelled(role, f"{comm} {pid}")})
        )
        order = ROLE_ORDER.get(role or "", len(ROLE_ORDER))
        events.append(MetadataEvent("process_sort_index", pid, pid, {"sort_index": order}))
    for tid, (pid, comm) in sorted(threads.items()):
        name = _labelled(roles.get(pid), f"{comm} {tid}")
        events.append(MetadataEvent("thread_name", pid, tid, {"name": name}))
    cpus = sorted({s.cpu for a in arms for s in a.timeline.cpu_slices})
    for cpu in cpus:
        events.append(
            MetadataEvent("thread_name", CPUS_PID, CPU_TID_BASE + cpu, {"name": f"CPU {cpu}"})
        )
    flow = 0
    for a in arms:
        tl = a.timeline
        events.append(
            CompleteEvent(
                a.name, _us(a.start_ns, origin), (a.end_ns - a.start_ns) / 1000.0,
                LAB_PID, LAB_TID, cat="arm", args={"arm": a.name},
            )
        )  # fmt: skip
        events += _counters(a, origin)
        for s in tl.slices:
            events.append(
                CompleteEvent(
                    name=roles.get(s.pid) or tl.names.get(s.tid, str(s.tid)),
                    ts=_us(s.start_ns, origin),
                    dur=(s.end_ns - s.start_ns) / 1000.0,
                    pid=s.pid,
                    tid=s.tid,
                    args={"cpu": s.cpu, "arm": a.name},
                )
            )
        for wt in a.waits:
            if wt.tid not in threads:
                continue  # a thread without a slice has no track
            events.append(
                CompleteEvent(
                    name=WAITING,
                    ts=_us(wt.start_ns, origin),
                    dur=(wt.end_ns - wt.start_ns) / 1000.0,
                    pid=threads[wt.tid][0],
                    tid=wt.tid,
                    cat="wait",
                    args={"cpu": wt.cpu, "arm": a.name},
                )
            )
        for s in tl.cpu_slices:
            owner = threads.get(s.tid)
            role = roles.get(owner[0] if owner else s.tid)
            events.append(
                CompleteEvent(
                    name=_labelled(role, f"{tl.names.get(s.tid, '?')} {s.tid}"),
                    ts=_us(s.start_ns, origin),
                    dur=(s.end_ns - s.start_ns) / 1000.0,
                    pid=CPUS_PID,
                    tid=CPU_TID_BASE + s.cpu,
                    args={"tid": s.tid, "role": role or "other", "arm": a.name},
                )
            )
        for w in tl.wakeups:
            if w.tid not in threads:
                continue
            ts = _us(w.ts_ns, origin)
            waker = tl.names.get(w.waker_tid, "")
            events.append(
                InstantEvent(
                    "wakeup", ts, threads[w.tid][0], w.tid,
                    args={"waker": f"{waker} {w.waker_tid}", "target_cpu": w.cpu},
                )
            )  # fmt: skip
            if w.waker_tid in threads:
                flow += 1
                events.append(
                    FlowEvent("wakeup", ts, threads[w.waker_tid][0], w.waker_tid, flow, "s")
                )
                events.append(FlowEvent("wakeup", ts, threads[w.tid][0], w.tid, flow, "f"))
        for c in tl.runnable:
            events.append(
                CounterEvent(
                    f"runnable traced threads, CPU {c.cpu}",
                    _us(c.ts_ns, origin),
                    CPUS_PID,
                    {"waiting": float(c.value)},
                )
            )
    return TraceDocument(
        events,
        otherData={
            "producer": title,
            "clock": "CLOCK_MONOTONIC",
            "origin_ns": str(origin),
            "arms": ",".join(a.name for a in arms),
        },
    )


def render_lab(arms: Sequence[ArmTimeline], title: str = "contend lab") -> str:
    return lab_document(arms, title).to_json()
