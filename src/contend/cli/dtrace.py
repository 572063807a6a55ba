"""`contend dtrace`: run D scripts on Linux, translated to bpftrace (flags as dtrace(1))."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import click

from contend.collect import bpftrace as bt
from contend.collect.launch import launch
from contend.dscript.parser import parse
from contend.dscript.translate import translate
from contend.errors import ContendError, Terminated, UsageError
from contend.monitors.syscalls import syscall_name, table_for
from contend.render.dtrace_text import DTraceOutput
from contend.target import parse_positive_int

# The original document's four scripts, shipped with the package.
SCRIPTS = Path(__file__).resolve().parent.parent / "dscript" / "scripts"


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@click.command("dtrace")
@click.option("-s", "script_path", help="Run the D script in this file.")
@click.option("-n", "clause", help="Run this probe clause: 'PROBE /PREDICATE/ { ACTIONS }'.")
@click.option(
    "-c", "command", help="Run COMMAND and trace it ($target is its PID); stop when it exits."
)
@click.option("-p", "pid", help="Trace process PID ($target); stop when it exits.")
@click.option(
    "-q", "quiet", is_flag=True, help="Quiet: only what the script prints (#pragma D option quiet)."
)
@click.option("--print-program", is_flag=True, help="Print the bpftrace program and exit.")
def command(
    script_path: str | None,
    clause: str | None,
    command: str | None,
    pid: str | None,
    quiet: bool,
    print_program: bool,
) -> int:
    """Run a D script (the subset the original document teaches) through bpftrace."""
    if (script_path is None) == (clause is None):
        raise UsageError("give a script with -s FILE or a clause with -n '...'")
    if command is not None and pid is not None:
        raise UsageError("give -c COMMAND or -p PID, not both")
    if script_path is not None:
        path = Path(script_path)
        bundled = SCRIPTS / script_path
        if not path.exists() and "/" not in script_path and bundled.is_file():
            click.echo(f"contend dtrace: using the bundled {bundled}", err=True)
            path = bundled
        try:
            source = path.read_text()
        except OSError as e:
            raise UsageError(f"-s: cannot read {script_path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"-s: {script_path} is not a text file (a D script)") from None
        filename = path.name
    else:
        assert clause is not None
        source, filename = clause, "-n"
    script = parse(source, filename)
    quiet = quiet or "quiet" in script.options
    target_pid: int | None = None
    argv: tuple[str, ...] = ()
    if pid is not None:
        target_pid = parse_positive_int("-p", pid, 1, 1 << 22)
        if not Path(f"/proc/{target_pid}").is_dir():
            raise UsageError(f"-p: no process with PID {target_pid}")
    if command is not None:
        try:
            argv = tuple(shlex.split(command))
        except ValueError as e:
            raise UsageError(f"-c: {e}") from None
        if not argv:
            raise UsageError("-c: empty command")
        target_pid = 0  # replaced by the launched process's PID below
    syscalls = {name: nr for nr, name in table_for().items()}
    if print_program:
        click.echo(translate(script, syscalls, target_pid, quiet, os.getpid()).program, nl=False)
        return 0
    ok, why = bt.available()
    if not ok:
        raise ContendError(f"contend dtrace needs bpftrace: {why}")
    launched = launch(argv) if argv else None
    try:
        if launched is not None:
            target_pid = launched.proc.pid
        translation = translate(script, syscalls, target_pid, quiet, exclude_pid=os.getpid())
        out = DTraceOutput(
            translation.aggregations, translation.printa_formats, syscall_name, _write
        )
        tracer = bt.Bpftrace(translation.program, on_printf=out.printf, on_record=out.record)
        tracer.start()
        probes = max(tracer.output.attached_probes - 2, 0)  # our BEGIN and END
        click.echo(f"contend dtrace: script '{filename}' matched {probes} probes", err=True)
        if launched is not None:
            launched.release()
        try:
            while tracer.proc is not None and tracer.proc.poll() is None:
                if launched is not None and launched.proc.poll() is not None:
                    break
                if pid is not None and not Path(f"/proc/{target_pid}").is_dir():
                    break
                time.sleep(0.05)
        except (KeyboardInterrupt, Terminated):
            pass  # as dtrace: Ctrl-C ends tracing and prints the aggregations
        tracer.stop()
        out.finish()
        if tracer.output.errors:
            errors = tracer.output.errors
            click.echo(
                f"contend dtrace: {len(errors)} output records not understood: {errors[0]}",
                err=True,
            )
    finally:
        if launched is not None:
            if launched.gate_w >= 0:
                launched.abort()  # never released: it exits without running the command
            elif launched.proc.poll() is None:
                launched.proc.terminate()
                launched.proc.wait()
    return 0
