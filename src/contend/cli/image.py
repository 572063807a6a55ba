"""`contend image build`: the original document's image `dtrace-cpu-contention`."""

from __future__ import annotations

import click

from contend.collect import engine as engines
from contend.lab import image
from contend.target import validate_engine, validate_image


@click.group("image")
def command() -> None:
    """The lab's container image (dtrace-cpu-contention)."""


@command.command("build")
@click.option("--engine", "engine_name", help="podman or docker (default: the first that answers).")
@click.option(
    "--base",
    default="local",
    show_default=True,
    help=f"local: debootstrap {image.LOCAL_BASE} (no registry); or an image such as "
    f"{image.REGISTRY_BASE}.",
)
def build(engine_name: str | None, base: str) -> int:
    """Build the image, reusing whatever exists and is up to date."""
    wanted = validate_engine(engine_name) if engine_name is not None else None
    base_ref = None if base == "local" else validate_image(base)
    found = engines.find(wanted)
    click.echo(f"contend image: engine {found.describe()}", err=True)
    result = image.build(found, base_ref, note=lambda line: click.echo(line, err=True))
    size = f"{result.size_bytes / 1e6:.0f} MB" if result.size_bytes is not None else "size n/a"
    what = "built" if result.image_built else "up to date"
    base_what = "built" if result.base_built else "reused"
    click.echo(
        f"{image.IMAGE}: {what} ({size}), base {result.base} {base_what}, "
        f"{result.seconds:.1f} s" + (f"; {result.config_note}" if result.config_note else "")
    )
    return 0
