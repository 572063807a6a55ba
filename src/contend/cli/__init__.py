"""The `contend` command: argument parsing and wiring only, one module per subcommand.

`main()` returns an exit code. Every error the user can cause ends as one line on stderr
(`contend: error: ...`) and a non-zero code, never a traceback. SIGTERM is turned into an
exception in the main thread so that cleanup runs exactly as on Ctrl-C.
"""

from __future__ import annotations

import signal
import sys
import types

import click

from contend import __version__
from contend.cli import (
    advise,
    compare,
    diagnose,
    doctor,
    dtrace,
    exporter,
    image,
    lab,
    session,
    top,
    trace,
)
from contend.errors import (
    EXIT_ERROR,
    EXIT_SIGINT,
    EXIT_USAGE,
    ContendError,
    Terminated,
)
from contend.prctl import set_comm


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="contend")
def cli() -> None:
    """Is this process, service or container starved of CPU, how badly, and by what?"""


cli.add_command(doctor.command)
cli.add_command(lab.command)
cli.add_command(trace.command)
cli.add_command(diagnose.command)
cli.add_command(dtrace.command)
cli.add_command(compare.command)
cli.add_command(image.command)
cli.add_command(session.record)
cli.add_command(session.report)
cli.add_command(exporter.command)
cli.add_command(top.command)
cli.add_command(advise.command)


def _on_sigterm(signum: int, frame: types.FrameType | None) -> None:
    raise Terminated(signum)


# Ended as SIGTERM is: everything borrowed from the kernel is given back first (a hung-up
# terminal, or Ctrl-\, would otherwise leave a tracefs instance tracing).
_ENDING = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def error(message: str) -> None:
    click.echo(f"contend: error: {message}", err=True)


def main(argv: list[str] | None = None) -> int:
    # Named `contend`, not after the interpreter: a script tracing "python" must not
    # trace the tool printing its output (a feedback loop).
    set_comm("contend")
    previous = {sig: signal.signal(sig, _on_sigterm) for sig in _ENDING}
    # A shell starts `contend ... &` with SIGINT ignored, and Python then installs no
    # Ctrl-C handler: `kill -INT` would do nothing. perf and bpftrace stop on it anyway;
    # so does contend, with the same clean stop as Ctrl-C.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    args = list(sys.argv[1:] if argv is None else argv)
    # `contend trace|record ... -- CMD ARGS`: the command is not click's to parse.
    command: list[str] = []
    if "--" in args:
        split = args.index("--")
        args, command = args[:split], args[split + 1 :]
        if not command:
            error("nothing after --: give a command to launch")
            return EXIT_USAGE
    try:
        result = cli.main(
            args=args, prog_name="contend", standalone_mode=False, obj={"command": command}
        )
        return result if isinstance(result, int) else 0
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e))
        return EXIT_USAGE
    except click.UsageError as e:
        error(e.format_message().splitlines()[0] if e.format_message() else str(e))
        return EXIT_USAGE
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.Abort:
        error("interrupted")
        return EXIT_SIGINT
    except click.ClickException as e:
        error(e.format_message())
        return EXIT_ERROR
    except ContendError as e:
        error(e.message)
        return e.exit_code
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_SIGINT
    except Terminated as e:
        error("terminated" if e.signum == signal.SIGTERM else f"{signal.Signals(e.signum).name}")
        return 128 + e.signum
    except BrokenPipeError:
        return EXIT_ERROR
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def entry() -> None:
    sys.exit(main())
