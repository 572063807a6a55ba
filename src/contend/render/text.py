"""Terminal output of the lab: the original document's table, measured, then the rows
that really separate the arms, then a verdict per arm with its evidence."""

from __future__ import annotations

import io
from collections.abc import Sequence

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from contend.model import Comparison, LabResult


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{value:.0f}%"
    if unit == "CPUs":
        return f"{value:.2f} CPUs"
    if unit == "us":
        return f"{value / 1000:.1f} ms" if value >= 1000 else f"{value:.0f} us"
    if unit == "ms":
        return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"
    return f"{value:.2f}"


def lab_renderable(result: LabResult) -> Group:
    cfg = result.config
    limit = f"{cfg.cpus:g} CPU" if cfg.cpus is not None else "no CPU limit"
    memory = f"{cfg.memory_bytes >> 20} MiB" if cfg.memory_bytes is not None else "no memory limit"
    cost = f", {cfg.cost_per_request_ms:.1f} ms CPU per request" if cfg.cost_per_request_ms else ""
    where = f"{cfg.engine} containers" if cfg.engine else "a sandbox"
    header = Text(
        f"contend lab: app + {cfg.noise_workers} noise workers in {where} of {limit}, {memory} "
        f"({cfg.cgroup_mode or 'no sandbox'}); {cfg.rate_per_s:.1f} req/s open loop{cost}; "
        f"{cfg.duration_s:g} s per arm; backend {cfg.backend}"
    )

    ref = Table(title="Contention vs no contention (the original document's table, measured)")
    ref.add_column("Metric")
    ref.add_column("Doc: none", justify="right")
    ref.add_column("Doc: contention", justify="right")
    ref.add_column("Measured: baseline", justify="right")
    ref.add_column("Measured: contention", justify="right")
    ref.add_column("Reference")
    for row in result.reference:
        style = "green" if row.holds else ("red" if row.holds is False else "yellow")
        ref.add_row(
            row.metric,
            row.reference_baseline,
            row.reference_contention,
            row.baseline,
            row.contention,
            Text(row.note, style=style),
        )

    sep = Table(title="What separates the arms here")
    sep.add_column("Metric")
    sep.add_column("baseline", justify="right")
    sep.add_column("contention", justify="right")
    sep.add_column("separates")
    for srow in result.separating:
        sep.add_row(
            srow.metric,
            _num(srow.baseline, srow.unit),
            _num(srow.contention, srow.unit),
            Text("yes", style="bold") if srow.separates else "no",
        )

    parts: list[Text | Table | Group] = [header, ref, sep]
    for arm in result.arms:
        m = arm.metrics
        v = arm.verdict
        r = m.requests
        kinds = (
            " (" + ", ".join(f"{n} {kind}" for kind, n in r.error_kinds.items()) + ")"
            if r.error_kinds
            else ""
        )
        head = "CONTENTION" if v.contention else "no contention"
        style = "bold red" if v.contention else "bold green"
        line = Text.assemble(
            (f"{arm.name}: ", "bold"),
            (f"{head}", style),
            f" (severity {v.severity}); {r.count} requests, {r.errors} errors{kinds}, "
            f"p50 {_num(r.latency_ms.p50, 'ms')}, p95 {_num(r.latency_ms.p95, 'ms')}, "
            f"p99 {_num(r.latency_ms.p99, 'ms')}",
        )
        parts.append(line)
        for sentence in v.evidence:
            parts.append(Text(f"  - {sentence}"))
        if v.causes:
            parts.append(Text("  causes, ranked:"))
            for cause in v.causes:
                parts.append(Text(f"    {cause}"))
    if any(arm.breakdown for arm in result.arms):
        parts.append(breakdown_table(result))
    for comparison in result.comparisons:
        parts.append(comparison_renderable(comparison))
    return Group(*parts)


def _val(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit in ("ms", "us"):
        return _num(value, unit)
    if unit == "%":
        return f"{value:.0f}%"
    return f"{value:.3g} {unit}".strip()


def comparison_renderable(c: Comparison) -> Group:
    """A vs B: the distributions with effect size and test, the headline metrics, the
    conclusion."""
    table = Table(title=f"{c.a} vs {c.b}")
    table.add_column("Distribution")
    table.add_column(f"{c.a}: median / p95", justify="right")
    table.add_column(f"{c.b}: median / p95", justify="right")
    table.add_column("x median", justify="right")
    table.add_column("Cliff's delta", justify="right")
    table.add_column("Mann-Whitney", justify="right")
    for t in c.tests:
        table.add_row(
            f"{t.name} (n {t.n_a} / {t.n_b})",
            f"{_val(t.median_a, t.unit)} / {_val(t.p95_a, t.unit)}",
            f"{_val(t.median_b, t.unit)} / {_val(t.p95_b, t.unit)}",
            f"{t.median_ratio:.2g}" if t.median_ratio is not None else "n/a",
            f"{t.cliffs_delta:+.2f} {t.effect}" if t.cliffs_delta is not None else "n/a",
            ("p < 0.001" if t.p_value < 0.001 else f"p = {t.p_value:.3f}")
            if t.p_value is not None
            else "n/a",
        )
    for m in c.metrics:
        table.add_row(
            m.metric,
            _val(m.a, m.unit),
            _val(m.b, m.unit),
            f"{m.ratio:.2g}" if m.ratio is not None else "",
            "",
            "",
        )
    return Group(table, Text(c.conclusion, style="bold"))


def render_comparisons(comparisons: Sequence[Comparison], width: int = 120) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None)
    for c in comparisons:
        console.print(comparison_renderable(c))
    return out.getvalue()


def _share_label(state: str, detail: str) -> str:
    if state == "sleeping":
        return f"sleeping in {detail}" if detail and not detail.startswith("(") else "sleeping"
    return f"{state} {detail}".strip()


def breakdown_table(result: LabResult, rows_per_arm: int = 6) -> Table:
    """Where the app's threads' wall time went, per arm: the largest parts, the rest summed."""
    arms = [a for a in result.arms if a.breakdown]
    table = Table(title="Where the app's time went (share of its threads' wall time)")
    table.add_column("State")
    for arm in arms:
        table.add_column(arm.name, justify="right")
    labels: dict[str, float] = {}
    for arm in arms:
        for share in arm.breakdown[0].shares:
            key = _share_label(share.state, share.detail)
            labels[key] = max(labels.get(key, 0.0), share.pct)
    top = sorted(labels, key=lambda k: -labels[k])[: rows_per_arm * 2]
    order = [k for k in labels if k in top]
    for key in order:
        cells = []
        for arm in arms:
            pct = sum(
                s.pct for s in arm.breakdown[0].shares if _share_label(s.state, s.detail) == key
            )
            cells.append(f"{pct:.1f}%" if pct else "-")
        table.add_row(key, *cells)
    rest = []
    for arm in arms:
        shown = sum(
            s.pct for s in arm.breakdown[0].shares if _share_label(s.state, s.detail) in order
        )
        rest.append(f"{100.0 - shown:.1f}%")
    table.add_row("everything else", *rest)
    table.caption = "; ".join(
        f"{arm.name}: {arm.breakdown[0].threads} threads, {arm.breakdown[0].source}" for arm in arms
    )
    return table


def render_lab(result: LabResult, width: int = 120) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(lab_renderable(result))
    return out.getvalue()
