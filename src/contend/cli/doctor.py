"""`contend doctor`: what this machine offers, and which backend `auto` would pick."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from rich.table import Table

from contend.cli.console import stdout_console
from contend.collect import checks, choose_backend


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def command(as_json: bool) -> int:
    """Check root, cgroups, PSI, schedstat, tracefs and bpftrace; pick a backend."""
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
