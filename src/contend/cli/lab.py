"""`contend lab`: run the experiment and print the contention-vs-no-contention table."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from contend.cli.console import check_distinct, check_output_path, stdout_console, write_output
from contend.collect import tracefs
from contend.errors import PermissionNeeded, UsageError
from contend.lab.app import DEFAULT_N, MAX_N
from contend.lab.experiment import ARMS, LabOptions, check_advice, run_lab
from contend.model import ArmTimeline, RequestSample
from contend.render import advice_text, perfetto
from contend.render import html as render_html
from contend.render import json as render_json
from contend.render import text as render_text
from contend.render.json import dumps
from contend.target import (
    parse_cpus,
    parse_duration,
    parse_memory,
    parse_positive_int,
    parse_quotas,
    validate_engine,
)


class RichProgress:
    """Draws the experiment's phases on stderr."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: object = None
        self._errors = 0

    def phase(self, name: str, total: int | None) -> None:
        if self._task is not None:
            self._progress.update(self._task, visible=False)  # type: ignore[arg-type]
        self._errors = 0
        self._task = self._progress.add_task(name, total=total)

    def request_done(self, sample: RequestSample) -> None:
        if sample.status != 200:
            self._errors += 1
        self._progress.update(
            self._task,  # type: ignore[arg-type]
            advance=1,
            description=f"{self._progress.tasks[-1].description.split(' ')[0]}"
            + (f" ({self._errors} errors)" if self._errors else ""),
        )


@click.command("lab")
@click.option(
    "--cpus", default="0.5", show_default=True, help="CPU quota of the sandbox (docker --cpus)."
)
@click.option(
    "--memory", "-m", default="512m", show_default=True, help="Memory limit (docker -m syntax)."
)
@click.option(
    "--noise-workers", default="2", show_default=True, help="Noise processes in the contention arm."
)
@click.option("--duration", default="20", show_default=True, help="Seconds of load per arm.")
@click.option(
    "--rate", default=None, help="Requests per second (default: calibrated to 40% of the quota)."
)
@click.option("--concurrency", default="16", show_default=True, help="Cap on requests in flight.")
@click.option(
    "--n", "compute_n", default=str(DEFAULT_N), show_default=True, help="Work per /compute request."
)
@click.option(
    "--arms",
    default="baseline,contention",
    show_default=True,
    help="Arms to run, from baseline,contention,unlimited (unlimited: noise, no quota).",
)
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    help="procfs, bpftrace (adds the app's exact syscall counts and latency) or auto.",
)
@click.option(
    "--no-sandbox", is_flag=True, help="Run without a cgroup (no root needed, no limits)."
)
@click.option(
    "--engine",
    default=None,
    help="podman or docker: run each arm as a container of dtrace-cpu-contention "
    "(same --cpus/--memory); default: the bare cgroup sandbox, no engine needed.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    help="Write the whole result as JSON (contend.lab/2).",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False),
    help="Write a self-contained HTML report (verdict, causes, plots).",
)
@click.option(
    "--record",
    "record_dir",
    type=click.Path(),
    metavar="DIR",
    help="Record each arm with tracefs (app and noise, every event) into DIR/ARM.session "
    "(for contend report). Needs root.",
)
@click.option(
    "--perfetto",
    "perfetto_path",
    type=click.Path(dir_okay=False),
    help="Write the lab's timeline (Chrome trace JSON for ui.perfetto.dev): every arm, the "
    "app's and the noise's threads on and off the CPU. Needs root.",
)
@click.option(
    "--verify-advice",
    "verify_quotas",
    default=None,
    metavar="QUOTAS",
    help="Instead of the arms: record the app unlimited under load, advise (contend "
    "advise), then run it at each of these quotas (e.g. 0.3,0.6) and the one recommended, "
    "and print predicted beside measured.",
)
def command(
    cpus: str,
    memory: str,
    noise_workers: str,
    duration: str,
    rate: str | None,
    concurrency: str,
    compute_n: str,
    arms: str,
    backend: str,
    no_sandbox: bool,
    engine: str | None,
    json_path: str | None,
    html_path: str | None,
    record_dir: str | None,
    perfetto_path: str | None,
    verify_quotas: str | None,
) -> int:
    """Start the app and noise in a CPU-limited sandbox, load it, and say whether it is contended."""
    if engine is not None:
        validate_engine(engine)
        if no_sandbox:
            raise UsageError("--engine runs each arm in a limited container: drop --no-sandbox")
    record = _record_dir(record_dir)
    if perfetto_path is not None:
        check_output_path("--perfetto", perfetto_path)
    if record is not None or perfetto_path is not None:
        ok, why = tracefs.available()
        if not ok:
            flag = "--record" if record is not None else "--perfetto"
            raise PermissionNeeded(f"{flag} records with tracefs: {why}")
    options = LabOptions(
        cpus=None if no_sandbox else parse_cpus(cpus),
        memory_bytes=None if no_sandbox else parse_memory(memory),
        noise_workers=parse_positive_int("--noise-workers", noise_workers, 0, 64),
        duration_s=parse_duration("--duration", duration, 1, 3600),
        rate_per_s=None if rate is None else _parse_rate(rate),
        concurrency=parse_positive_int("--concurrency", concurrency, 1, 1024),
        compute_n=parse_positive_int("--n", compute_n, 1, MAX_N),
        sandbox=not no_sandbox,
        backend=_backend(backend),
        arms=_arms(arms, no_sandbox),
        engine=engine,
        record_dir=record,
        timeline=perfetto_path is not None,
    )
    if json_path is not None:
        check_output_path("--json", json_path)
    if html_path is not None:
        check_output_path("--html", html_path)
    check_distinct([], {"--json": json_path, "--html": html_path, "--perfetto": perfetto_path})
    if verify_quotas is not None:
        return _verify_advice(options, verify_quotas, json_path, html_path)
    with _progress_bar() as bar:
        timelines: list[ArmTimeline] = []
        result = run_lab(options, RichProgress(bar), timelines)
    stdout_console().print(render_text.lab_renderable(result))
    if perfetto_path is not None:
        write_output("--perfetto", perfetto_path, perfetto.render_lab(timelines))
    if json_path is not None:
        write_output("--json", json_path, render_json.render_lab(result))
    if html_path is not None:
        write_output("--html", html_path, render_html.render([result]))
    return 0


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _verify_advice(
    options: LabOptions,
    value: str,
    json_path: str | None,
    html_path: str | None,
) -> int:
    quotas = parse_quotas("--verify-advice", value)
    if not options.sandbox or options.engine is not None or options.recording:
        raise UsageError("--verify-advice runs its own arms in the sandbox: drop --no-sandbox, "
                         "--engine, --record and --perfetto")  # fmt: skip
    if html_path is not None:
        raise UsageError("--verify-advice writes text and --json, not --html")
    ok, why = tracefs.available()
    if not ok:
        raise PermissionNeeded(f"--verify-advice records with tracefs: {why}")
    with _progress_bar() as bar:
        check = check_advice(options, quotas, RichProgress(bar))
    click.echo(advice_text.render_check(check), nl=False)
    if json_path is not None:
        write_output("--json", json_path, dumps(check.to_json_dict()))
    return 0


def _record_dir(value: str | None) -> Path | None:
    if value is None:
        return None
    directory = Path(value)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--record: {value} is not a directory")
    if not directory.resolve().parent.is_dir():
        raise UsageError(f"--record: directory {directory.resolve().parent} does not exist")
    try:
        directory.mkdir(exist_ok=True)  # as perf record -o makes its file: only the last part
    except OSError as e:
        raise UsageError(f"--record: cannot make {value}: {e.strerror}") from None
    return directory


def _arms(value: str, no_sandbox: bool) -> tuple[str, ...]:
    names = tuple(a.strip() for a in value.split(",") if a.strip())
    unknown = [a for a in names if a not in ARMS]
    if unknown:
        raise UsageError(f"--arms: {unknown[0]!r} is not one of {', '.join(ARMS)}")
    if "baseline" not in names or "contention" not in names:
        raise UsageError("--arms: baseline and contention are always run; add unlimited or not")
    if "unlimited" in names and no_sandbox:
        raise UsageError("--arms unlimited lifts the sandbox's quota: it needs the sandbox")
    return tuple(a for a in ARMS if a in names)


def _backend(value: str) -> str:
    if value not in ("auto", "procfs", "bpftrace"):
        raise UsageError(f"--backend: {value!r} is not one of auto, procfs, bpftrace")
    return value


def _parse_rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise UsageError(f"--rate: {value!r} is not a number") from None
    if not 0 < rate <= 10_000:
        raise UsageError(f"--rate: {value!r} is out of range (0, 10000]")
    return rate
