"""`contend advise SESSION|TARGET`: the quota a group needs, predicted from its recorded
demand by simulating CFS bandwidth control (analysis/advice.py)."""

from __future__ import annotations

from pathlib import Path

import click

from contend.analysis.advice import advise
from contend.cli.console import check_distinct, check_output_path, write_output
from contend.cli.session import record_run
from contend.cli.trace import cli_target
from contend.collect.cgroups import bandwidth_slice_us
from contend.errors import UsageError
from contend.monitors import session as sessions
from contend.monitors.demand import demand_of
from contend.monitors.tracefs_trace import TracefsRun
from contend.render import advice_text
from contend.render.json import dumps
from contend.target import parse_duration, parse_quotas, parse_ratio, parse_us

DEFAULT_DURATION_S = 10.0


def _notes(run: TracefsRun) -> tuple[str, ...]:
    lost = run.result.lost_events
    if not lost:
        return ()
    return (
        f"{lost} events were lost in the recording: the demand is short of what they held "
        "(record with more --pages, or advise on a target: it records the cpu monitor only)",
    )


@click.command("advise")
@click.argument("session_file", required=False)
@click.option("--pid", "pids", multiple=True, help="Record this process first (all its threads).")
@click.option("--comm", help="Record the processes of this name first.")
@click.option("--cgroup", help="Record the tasks of this cgroup first.")
@click.option("--container", help="Record the processes of this container first.")
@click.option("--duration", help=f"Record this many seconds (default {DEFAULT_DURATION_S:g}).")
@click.option("--quota", "quota", help="Quotas to predict, in CPUs: 0.2,0.3,0.5,1.")
@click.option(
    "--slo-throttled", default="5%", show_default=True,
    help="The recommendation: the smallest quota throttling at most this share of periods.",
)  # fmt: skip
@click.option("--period", default="100ms", show_default=True, help="The CFS period.")
@click.option("--burst", help="cpu.max.burst to predict with, in ms of CPU (default 0).")
@click.option("--format", "fmt", default="text", show_default=True, help="text or json.")
@click.option("-o", "--output", help="Write the advice to this file instead of stdout.")
@click.pass_context
def command(
    ctx: click.Context,
    session_file: str | None,
    pids: tuple[str, ...],
    comm: str | None,
    cgroup: str | None,
    container: str | None,
    duration: str | None,
    quota: str | None,
    slo_throttled: str,
    period: str,
    burst: str | None,
    fmt: str,
    output: str | None,
) -> int:
    """What CPU quota would this group need? From a session file written by `contend
    record` (or a target, recorded first with tracefs): its threads' demand replayed under
    each quota by a simulation of the kernel's CFS bandwidth control, the throttling each
    would cause, and the smallest quota that keeps it within the SLO."""
    if fmt not in ("text", "json"):
        raise UsageError(f"--format: {fmt!r} is not text or json")
    quotas = parse_quotas("--quota", quota) if quota is not None else ()
    slo = parse_ratio("--slo-throttled", slo_throttled)
    period_us = parse_us("--period", period, "ms", 1000, 1_000_000)  # cpu.max's range
    burst_us = parse_us("--burst", burst, "ms", 0, 1_000_000) if burst is not None else 0
    if output is not None:
        check_output_path("-o", output)
    command_args = tuple((ctx.obj or {}).get("command", ()))
    given = bool(pids or comm or cgroup or container or command_args)
    if session_file is not None:
        if given or duration is not None:
            raise UsageError("give a session file or a target to record, not both")
        if not Path(session_file).is_file():
            raise UsageError(f"{session_file}: no such file")
        check_distinct([session_file], {"-o": output})
        run = sessions.load(Path(session_file))
    else:
        if not given:
            raise UsageError("give a session file, or a target to record first")
        target = cli_target(pids, comm, cgroup, container, command_args)
        if target.system_wide:
            raise UsageError("give a target: a quota is advised for one group")
        seconds = (
            parse_duration("--duration", duration, 0.5, 86400)
            if duration is not None
            else (None if command_args else DEFAULT_DURATION_S)
        )
        # The scheduler's events only: a syscall-heavy target
        # would otherwise fill the buffers with events the demand does not use.
        run = record_run(target, seconds, monitors=("cpu",))
    result = advise(
        demand_of(run),
        quotas,
        notes=_notes(run),
        slo_throttled=slo,
        period_us=period_us,
        slice_us=bandwidth_slice_us(),
        burst_cpus=burst_us / period_us,
    )
    text = dumps(result.to_json_dict()) if fmt == "json" else advice_text.render(result)
    if output is not None:
        write_output("-o", output, text)
    else:
        click.echo(text, nl=False)
    return 0
