"""`contend diagnose` as text: the verdict first, then where the time went, the causes
with what to do, the processes, the cgroups and the original document's indicators.
Fits 80 columns."""

from __future__ import annotations

import textwrap

from contend.model import BREAKDOWN_STATES, Diagnosis, TimeShare

WIDTH = 80


def _wrap(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest) or [first]


def _ms(ns: float) -> str:
    s = ns / 1e9
    return f"{s:.2f} s" if s >= 1 else f"{ns / 1e6:.1f} ms"


def _ratio(x: float | None) -> str:
    if x is None:
        return "n/a"
    return "inf" if x == float("inf") else f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _share_label(s: TimeShare) -> str:
    if s.state == "queued":
        return f"queued {s.detail}"
    if s.state == "throttled":
        return "throttled by the CPU quota"
    if s.state == "wakeup":
        return "runnable, CPU idle (wake-up)"
    if s.state == "runnable":
        return "runnable (holder unknown)"
    if s.state == "sleeping":
        return f"sleeping in {s.detail}" if s.detail else "sleeping"
    return s.state


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def render(d: Diagnosis, shares: int = 10) -> str:
    v = d.verdict
    out = [f"contend diagnose: {d.target} ({d.backend}, {d.duration_s:.1f} s)", ""]
    head = "CONTENTION" if v.contention else "no contention"
    out.append(f"Verdict: {head}, severity {v.severity} (wait/run {_ratio(v.wait_to_run)})")
    out += _wrap(v.summary, "  ", "  ")
    b = d.breakdown
    threads = f"{b.threads} thread{'s' if b.threads != 1 else ''}"
    out += [
        "",
        *_wrap(
            f"Where the time went ({threads}, {_ms(b.wall_ns)} of wall time; {b.source})", "", "  "
        ),
    ]
    rows = list(b.shares)
    for s in rows[:shares]:
        out.append(f"  {_cut(_share_label(s), 52):<52} {s.pct:5.1f}%  {_ms(s.ns):>9}")
    if len(rows) > shares:
        rest = rows[shares:]
        out.append(
            f"  {'(' + str(len(rest)) + ' more)':<52} {sum(s.pct for s in rest):5.1f}%  "
            f"{_ms(sum(s.ns for s in rest)):>9}"
        )
    if not d.system_wide:
        out += ["", "Causes, by share of the time it wanted a CPU"]
    if not d.causes and not d.system_wide:
        out.append("  none: it never waited long enough to name one")
    for i, cause in enumerate(d.causes, 1):
        out += _wrap(f"{i}. [{cause.kind}] {cause.sentence}", "  ", "     ")
        if cause.advice:
            out += _wrap(f"what to do: {cause.advice}", "     ", "       ")
    if d.processes:
        title = "Processes that waited most" if d.system_wide else "Processes"
        out += ["", title]
        out.append(
            f"  {'PID':>7} {'COMM':<15} {'running':>9} {'waited':>9} {'wait/run':>8} "
            f"{'severity':<8} cgroup"
        )
        order = list(d.processes)
        if not d.system_wide:
            order.sort(key=lambda p: -(p.breakdown.get("running", 0) + _runnable(p.breakdown)))
        for p in order[:15]:
            out.append(
                _cut(
                    f"  {p.pid:>7} {_cut(p.comm, 15):<15} "
                    f"{_ms(p.breakdown.get('running', 0)):>9} {_ms(_runnable(p.breakdown)):>9} "
                    f"{_ratio(p.wait_to_run):>8} {p.severity:<8} {p.cgroup or ''}",
                    WIDTH,
                )
            )
        if len(order) > 15:
            out.append(f"  ({len(order) - 15} more processes)")
    out += ["", "Cgroups that waited most" if d.system_wide else "Cgroups"]
    if not d.cgroups:
        out.append("  none readable")
    for c in d.cgroups:
        quota = "none" if c.quota_cpus is None else f"{c.quota_cpus:g} CPU"
        if c.quota_from:
            quota += f" (from {c.quota_from})"
        who = f" [container {c.container}]" if c.container else ""
        if c.path == "/":
            who = " (the root cgroup: the whole machine)"
        out.append(f"  {c.path}{who}")
        used = "n/a" if c.usage_cpus is None else f"{c.usage_cpus:.2f} CPU"
        thr = "n/a" if c.throttled_s is None else f"{c.throttled_s:.2f} s"
        out += _wrap(
            f"quota {quota}, used {used}, throttled in {_pct(c.throttled_periods_ratio)} of "
            f"periods ({thr}), PSI some {_pct(c.psi_some)} full {_pct(c.psi_full)}; its "
            f"tasks waited {_ms(c.runnable_ns)} ({c.severity}, wait/run {_ratio(c.wait_to_run)})",
            "    ",
            "    ",
        )
    out.append(f"  system PSI cpu some: {_pct(d.psi_system_some)}")
    out += ["", "The original document's indicators, measured here"]
    for ind in d.indicators:
        says = {None: "not measured", True: "says contention", False: "says none"}[
            ind.indicates_contention
        ]
        agree = "" if ind.agrees is None else (" (agrees)" if ind.agrees else " (disagrees)")
        out.append(f"  {ind.metric:<30} {_cut(ind.measured, 28):<28} {says}{agree}")
    if d.lost_events:
        out.append(f"\n{d.lost_events} events were lost: the numbers are incomplete")
    if d.notes:
        out += ["", "Notes"]
        for n in d.notes:
            out += _wrap(n, "  - ", "    ")
    return "\n".join(out) + "\n"


def _runnable(states: dict[str, int]) -> int:
    return sum(
        states.get(s, 0)
        for s in BREAKDOWN_STATES
        if s in ("throttled", "queued", "wakeup", "runnable")
    )
