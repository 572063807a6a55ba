"""The container engine: podman or docker, found at run time, never assumed.

An engine *answers* when `ENGINE version --format {{.Server.Version}}` succeeds: podman
always has its "server" in-process; a docker client without a daemon fails there
("Cannot connect to the Docker daemon"), so a Docker CLI left on a machine that runs
podman is passed over, and the error says so. Every call runs the engine's binary with
an argument list (no shell); names reaching it are validated in `contend.target`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from contend.errors import ContendError

ENGINES = ("podman", "docker")


@dataclass(frozen=True)
class Engine:
    name: str  # "podman" or "docker": the command that answered
    binary: str
    version: str  # the server's version, as the engine reports it
    # podman itself, or podman behind a `docker` command (Debian's podman-docker shim):
    # podman's build drops HEALTHCHECK unless told `--format docker`.
    is_podman: bool = False

    def describe(self) -> str:
        behind = " -> podman" if self.is_podman and self.name != "podman" else ""
        return f"{self.name}{behind} {self.version} ({self.binary})"

    def run(
        self, args: Sequence[str], timeout_s: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`ENGINE ARGS`, captured; a failure (with `check`) is one ContendError line."""
        try:
            done = subprocess.run(
                [self.binary, *args], capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise ContendError(
                f"{self.name} {args[0] if args else ''}: no answer in {timeout_s:.0f} s"
            ) from None
        except OSError as e:
            raise ContendError(f"{self.name}: {e.strerror or e}") from None
        if check and done.returncode != 0:
            raise ContendError(
                f"{self.name} {' '.join(args[:2])}: {first_line(done.stderr or done.stdout)}"
            )
        return done

    def image_exists(self, image: str) -> bool:
        # `image inspect` rather than podman's `image exists`: docker has no such verb.
        return (
            self.run(["image", "inspect", "--format", "{{.Id}}", image], check=False).returncode
            == 0
        )

    def image_id(self, image: str) -> str | None:
        done = self.run(["image", "inspect", "--format", "{{.Id}}", image], check=False)
        return done.stdout.strip() or None if done.returncode == 0 else None

    def image_label(self, image: str, label: str) -> str | None:
        done = self.run(
            ["image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', image],
            check=False,
        )
        value = done.stdout.strip()
        return value if done.returncode == 0 and value and value != "<no value>" else None

    def publishes_ports(self) -> bool:
        """Whether `run -p` reaches the container: podman always; a Docker daemon only
        with its bridge network (`dockerd --bridge=none` has none: use the host's)."""
        if self.is_podman:
            return True
        return self.run(["network", "inspect", "bridge"], check=False).returncode == 0

    def remove_container(self, name: str) -> None:
        """`rm -f`: stops and removes; quiet when it is already gone."""
        self.run(["rm", "-f", name], check=False, timeout_s=60)


def first_line(text: str) -> str:
    """The first line that says something: engine errors start with the cause; the
    podman-docker shim's "Emulate Docker CLI using podman" banner is not it."""
    lines = [
        line.strip()
        for line in text.strip().splitlines()
        if line.strip() and not line.startswith("Emulate Docker CLI")
    ]
    return lines[0] if lines else "no output"


def probe(name: str, timeout_s: float = 15.0) -> tuple[Engine | None, str]:
    """The engine `name` if it answers, else None and why not (one phrase)."""
    binary = shutil.which(name)
    if binary is None:
        return None, f"{name}: not installed"
    try:
        done = subprocess.run(
            [binary, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return None, f"{name}: no answer in {timeout_s:.0f} s"
    except OSError as e:
        return None, f"{name}: {e.strerror or e}"
    version = done.stdout.strip()
    if done.returncode != 0 or not version:
        return None, f"{name}: {first_line(done.stderr or done.stdout)}"
    try:
        banner = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=timeout_s
        ).stdout
    except (subprocess.TimeoutExpired, OSError):
        banner = ""
    return Engine(name, binary, version, is_podman=banner.lower().startswith("podman")), ""


def find(wanted: str | None = None) -> Engine:
    """The engine asked for, or the first of podman, docker that answers; a one-line
    ContendError naming what each said when none does."""
    names = (wanted,) if wanted else ENGINES
    tried = []
    for name in names:
        engine, why = probe(name)
        if engine is not None:
            return engine
        tried.append(why)
    raise ContendError("no container engine answers: " + "; ".join(tried))
