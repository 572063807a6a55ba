"""`contend doctor`: what this machine offers, and which backend `auto` would pick."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from rich.table import Table

from contend.cli.console import stdout_console
from contend.collect import checks, choose_backend, tracefs
from contend.errors import PermissionNeeded


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option(
    "--cleanup",
    is_flag=True,
    help="Remove tracefs instances left by contend runs that were killed (SIGKILL).",
)
def command(as_json: bool, cleanup: bool) -> int:
    """Check root, cgroups, PSI, schedstat, tracefs and bpftrace; pick a backend."""
    if cleanup:
        ok, why = tracefs.available()
        if not ok:
            raise PermissionNeeded(f"--cleanup: {why}")
        removed = tracefs.reclaim()
        if as_json:
            click.echo(json.dumps({"removed": removed}, indent=2))
        elif removed:
            click.echo(
                f"removed {len(removed)} tracefs instance(s) of dead contend runs: "
                + ", ".join(removed)
            )
        else:
            click.echo("no tracefs instances of dead contend runs")
        return 0
    results = checks()
    backend, reason = choose_backend()
    if as_json:
        click.echo(
            json.dumps(
                {"checks": [asdict(c) for c in results], "backend": backend, "reason": reason},
                indent=2,
            )
        )
        return 0
    table = Table(title="contend doctor")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail")
    table.add_column("fix")
    for c in results:
        table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]missing[/]", c.detail, c.fix)
    console = stdout_console()
    console.print(table)
    console.print(f"backend auto -> [bold]{backend}[/]: {reason}")
    return 0
