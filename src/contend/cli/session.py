"""`contend record [TARGET] -o FILE` and `contend report FILE`: a tracefs run saved as a
session file (contend.session/1), analysed later through the same code as `trace`."""

from __future__ import annotations

from pathlib import Path

import click

from contend.analysis.diagnosis import diagnose
from contend.cli.console import check_distinct, check_output_path, write_output
from contend.cli.trace import _emit, cli_target
from contend.collect.cgroups import detect_layout
from contend.collect.procfs import ProcFS
from contend.errors import UsageError
from contend.monitors import MONITORS, TraceOptions
from contend.monitors import session as sessions
from contend.monitors.diagnose import Watch, observation_of_session, resolve_holders
from contend.monitors.tracefs_trace import TracefsRun, check_available, run_tracefs
from contend.render import html as render_html
from contend.render import perfetto
from contend.target import Target, parse_duration, parse_positive_int


@click.command("record")
@click.option("--pid", "pids", multiple=True, help="Record this process, all its threads.")
@click.option("--comm", help="Record the processes of this name (and their children).")
@click.option("--cgroup", help="Record the tasks of this cgroup.")
@click.option("--container", help="Record the processes of this container (podman or docker).")
@click.option("--duration", help="Stop after this many seconds (default: Ctrl-C or exit).")
@click.option("--buffer-pages", help="Ring-buffer pages (4 KiB) per CPU (default 1024).")
@click.option("-o", "--output", required=True, help="The session file to write.")
@click.pass_context
def record(
    ctx: click.Context,
    pids: tuple[str, ...],
    comm: str | None,
    cgroup: str | None,
    container: str | None,
    duration: str | None,
    buffer_pages: str | None,
    output: str,
) -> int:
    """Record every event of a target (tracefs backend) into a session file; `-- CMD`
    launches CMD and records it from its first instruction."""
    out = check_output_path("-o", output)
    command_args = tuple((ctx.obj or {}).get("command", ()))
    target = cli_target(pids, comm, cgroup, container, command_args)
    seconds = (
        parse_duration("--duration", duration, 0.1, 86400 * 7) if duration is not None else None
    )
    pages = None
    if buffer_pages is not None:
        pages = parse_positive_int("--buffer-pages", buffer_pages, 1, 65536)
        if pages & (pages - 1):
            raise UsageError(f"--buffer-pages: {pages} is not a power of 2")
    run = record_run(target, seconds, pages)
    sessions.save(run, out)
    r = run.result
    click.echo(
        f"contend record: {r.overhead.events} events of {r.target} in {r.duration_s:.2f} s, "
        f"{r.lost_events} lost -> {out}"
    )
    return r.exit_status if r.exit_status is not None else 0


def record_run(
    target: Target,
    seconds: float | None,
    pages: int | None = None,
    monitors: tuple[str, ...] = MONITORS,
) -> TracefsRun:
    """A tracefs run of `monitors` (record: every one) with what `diagnose` reads around
    it (the window, cgroups, samples), as `record` saves it and `advise` uses it."""
    check_available()
    watch = Watch(target, ProcFS(), detect_layout())
    opts = TraceOptions(
        monitors,
        target,
        seconds,
        buffer_pages=pages,
        on_started=watch.started,
        on_stopping=watch.stopping,
    )
    try:
        run = run_tracefs(opts)
    finally:
        watch.stopping()
    watch.attach(run)
    resolve_holders(run)  # while they live: the file names them as diagnose did
    return run


@click.command("report")
@click.argument("session_file")
@click.option("--format", "fmt", default="text", show_default=True, help="text or json.")
@click.option("-o", "--output", help="Write the result to this file instead of stdout.")
@click.option("--perfetto", "perfetto_file", help="Also write the timeline (Chrome trace JSON).")
@click.option("--html", "html_file", help="Also write an HTML report (self-contained).")
def report(
    session_file: str,
    fmt: str,
    output: str | None,
    perfetto_file: str | None,
    html_file: str | None,
) -> int:
    """Analyse a session file written by `contend record`, with trace's outputs, and
    diagnose it as `contend diagnose` does (its `diagnosis`)."""
    if fmt not in ("text", "json"):
        raise UsageError(f"--format: {fmt!r} is not text or json")
    if not Path(session_file).is_file():
        raise UsageError(f"{session_file}: no such file")
    outputs = {"-o": output, "--perfetto": perfetto_file, "--html": html_file}
    for option, path in outputs.items():
        if path is not None:
            check_output_path(option, path)
    check_distinct([session_file], outputs)
    run = sessions.load(Path(session_file))
    if html_file is not None:
        write_output("--html", html_file, render_html.render_trace(run.result))
    if perfetto_file is not None:
        write_output(
            "--perfetto", perfetto_file, perfetto.render(run.timeline(), run.result.target)
        )
    diagnosis = diagnose(observation_of_session(run)) if run.slices is not None else None
    _emit(run.result, fmt, output, diagnosis)
    return 0
