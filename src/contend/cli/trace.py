"""`contend trace MONITOR... [TARGET]`: the original document's four scripts as monitors."""

from __future__ import annotations

import dataclasses
import json
import platform
import sys

import click

from contend.analysis.metrics import busy_fairness
from contend.analysis.sampled_trace import trace_result
from contend.cli.console import check_distinct, check_output_path, write_output
from contend.collect import bpftrace as bt
from contend.collect import containers
from contend.collect.cgroups import detect_layout
from contend.errors import ContendError, UsageError
from contend.model import Diagnosis, TraceResult
from contend.monitors import MONITORS, TraceOptions, build_program, run_trace
from contend.monitors.sampled import run_sampled
from contend.monitors.tracefs_trace import check_available, run_tracefs
from contend.render import diagnosis_text, perfetto, trace_text
from contend.render.json import dumps
from contend.target import (
    Target,
    parse_duration,
    parse_positive_int,
    resolve_target,
    validate_container,
)

BACKENDS = ("auto", "bpftrace", "tracefs", "procfs")


def cli_target(
    pids: tuple[str, ...],
    comm: str | None,
    cgroup: str | None,
    container: str | None,
    command_args: tuple[str, ...],
) -> Target:
    """The one target of `trace` and `record`: --pid, --comm, --cgroup, --container or a
    command; a container is resolved through its engine (its cgroup, v1 or v2)."""
    if container is not None:
        if pids or comm or cgroup or command_args:
            raise UsageError("give one target: --pid, --comm, --cgroup, --container or -- COMMAND")
        found = containers.inspect(validate_container(container))
        if found.cgroup is None:
            raise ContendError(f"--container {container!r}: cannot find its cgroup")
        return Target(
            cgroup=found.cgroup,
            cgroup_id=found.cgroup_id,
            container=f"{container} ({found.engine}, pid {found.pid})",
            watch_pid=found.pid,
        )
    layout = detect_layout()
    roots = tuple(
        dict.fromkeys([*([layout.v2_root] if layout.v2_root else []), *layout.v1_roots.values()])
    )
    return resolve_target(
        pids, comm, cgroup, command_args, cgroup_roots=roots, cgroup2_root=layout.v2_root
    )


@click.command("trace")
@click.argument("monitors", nargs=-1, required=True)
@click.option(
    "--pid", "pids", multiple=True, help="Trace this process, all its threads (repeatable)."
)
@click.option("--comm", help="Trace tasks with this name (DTrace's execname).")
@click.option("--cgroup", help="Trace the tasks of this cgroup (path, absolute or under a mount).")
@click.option("--container", help="Trace the processes of this container (podman or docker).")
@click.option(
    "--duration", help="Stop after this many seconds (default: Ctrl-C or the command's exit)."
)
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    help="bpftrace, tracefs (every event, root), procfs (no root) or auto.",
)
@click.option("--format", "fmt", default="text", show_default=True, help="text or json.")
@click.option("-o", "--output", help="Write the result to this file instead of stdout.")
@click.option("--events", is_flag=True, help="Also stream per-event lines (cpu, io, process).")
@click.option(
    "--latency",
    default="sampled",
    show_default=True,
    help="syscalls: time 1 call in 16 (counts and errors stay exact), or exact: every call.",
)
@click.option("--interval", help="Also print the summary so far every S seconds.")
@click.option(
    "--buffer-pages",
    help="Pages per CPU of the buffer that carries events (power of 2; bpftrace's default "
    "64; tracefs: 4 KiB ring-buffer pages, default 1024).",
)
@click.option(
    "--print-program", is_flag=True, help="Print the generated bpftrace program and exit."
)
@click.option(
    "--perfetto",
    "perfetto_file",
    help="tracefs: also write the cpu monitor's timeline as a Chrome trace (ui.perfetto.dev).",
)
@click.pass_context
def command(
    ctx: click.Context,
    monitors: tuple[str, ...],
    pids: tuple[str, ...],
    comm: str | None,
    cgroup: str | None,
    container: str | None,
    duration: str | None,
    backend: str,
    fmt: str,
    output: str | None,
    events: bool,
    latency: str,
    interval: str | None,
    buffer_pages: str | None,
    print_program: bool,
    perfetto_file: str | None,
) -> int:
    """Trace syscalls, cpu, process and/or io (or all) of a target; `-- CMD ARGS` launches
    CMD and traces it and its descendants from the start."""
    chosen = _monitors(monitors)
    if backend not in BACKENDS:
        raise UsageError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if fmt not in ("text", "json"):
        raise UsageError(f"--format: {fmt!r} is not text or json")
    command_args = tuple((ctx.obj or {}).get("command", ()))
    target = cli_target(pids, comm, cgroup, container, command_args)
    seconds = (
        parse_duration("--duration", duration, 0.1, 86400 * 7) if duration is not None else None
    )
    if output is not None:
        check_output_path("-o", output)
    pages = None
    if buffer_pages is not None:
        pages = parse_positive_int("--buffer-pages", buffer_pages, 1, 65536)
        if pages & (pages - 1):
            raise UsageError(f"--buffer-pages: {pages} is not a power of 2")
    every = parse_duration("--interval", interval, 0.1, 86400) if interval is not None else None
    if latency not in ("sampled", "exact"):
        raise UsageError(f"--latency: {latency!r} is not sampled or exact")
    opts = TraceOptions(
        chosen,
        target,
        seconds,
        events=events,
        buffer_pages=pages,
        interval_s=every,
        latency=latency,
    )
    if print_program:
        click.echo(build_program(opts, initial_pids=(0,) if command_args else ()).text(), nl=False)
        return 0
    if perfetto_file is not None:
        if backend != "tracefs":
            raise UsageError("--perfetto needs --backend tracefs (every scheduling event)")
        if "cpu" not in chosen:
            raise UsageError("--perfetto draws the cpu monitor's events: add the cpu monitor")
        check_output_path("--perfetto", perfetto_file)
        check_distinct([], {"-o": output, "--perfetto": perfetto_file})
    if backend == "tracefs":
        check_available()
        if every is not None:
            opts.on_interval = lambda so_far: _print_interval(so_far, fmt)
        run = run_tracefs(opts)
        if perfetto_file is not None:
            write_output(
                "--perfetto", perfetto_file, perfetto.render(run.timeline(), run.result.target)
            )
        if events and fmt == "text":
            # Read in batches: the lines come at the end, from the whole timeline.
            for ev in run.events(platform.machine()):
                click.echo(trace_text.format_event(ev))
        return _emit(run.result, fmt, output)
    ok, why = bt.available()
    if backend == "bpftrace" and not ok:
        raise ContendError(f"--backend bpftrace: {why}")
    if backend == "procfs" or not ok:
        if events or every:
            flag = "--events" if events else "--interval"
            raise UsageError(f"{flag} needs the bpftrace backend (root and bpftrace)")
        sampled = run_sampled(target, seconds)
        result = trace_result(sampled, chosen, target.describe())
        if backend == "auto":
            result = dataclasses.replace(
                result, notes=(f"backend auto -> procfs: {why}", *result.notes)
            )
    else:
        if events and fmt == "text":
            opts.on_event = lambda ev: click.echo(trace_text.format_event(ev))
        if every is not None:
            opts.on_interval = lambda so_far: _print_interval(so_far, fmt)
        result = run_trace(opts)
    return _emit(result, fmt, output)


def _emit(
    result: TraceResult, fmt: str, output: str | None, diagnosis: Diagnosis | None = None
) -> int:
    """Print (or write) a trace result; with `diagnosis`, it follows the tables (text) or
    is the document's `diagnosis` (JSON)."""
    if result.cpu and result.backend in ("bpftrace", "tracefs"):
        threads = [float(r.on_cpu_ns) for r in result.cpu if r.tid]
        result = dataclasses.replace(result, fairness_index=busy_fairness(threads))
    if fmt == "json":
        doc = result.to_json_dict()
        if diagnosis is not None:
            doc["diagnosis"] = diagnosis.to_json_dict()
        text = dumps(doc)
    else:
        text = trace_text.render(result)
        if diagnosis is not None:
            text += "\n" + diagnosis_text.render(diagnosis)
    if output is not None:
        write_output("-o", output, text)
    else:
        sys.stdout.write(text)
    return result.exit_status if result.exit_status is not None else 0


def _print_interval(so_far: TraceResult, fmt: str) -> None:
    """One summary so far: text with a header line, or one compact JSON document per line."""
    if so_far.cpu:
        threads = [float(r.on_cpu_ns) for r in so_far.cpu if r.tid]
        so_far = dataclasses.replace(so_far, fairness_index=busy_fairness(threads))
    if fmt == "json":
        click.echo(json.dumps(so_far.to_json_dict(), separators=(",", ":")))
    else:
        click.echo(f"--- after {so_far.duration_s:.1f} s (cumulative) ---")
        click.echo(trace_text.render(so_far), nl=False)


def _monitors(names: tuple[str, ...]) -> tuple[str, ...]:
    chosen: list[str] = []
    for name in names:
        if name == "all":
            chosen.extend(MONITORS)
        elif name in MONITORS:
            chosen.append(name)
        else:
            raise UsageError(f"unknown monitor {name!r}: choose from {', '.join(MONITORS)} or all")
    return tuple(m for m in MONITORS if m in chosen)
