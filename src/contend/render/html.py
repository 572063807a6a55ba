"""The HTML report: one self-contained file (inline CSS and SVG, no script, no CDN) that a
person who never saw contend can read in a minute.

Order: the verdict and its ranked causes first, then where the time went, then the plots
(CPU share, throttling and PSI over time; run-queue wait and slice histograms overlaid;
request latency distribution), the comparison tests, and the original document's table
with measured values. Every number shown that the JSON also holds carries `data-key`
(its path in the JSON) and `data-value` (the raw number), so tests can check the page
against the JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from contend import __version__
from contend.model import (
    ArmResult,
    Breakdown,
    Comparison,
    Diagnosis,
    HistBucket,
    LabResult,
    TraceResult,
)
from contend.render import svg

ARM_COLORS = {"baseline": "#2a9d3a", "contention": "#d62728", "unlimited": "#ff7f0e"}
ROLE_COLORS = {"app": "#1f77b4", "noise": "#d62728", "other": "#8c8c8c"}
STATE_COLORS = {
    "running": "#2a9d3a",
    "throttled": "#d62728",
    "wakeup": "#9467bd",
    "runnable": "#e377c2",
    "unaccounted": "#dddddd",
}
QUEUED_COLORS = ("#ff7f0e", "#ffbb78", "#c49c94", "#8c564b")
SLEEP_COLORS = ("#9ecae1", "#c6dbef", "#bdbdbd", "#d9d9d9")
EXTRA_COLORS = ("#17becf", "#bcbd22", "#7f7f7f", "#e7969c")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1180px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.sub{color:#555}.verdict{border-radius:6px;padding:.6em 1em;margin:.6em 0}
.yes{background:#fdecea;border-left:6px solid #d62728}.no{background:#eaf6ec;border-left:6px solid #2a9d3a}
.verdict h3{margin:.1em 0}.verdict ol{margin:.3em 0}.evidence{color:#444;font-size:.92em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f5f5f5}
td:first-child,th:first-child{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:12px}
.holds{color:#2a9d3a}.fails{color:#d62728}.conclusion{font-weight:600}
figure{margin:.4em 0}figcaption{font-size:.85em;color:#555;max-width:560px}
footer{margin-top:3em;color:#777;font-size:.85em}
"""


def _num(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _span(key: str, value: float | None, spec: str, unit: str = "") -> str:
    raw = "" if value is None else repr(float(value))
    return f'<span data-key="{escape(key)}" data-value="{raw}">{escape(_num(value, spec, unit))}</span>'


def _arm_color(name: str, i: int) -> str:
    return ARM_COLORS.get(name, EXTRA_COLORS[i % len(EXTRA_COLORS)])


# --- sections -----------------------------------------------------------------------------


def _verdicts(arms: Sequence[ArmResult], prefix: str) -> str:
    out = []
    for i, arm in enumerate(arms):
        v, m = arm.verdict, arm.metrics
        key = f"{prefix}arms[{i}]"
        cls = "yes" if v.contention else "no"
        head = f"CONTENTION, {v.severity}" if v.contention else "no contention"
        lat = m.requests.latency_ms
        out.append(f'<div class="verdict {cls}"><h3>{escape(arm.name)}: {escape(head)}</h3>')
        out.append(
            "<p>wait/run "
            + _span(f"{key}.metrics.wait_to_run_ratio", m.wait_to_run_ratio, ".2f")
            + " &middot; p50 "
            + _span(f"{key}.metrics.requests.latency_ms.p50", lat.p50, ".0f", " ms")
            + " &middot; p95 "
            + _span(f"{key}.metrics.requests.latency_ms.p95", lat.p95, ".0f", " ms")
            + " &middot; throttled periods "
            + _span(
                f"{key}.metrics.throttled_period_ratio",
                m.throttled_period_ratio,
                ".0%",
            )
            + " &middot; sandbox PSI full "
            + _span(f"{key}.metrics.psi_cgroup_cpu_full_pct", m.psi_cgroup_cpu_full_pct, ".0f", "%")
            + "</p>"
        )
        if v.contention and v.causes:
            out.append("<p>Why, ranked:</p><ol>")
            out += [f"<li>{escape(c)}</li>" for c in v.causes]
            out.append("</ol>")
        out.append('<ul class="evidence">')
        out += [f"<li>{escape(e)}</li>" for e in v.evidence]
        out.append("</ul></div>")
    return "".join(out)


def _segments(b: Breakdown) -> list[tuple[str, float, str]]:
    """A breakdown as bar segments: states in order, the largest queued-behind and
    sleeping parts named, the rest of each summed."""
    segs: list[tuple[str, float, str]] = []
    queued = sorted((s for s in b.shares if s.state == "queued"), key=lambda s: -s.pct)
    sleeping = sorted((s for s in b.shares if s.state == "sleeping"), key=lambda s: -s.pct)
    for state in ("running", "throttled", "wakeup", "runnable"):
        pct = sum(s.pct for s in b.shares if s.state == state)
        if pct:
            label = {"throttled": "throttled (quota)", "wakeup": "wake-up latency"}.get(
                state, state
            )
            segs.append((label, pct, STATE_COLORS[state]))
    for i, s in enumerate(queued[:3]):
        segs.append((f"queued {s.detail}", s.pct, QUEUED_COLORS[i]))
    if queued[3:]:
        segs.append(("queued behind others", sum(s.pct for s in queued[3:]), QUEUED_COLORS[3]))
    for i, s in enumerate(sleeping[:3]):
        segs.append((f"sleeping in {s.detail}" if s.detail else "sleeping", s.pct, SLEEP_COLORS[i]))
    if sleeping[3:]:
        segs.append(("sleeping, other", sum(s.pct for s in sleeping[3:]), SLEEP_COLORS[3]))
    rest = sum(s.pct for s in b.shares if s.state == "unaccounted")
    if rest:
        segs.append(("unaccounted", rest, STATE_COLORS["unaccounted"]))
    return segs


def _breakdown_section(arms: Sequence[ArmResult], prefix: str) -> str:
    rows = [(arm.name, _segments(arm.breakdown[0])) for arm in arms if arm.breakdown]
    if not rows:
        return ""
    # The same bars over the time the app wanted a CPU (running + runnable) only.
    demand_rows = []
    for name, segs in rows:
        want = [(label, pct, color) for label, pct, color in segs
                if not label.startswith("sleeping") and label != "unaccounted"]  # fmt: skip
        total = sum(p for _, p, _ in want)
        if total > 0:
            demand_rows.append((name, [(label, 100.0 * p / total, c) for label, p, c in want]))
    table = ["<table><tr><th>state</th>"]
    table += [f"<th>{escape(arm.name)}</th>" for arm in arms if arm.breakdown]
    table.append("</tr>")
    labels: list[str] = []
    for arm in arms:
        for s in arm.breakdown[0].shares if arm.breakdown else ():
            label = f"{s.state} {s.detail}".strip()
            if label not in labels and s.pct >= 0.5:
                labels.append(label)
    for label in labels:
        table.append(f"<tr><td>{escape(label)}</td>")
        for i, arm in enumerate(arms):
            if not arm.breakdown:
                continue
            idx = next(
                (j for j, s in enumerate(arm.breakdown[0].shares)
                 if f"{s.state} {s.detail}".strip() == label),
                None,
            )  # fmt: skip
            if idx is None:
                table.append("<td>-</td>")
            else:
                pct = arm.breakdown[0].shares[idx].pct
                table.append(
                    "<td>"
                    + _span(f"{prefix}arms[{i}].breakdown[0].shares[{idx}].pct", pct, ".1f", "%")
                    + "</td>"
                )
        table.append("</tr>")
    table.append("</table>")
    source = "; ".join(
        f"{arm.name}: {arm.breakdown[0].threads} threads, {arm.breakdown[0].source}"
        for arm in arms
        if arm.breakdown
    )
    return (
        "<h2>Where the app's time went</h2>"
        "<p>Every thread of the app is running, waiting for a CPU (runnable) or sleeping. "
        "While it waits, somebody else holds the CPU: the idle CPU of a throttled group "
        "(the quota), another process (named), or the app's own threads.</p>"
        + svg.stacked_bars("Share of the app threads' wall time", rows)
        + (
            svg.stacked_bars("Share of the time the app wanted a CPU", demand_rows)
            if demand_rows
            else ""
        )
        + "".join(table)
        + f'<p class="sub">{escape(source)}</p>'
    )


def _time_plots(arms: Sequence[ArmResult]) -> str:
    figs = []
    for arm in arms:
        if not arm.series:
            continue
        roles = sorted({r for p in arm.series for r in p.cpu_cores})
        lines = [
            svg.Line(role, ROLE_COLORS.get(role, "#8c8c8c"),
                     [(p.t_s, 100.0 * p.cpu_cores.get(role, 0.0)) for p in arm.series])
            for role in roles
        ]  # fmt: skip
        figs.append(
            "<figure>"
            + svg.line_chart(
                f"{arm.name}: CPU use per process role", lines, "seconds", "% of one CPU"
            )
            + "</figure>"
        )
        if any(p.throttled_ms_per_s for p in arm.series):
            throttled = svg.Line(
                "throttled", "#d62728", [(p.t_s, p.throttled_ms_per_s or 0.0) for p in arm.series]
            )
            figs.append(
                "<figure>"
                + svg.line_chart(
                    f"{arm.name}: throttled time", [throttled], "seconds", "ms/s, summed over CPUs"
                )
                + "</figure>"
            )
        pressure = []
        if any(p.psi_some_pct is not None for p in arm.series):
            pressure.append(
                svg.Line(
                    "PSI some %", "#9467bd", [(p.t_s, p.psi_some_pct or 0.0) for p in arm.series]
                )
            )
        if any(p.psi_full_pct is not None for p in arm.series):
            pressure.append(
                svg.Line(
                    "PSI full %",
                    "#1f77b4",
                    [(p.t_s, p.psi_full_pct or 0.0) for p in arm.series],
                    dashed=True,
                )
            )
        if pressure:
            figs.append(
                "<figure>"
                + svg.line_chart(f"{arm.name}: CPU pressure", pressure, "seconds", "%", y_max=100)
                + "</figure>"
            )
    if not figs:
        return ""
    return (
        '<h2>Over time</h2><div class="grid">' + "".join(figs) + "</div>"
        '<p class="sub">Throttled time as cgroup v1 counts it: summed over CPUs (up to 1000 ms/s '
        "per CPU). PSI: the sandbox's cpu.pressure when known, else the system's.</p>"
    )


def _distribution_plots(arms: Sequence[ArmResult]) -> str:
    figs = []
    rq = [svg.Line(a.name, _arm_color(a.name, i), svg.log2_steps([(b.low, b.high, b.count) for b in a.run_queue_us]))
          for i, a in enumerate(arms) if a.run_queue_us]  # fmt: skip
    if rq:
        figs.append("<figure>" + svg.line_chart("Run-queue wait of the app (each wait)", rq, "microseconds (log)", "% of waits", log_x=True)
                    + "<figcaption>How long each wakeup or preemption of an app thread waited for a CPU.</figcaption></figure>")  # fmt: skip
    sl = [svg.Line(a.name, _arm_color(a.name, i), svg.log2_steps([(b.low, b.high, b.count) for b in a.slice_us]))
          for i, a in enumerate(arms) if a.slice_us]  # fmt: skip
    if sl:
        figs.append("<figure>" + svg.line_chart("On-CPU slice length of the app", sl, "microseconds (log)", "% of slices", log_x=True)
                    + "<figcaption>How long the app ran each time it got a CPU.</figcaption></figure>")  # fmt: skip
    cdf = []
    for i, a in enumerate(arms):
        values = sorted(a.latencies_ms)
        if values:
            n = len(values)
            cdf.append(
                svg.Line(
                    a.name,
                    _arm_color(a.name, i),
                    [(v, 100.0 * (k + 1) / n) for k, v in enumerate(values)],
                )
            )
    if cdf:
        figs.append("<figure>" + svg.line_chart("Request latency (cumulative)", cdf, "milliseconds (log)", "% of requests", y_max=100, log_x=True)
                    + "<figcaption>Measured from each request's intended start (open loop), so queueing counts.</figcaption></figure>")  # fmt: skip
    if not figs:
        return ""
    return '<h2>Distributions</h2><div class="grid">' + "".join(figs) + "</div>"


def _comparisons(comparisons: Sequence[Comparison], key: str) -> str:
    if not comparisons:
        return ""
    out = ["<h2>Comparisons</h2>"]
    for ci, c in enumerate(comparisons):
        out.append(f"<h3>{escape(c.a)} vs {escape(c.b)}</h3><table><tr><th>distribution</th>"
                   f"<th>{escape(c.a)} median / p95</th><th>{escape(c.b)} median / p95</th>"
                   "<th>&times; median</th><th>Cliff's delta</th><th>Mann-Whitney p</th></tr>")  # fmt: skip
        for ti, t in enumerate(c.tests):
            k = f"{key}[{ci}].tests[{ti}]"
            out.append(
                f"<tr><td>{escape(t.name)} ({t.unit}, n {t.n_a} / {t.n_b})</td>"
                f"<td>{_span(k + '.median_a', t.median_a, '.4g')} / {_span(k + '.p95_a', t.p95_a, '.4g')}</td>"
                f"<td>{_span(k + '.median_b', t.median_b, '.4g')} / {_span(k + '.p95_b', t.p95_b, '.4g')}</td>"
                f"<td>{_span(k + '.median_ratio', t.median_ratio, '.3g')}</td>"
                f"<td>{_span(k + '.cliffs_delta', t.cliffs_delta, '+.2f')} {escape(t.effect)}</td>"
                f"<td>{_span(k + '.p_value', t.p_value, '.2g')}</td></tr>"
            )
        out.append("</table>")
        out.append(f'<p class="conclusion">{escape(c.conclusion)}</p>')
    out.append(
        '<p class="sub">Cliff\'s delta: the probability that a value of the second is larger '
        "than one of the first, minus the reverse (-1..1; |d| &ge; 0.474 is large). "
        "Mann-Whitney U, two-sided, normal approximation with ties; significant below 0.01.</p>"
    )
    return "".join(out)


def _reference(result: LabResult) -> str:
    if not result.reference:
        return ""
    out = ["<h2>The original document's table, measured</h2><table><tr><th>metric</th>"
           "<th>document: no contention</th><th>document: contention</th>"
           "<th>measured: baseline</th><th>measured: contention</th><th>verdict</th></tr>"]  # fmt: skip
    for r in result.reference:
        cls = "holds" if r.holds else "fails" if r.holds is False else ""
        out.append(
            f"<tr><td>{escape(r.metric)}</td><td>{escape(r.reference_baseline)}</td>"
            f"<td>{escape(r.reference_contention)}</td><td>{escape(r.baseline)}</td>"
            f'<td>{escape(r.contention)}</td><td class="{cls}">{escape(r.note)}</td></tr>'
        )
    out.append("</table>")
    return "".join(out)


def _result_section(result: LabResult, index: int, many: bool) -> str:
    prefix = f"results[{index}]." if many else ""
    cfg = result.config
    limit = f"{cfg.cpus:g} CPU" if cfg.cpus is not None else "no CPU limit"
    memory = f"{cfg.memory_bytes >> 20} MiB" if cfg.memory_bytes is not None else "no memory limit"
    head = (
        f'<p class="sub">The app (Flask /compute under gunicorn) and {cfg.noise_workers} noise '
        f"processes in a sandbox of {escape(limit)} and {escape(memory)} ({escape(cfg.cgroup_mode or 'no sandbox')}), "
        f"loaded open-loop at {cfg.rate_per_s:.1f} requests/s for {cfg.duration_s:g} s per arm; "
        f"backend {escape(cfg.backend)}.</p>"
    )
    return (
        head
        + "<h2>Verdict</h2>"
        + _verdicts(result.arms, prefix)
        + _breakdown_section(result.arms, prefix)
        + _time_plots(result.arms)
        + _distribution_plots(result.arms)
        + _comparisons(result.comparisons, f"{prefix}comparisons")
        + _reference(result)
    )


def render(
    results: Sequence[LabResult],
    comparisons: Sequence[Comparison] = (),
    title: str = "contend lab",
) -> str:
    """One page for one lab result (its own comparisons) or several (plus `comparisons`
    between them, keyed `comparisons[...]` in the page)."""
    many = len(results) > 1
    body = "".join(
        (f"<h2>Result {i + 1}</h2>" if many else "") + _result_section(r, i, many)
        for i, r in enumerate(results)
    )
    if many or (comparisons and not results):
        body = _comparisons(comparisons, "comparisons") + body
    elif comparisons and list(comparisons) != list(results[0].comparisons):
        body += _comparisons(comparisons, "comparisons")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{escape(title)}: is the app starved of CPU, and by what?</h1>"
        + body
        + f"<footer>contend {escape(__version__)}: every number here is in the JSON result "
        "(contend lab --json); the plots are inline SVG.</footer></body></html>\n"
    )


# --- a trace or a recorded session (contend report --html) --------------------------------


def _merge_hists(rows: Sequence[Sequence[HistBucket]]) -> list[tuple[int, int, int]]:
    merged: dict[tuple[int, int], int] = {}
    for hist in rows:
        for b in hist:
            merged[(b.low, b.high)] = merged.get((b.low, b.high), 0) + b.count
    return [(low, high, n) for (low, high), n in sorted(merged.items())]


def render_trace(result: TraceResult, title: str = "contend report") -> str:
    """One page for a trace result (`contend trace`/`report`): where each target thread's
    time went (running, waiting for a CPU, the rest), who held the CPU while it waited,
    the longest waits, the run-queue and slice histograms, the costliest syscalls."""
    duration_ns = max(int(result.duration_s * 1e9), 1)
    threads = [(i, r) for i, r in enumerate(result.cpu) if r.tid]
    body = [
        f'<p class="sub">Target {escape(result.target)}; backend {escape(result.backend)}; '
        f"{result.duration_s:.2f} s; monitors {escape(', '.join(result.monitors))}; "
        "lost events " + _span("lost_events", result.lost_events, "d") + "</p>"
    ]
    if result.notes:
        body.append(
            '<ul class="evidence">'
            + "".join(f"<li>{escape(n)}</li>" for n in result.notes)
            + "</ul>"
        )
    if threads:
        bars = []
        table = ["<h2>Where each thread's time went</h2><table><tr><th>thread</th><th>on CPU</th>"
                 "<th>slices</th><th>waits</th><th>avg wait</th><th>p99 wait</th>"
                 "<th>voluntary / involuntary</th></tr>"]  # fmt: skip
        for i, r in sorted(threads, key=lambda ir: -ir[1].on_cpu_ns)[:20]:
            rq = r.run_queue_latency
            waited = int((rq.avg_ns or 0.0) * rq.count)
            run_pct = 100.0 * r.on_cpu_ns / duration_ns
            wait_pct = 100.0 * waited / duration_ns
            rest = max(100.0 - run_pct - wait_pct, 0.0)
            name = f"{r.comm} {r.pid}/{r.tid}"
            bars.append((name[:14], [("running", run_pct, STATE_COLORS["running"]),
                                     ("waiting for a CPU", wait_pct, STATE_COLORS["throttled"]),
                                     ("sleeping or not traced", rest, SLEEP_COLORS[0])]))  # fmt: skip
            k = f"cpu[{i}]"
            table.append(
                f"<tr><td>{escape(name)}</td>"
                f"<td>{_span(k + '.on_cpu_ns', r.on_cpu_ns, ',d', ' ns')}</td>"
                f"<td>{_span(k + '.slices', r.slices, 'd')}</td>"
                f"<td>{_span(k + '.run_queue_latency.count', rq.count, 'd')}</td>"
                f"<td>{_span(k + '.run_queue_latency.avg_ns', rq.avg_ns, ',.0f', ' ns')}</td>"
                f"<td>{_span(k + '.run_queue_latency.p99_ns', rq.p99_ns, ',.0f', ' ns')}</td>"
                f"<td>{r.voluntary_switches} / {r.involuntary_switches}</td></tr>"
            )
        table.append("</table>")
        body.append("".join(table))
        body.append(svg.stacked_bars("Share of the trace's duration, per thread", bars))
        figs = []
        rq_hist = _merge_hists([r.run_queue_latency.hist for _, r in threads])
        if rq_hist:
            figs.append(svg.line_chart("Run-queue wait (each wait)", [svg.Line("waits", "#d62728", svg.log2_steps(rq_hist))],
                                       "microseconds (log)", "% of waits", log_x=True))  # fmt: skip
        sl_hist = _merge_hists([r.slice_hist for _, r in threads])
        if sl_hist:
            figs.append(svg.line_chart("On-CPU slice length", [svg.Line("slices", "#2a9d3a", svg.log2_steps(sl_hist))],
                                       "microseconds (log)", "% of slices", log_x=True))  # fmt: skip
        if figs:
            body.append(
                '<div class="grid">' + "".join(f"<figure>{f}</figure>" for f in figs) + "</div>"
            )
    if result.waited_behind:
        total = sum(o.ns for o in result.waited_behind) or 1
        top = sorted(result.waited_behind, key=lambda o: -o.ns)
        segs = [(f"{o.comm} ({o.tid})", 100.0 * o.ns / total, (QUEUED_COLORS + EXTRA_COLORS)[j])
                for j, o in enumerate(top[:7])]  # fmt: skip
        if top[7:]:
            segs.append(("others", 100.0 * sum(o.ns for o in top[7:]) / total, "#bbbbbb"))
        body.append("<h2>Who held the CPU while target threads waited</h2>")
        body.append(svg.stacked_bars("Share of all waiting time", [("waits", segs)]))
    if result.longest_waits:
        rows = ["<h2>Longest waits</h2><table><tr><th>at (CLOCK_MONOTONIC)</th><th>thread</th>"
                "<th>CPU</th><th>waited</th><th>who ran meanwhile</th></tr>"]  # fmt: skip
        for j, w in enumerate(result.longest_waits):
            who = ", ".join(f"{o.comm} ({o.tid}) {o.ns / 1e6:.1f} ms" for o in w.ran[:4])
            rows.append(
                f"<tr><td>{w.ts_ns / 1e9:.6f} s</td><td>{escape(w.comm)} {w.pid}/{w.tid}</td>"
                f"<td>{w.cpu}</td><td>{_span(f'longest_waits[{j}].wait_ns', w.wait_ns, ',d', ' ns')}</td>"
                f"<td>{escape(who)}</td></tr>"
            )
        rows.append("</table>")
        body.append("".join(rows))
    if result.syscalls:
        top_calls = sorted(enumerate(result.syscalls), key=lambda ir: -ir[1].total_ns)[:15]
        rows = ["<h2>Syscalls, by total time</h2><table><tr><th>process</th><th>syscall</th>"
                "<th>count</th><th>errors</th><th>total</th><th>avg</th></tr>"]  # fmt: skip
        for j, s in top_calls:
            rows.append(
                f"<tr><td>{escape(s.comm)} {s.pid}</td><td>{escape(s.syscall)}</td>"
                f"<td>{_span(f'syscalls[{j}].count', s.count, 'd')}</td><td>{s.errors}</td>"
                f"<td>{_span(f'syscalls[{j}].total_ns', s.total_ns, ',d', ' ns')}</td>"
                f"<td>{_num(s.avg_ns, ',.0f', ' ns')}</td></tr>"
            )
        rows.append("</table>")
        body.append("".join(rows))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{escape(title)}: {escape(result.target)}</h1>"
        + "".join(body)
        + f"<footer>contend {escape(__version__)}: every marked number is in the JSON "
        "(--format json); the plots are inline SVG.</footer></body></html>\n"
    )


# --- contend diagnose -----------------------------------------------------------------------


def _diagnosis_verdict(d: Diagnosis) -> str:
    v = d.verdict
    cls = "yes" if v.contention else "no"
    head = f"CONTENTION, {v.severity}" if v.contention else f"no contention ({v.severity})"
    out = [f'<div class="verdict {cls}"><h3>{escape(d.target)}: {escape(head)}</h3>']
    out.append(
        "<p>wait/run "
        + _span("verdict.wait_to_run", v.wait_to_run, ".2f")
        + " &middot; waited per slice "
        + _span("verdict.wait_per_slice_us", v.wait_per_slice_us, ",.0f", " us")
        + " &middot; system PSI some "
        + _span("psi_system_some", d.psi_system_some, ".0%")
        + "</p>"
    )
    out.append(f"<p>{escape(v.summary)}</p>")
    if d.causes:
        out.append("<p>Causes, ranked by share of the time it wanted a CPU:</p><ol>")
        for i, c in enumerate(d.causes):
            out.append(
                f"<li>{_span(f'causes[{i}].share_of_demand', c.share_of_demand, '.0%')} "
                f"{escape(c.sentence)}<br><em>What to do:</em> {escape(c.advice)}</li>"
            )
        out.append("</ol>")
    out.append("</div>")
    return "".join(out)


def _diagnosis_tables(d: Diagnosis) -> str:
    out = []
    if d.processes:
        out.append(
            "<h2>Processes</h2><table><tr><th>process</th><th>cgroup</th><th>running</th>"
            "<th>runnable</th><th>sleeping</th><th>wait/run</th><th>severity</th></tr>"
        )
        for i, p in enumerate(d.processes[:20]):
            runnable = sum(
                p.breakdown.get(s, 0) for s in ("throttled", "queued", "wakeup", "runnable")
            )
            out.append(
                f"<tr><td>{escape(p.comm)} ({p.pid})</td><td>{escape(p.cgroup or '')}</td>"
                f"<td>{_span(f'processes[{i}].breakdown.running', p.breakdown.get('running', 0), ',d', ' ns')}</td>"
                f"<td>{runnable:,d} ns</td>"
                f"<td>{_span(f'processes[{i}].breakdown.sleeping', p.breakdown.get('sleeping', 0), ',d', ' ns')}</td>"
                f"<td>{_span(f'processes[{i}].wait_to_run', p.wait_to_run, '.2f')}</td>"
                f"<td>{escape(p.severity)}</td></tr>"
            )  # fmt: skip
        out.append("</table>")
    if d.cgroups:
        out.append(
            "<h2>Cgroups</h2><table><tr><th>cgroup</th><th>quota</th><th>used</th>"
            "<th>throttled periods</th><th>throttled</th><th>PSI some</th><th>PSI full</th></tr>"
        )
        for i, c in enumerate(d.cgroups):
            name = c.path + (f" [container {c.container}]" if c.container else "")
            out.append(
                f"<tr><td>{escape(name)}</td>"
                f"<td>{_span(f'cgroups[{i}].quota_cpus', c.quota_cpus, 'g', ' CPU')}</td>"
                f"<td>{_span(f'cgroups[{i}].usage_cpus', c.usage_cpus, '.2f', ' CPU')}</td>"
                f"<td>{_span(f'cgroups[{i}].throttled_periods_ratio', c.throttled_periods_ratio, '.0%')}</td>"
                f"<td>{_span(f'cgroups[{i}].throttled_s', c.throttled_s, '.2f', ' s')}</td>"
                f"<td>{_span(f'cgroups[{i}].psi_some', c.psi_some, '.0%')}</td>"
                f"<td>{_span(f'cgroups[{i}].psi_full', c.psi_full, '.0%')}</td></tr>"
            )  # fmt: skip
        out.append("</table>")
    out.append(
        "<h2>The original document's indicators, measured here</h2><table><tr><th>metric</th>"
        "<th>document: contention</th><th>measured</th><th>says</th><th>agrees with the verdict</th></tr>"
    )
    for ind in d.indicators:
        says = {None: "not measured", True: "contention", False: "none"}[ind.indicates_contention]
        agrees = {None: "-", True: "yes", False: "no"}[ind.agrees]
        out.append(
            f"<tr><td>{escape(ind.metric)}</td><td>{escape(ind.reference_contention)}</td>"
            f"<td>{escape(ind.measured)}</td><td>{says}</td><td>{agrees}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _diagnosis_plots(d: Diagnosis) -> str:
    figs = []
    pts = d.series
    if pts:
        lines = [
            svg.Line(name, color, [(p.t_s, 100.0 * p.cpu_cores.get(name, 0.0)) for p in pts])
            for name, color in (("running", STATE_COLORS["running"]), ("waiting", STATE_COLORS["throttled"]))
        ]  # fmt: skip
        figs.append(
            svg.line_chart("CPU: running and waiting for one", lines, "seconds", "% of one CPU")
        )
        if any(p.throttled_ms_per_s for p in pts):
            figs.append(svg.line_chart("Throttled time of its group", [svg.Line("throttled", "#d62728", [(p.t_s, p.throttled_ms_per_s or 0.0) for p in pts])], "seconds", "ms/s"))  # fmt: skip
        pressure = [svg.Line(label, color, [(p.t_s, getattr(p, attr) or 0.0) for p in pts], dashed=dashed)
                    for label, color, attr, dashed in (("PSI some %", "#9467bd", "psi_some_pct", False), ("PSI full %", "#1f77b4", "psi_full_pct", True))
                    if any(getattr(p, attr) is not None for p in pts)]  # fmt: skip
        if pressure:
            figs.append(svg.line_chart("CPU pressure", pressure, "seconds", "%", y_max=100))
    if d.run_queue_us:
        figs.append(svg.line_chart("Run-queue wait (each wait)", [svg.Line("waits", "#d62728", svg.log2_steps([(b.low, b.high, b.count) for b in d.run_queue_us]))], "microseconds (log)", "% of waits", log_x=True))  # fmt: skip
    if d.slice_us:
        figs.append(svg.line_chart("On-CPU slice length", [svg.Line("slices", "#2a9d3a", svg.log2_steps([(b.low, b.high, b.count) for b in d.slice_us]))], "microseconds (log)", "% of slices", log_x=True))  # fmt: skip
    if not figs:
        return ""
    return '<h2>Over time and distributions</h2><div class="grid">' + "".join(f"<figure>{f}</figure>" for f in figs) + "</div>"  # fmt: skip


def render_diagnosis(d: Diagnosis, title: str = "contend diagnose") -> str:
    """One page for a diagnosis: the verdict and its causes first, where the time went,
    the plots over time (running, waiting, throttling, PSI), the wait and slice
    histograms, the processes, the cgroups and the document's indicators."""
    b = d.breakdown
    body = [
        f'<p class="sub">Backend {escape(d.backend)}; {d.duration_s:.2f} s; '
        f"{b.threads} thread{'s' if b.threads != 1 else ''}; "
        f"{escape(b.source)}; lost events " + _span("lost_events", d.lost_events, "d") + "</p>",
        _diagnosis_verdict(d),
        "<h2>Where its time went</h2>",
        svg.stacked_bars("Share of its threads' wall time", [(d.target[:14], _segments(b))]),
        "<table><tr><th>state</th><th>share</th></tr>",
    ]
    for i, s in enumerate(b.shares):
        if s.pct >= 0.1:
            label = f"{s.state} {s.detail}".strip()
            body.append(f"<tr><td>{escape(label)}</td><td>{_span(f'shares[{i}].pct', s.pct, '.1f', '%')}</td></tr>")  # fmt: skip
    body.append("</table>")
    body.append(_diagnosis_plots(d))
    body.append(_diagnosis_tables(d))
    if d.notes:
        body.append('<ul class="evidence">' + "".join(f"<li>{escape(n)}</li>" for n in d.notes) + "</ul>")  # fmt: skip
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{escape(title)}: {escape(d.target)}</h1>"
        + "".join(body)
        + f"<footer>contend {escape(__version__)}: every marked number is in the JSON "
        "(--format json); the plots are inline SVG.</footer></body></html>\n"
    )
