"""`contend diagnose [TARGET]`: is it starved of CPU, how badly, and by what."""

from __future__ import annotations

import sys

import click

from contend.analysis.diagnosis import diagnose
from contend.cli.console import check_distinct, check_output_path, write_output
from contend.cli.trace import cli_target
from contend.errors import UsageError
from contend.model import Diagnosis
from contend.monitors.diagnose import BACKENDS, observe
from contend.render import diagnosis_text, perfetto
from contend.render import html as render_html
from contend.render.json import dumps
from contend.target import parse_duration

DEFAULT_DURATION_S = 10.0


@click.command("diagnose")
@click.option("--pid", "pids", multiple=True, help="This process, all its threads (repeatable).")
@click.option("--comm", help="The processes of this name.")
@click.option("--cgroup", help="The tasks of this cgroup (path, absolute or under a mount).")
@click.option("--container", help="The processes of this container (podman or docker).")
@click.option(
    "--duration",
    help=f"Watch this many seconds (default {DEFAULT_DURATION_S:g}; a launched command: "
    "until it exits).",
)
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    help="bpftrace (root), procfs (no root: running and runnable only) or auto.",
)
@click.option("--format", "fmt", default="text", show_default=True, help="text or json.")
@click.option("-o", "--output", help="Write the diagnosis to this file instead of stdout.")
@click.option("--html", "html_file", help="Also write an HTML report (self-contained).")
@click.option(
    "--perfetto",
    "perfetto_file",
    help="Also write the scheduling timeline for ui.perfetto.dev (tracefs backend).",
)
@click.pass_context
def command(
    ctx: click.Context,
    pids: tuple[str, ...],
    comm: str | None,
    cgroup: str | None,
    container: str | None,
    duration: str | None,
    backend: str,
    fmt: str,
    output: str | None,
    html_file: str | None,
    perfetto_file: str | None,
) -> int:
    """Watch a target (or `-- CMD ARGS`, launched) and say whether it waited for CPU, how
    much, and behind what: the verdict, where its time went, the ranked causes with what
    to do, its cgroups (quota, throttling, PSI) and the original document's indicators.
    With no target: the machine's processes and cgroups that waited most, ranked."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if fmt not in ("text", "json"):
        raise UsageError(f"--format: {fmt!r} is not text or json")
    outputs = {"-o": output, "--html": html_file, "--perfetto": perfetto_file}
    for option, path in outputs.items():
        if path is not None:
            check_output_path(option, path)
    check_distinct([], outputs)
    if perfetto_file is not None:
        if backend == "auto":
            backend = "tracefs"  # the one backend that keeps every event
        elif backend != "tracefs":
            raise UsageError("--perfetto needs --backend tracefs (every scheduling event)")
    command_args = tuple((ctx.obj or {}).get("command", ()))
    target = cli_target(pids, comm, cgroup, container, command_args)
    seconds: float | None = (
        parse_duration("--duration", duration, 0.1, 86400 * 7)
        if duration is not None
        else (None if command_args else DEFAULT_DURATION_S)
    )
    if perfetto_file is not None and target.system_wide:
        raise UsageError("--perfetto needs a target")
    observation, run = observe(target, seconds, backend)
    result = diagnose(observation)
    if html_file is not None:
        write_output("--html", html_file, render_html.render_diagnosis(result))
    if perfetto_file is not None and run is not None:
        write_output("--perfetto", perfetto_file, perfetto.render(run.timeline(), result.target))
    emit(result, fmt, output)
    return result.exit_status if result.exit_status is not None else 0


def emit(d: Diagnosis, fmt: str, output: str | None) -> None:
    text = dumps(d.to_json_dict()) if fmt == "json" else diagnosis_text.render(d)
    if output is not None:
        write_output("-o", output, text)
    else:
        sys.stdout.write(text)
