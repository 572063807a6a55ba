"""Terminal output of the lab: the original document's table, measured, then the rows
that really separate the arms, then a verdict per arm with its evidence."""

from __future__ import annotations

import io

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from contend.model import LabResult


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

    parts: list[Text | Table] = [header, ref, sep]
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
            parts.append(Text("  cause: " + "; ".join(v.causes)))
    return Group(*parts)


def render_lab(result: LabResult, width: int = 120) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(lab_renderable(result))
    return out.getvalue()
