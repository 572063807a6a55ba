"""The lab's container image `dtrace-cpu-contention`, built without a registry.

Three steps, each skipped when its result exists:

1. podman's configuration for this kind of machine, as a drop-in
   (`/etc/containers/containers.conf.d/50-contend.conf`, containers.conf(5): files there
   are read after `/etc/containers/containers.conf`, so a user's own file is never
   touched, and the user's own `podman run`/`docker run` get it too): runc (crun refuses
   cgroup v1 hybrid hierarchies), the cgroupfs manager (no systemd needed), and
   default ulimits inside this machine's hard limits (podman's defaults, nofile 1048576,
   exceed them and runc fails with "error setting rlimit type 7").
2. `localhost/contend-base`: a Debian root made by debootstrap from the mirror apt is
   configured with (python3, Flask, gunicorn from Debian), imported as an image.
3. `dtrace-cpu-contention` from `Containerfile` (package data, valid for docker too)
   with `--build-arg BASE=...`; labelled with a digest of its inputs, so a second build
   with the same sources and base is a no-op, and a changed source rebuilds it and
   removes the image it replaces (nothing dangling is left).
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contend.collect.engine import Engine, first_line
from contend.errors import ContendError, PermissionNeeded

IMAGE = "dtrace-cpu-contention"
LOCAL_BASE = "localhost/contend-base"
REGISTRY_BASE = "python:3.11-slim"
CONTEXT_LABEL = "contend.context"
BASE_PACKAGES = ("python3", "python3-flask", "python3-gunicorn")

# The files the Containerfile copies, relative to the package root (keep in step with
# its COPY lines: tests/test_container.py checks that they agree).
IMAGE_SOURCES = (
    "__init__.py",
    "prctl.py",
    "lab/__init__.py",
    "lab/app.py",
    "lab/noise.py",
    "lab/entrypoint.py",
)
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = Path(__file__).resolve().parent / "Containerfile"

PODMAN_DROPIN = Path("/etc/containers/containers.conf.d/50-contend.conf")
DROPIN_MARKER = "# Written by `contend image build`; delete this file to opt out."
# Caps for the container's default ulimits: enough for the lab, never above the hard
# limit of the process that writes the file (runc cannot raise a hard limit).
NOFILE_CAP = 65536
NPROC_CAP = 4096

Note = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    engine: str
    base: str
    base_built: bool  # False: it existed and was reused (or a registry base was used)
    image_built: bool  # False: the existing image had the same inputs
    seconds: float
    size_bytes: int | None
    config_note: str


# --- 1. podman's configuration ------------------------------------------------------------


def podman_dropin_text(nofile_hard: int, nproc_hard: int) -> str:
    def cap(hard: int, limit: int) -> int:
        return limit if hard == resource.RLIM_INFINITY else min(hard, limit)

    nofile, nproc = cap(nofile_hard, NOFILE_CAP), cap(nproc_hard, NPROC_CAP)
    return (
        f"{DROPIN_MARKER}\n"
        "# runc: crun refuses cgroup v1 hybrid hierarchies; cgroupfs: no systemd needed;\n"
        "# ulimits: podman's defaults exceed this machine's hard limits.\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'runtime = "runc"\n'
    )


def ensure_podman_config(path: Path = PODMAN_DROPIN) -> str:
    """Write contend's drop-in when it is missing or ours and different; never a file
    someone else wrote. Returns what was done, as a phrase."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    wanted = podman_dropin_text(nofile, nproc)
    try:
        current = path.read_text() if path.exists() else None
    except OSError as e:
        raise ContendError(f"cannot read {path}: {e.strerror}") from None
    if current == wanted:
        return f"podman config {path} (kept)"
    if current is not None and not current.startswith(DROPIN_MARKER):
        return f"podman config {path} is not contend's: left as it is"
    if os.geteuid() != 0:
        # Rootless podman reads ~/.config/containers: the user's to configure.
        return f"podman config {path} not written (not root)"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(wanted)
        tmp.replace(path)
    except OSError as e:
        raise ContendError(f"cannot write {path}: {e.strerror}") from None
    return f"podman config {path} (written)"


# --- 2. the local base image --------------------------------------------------------------


def os_codename(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        for line in os_release.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "VERSION_CODENAME" and value.strip('"'):
                return value.strip('"')
    except OSError:
        pass
    raise ContendError(f"{os_release}: no VERSION_CODENAME; cannot tell which Debian to bootstrap")


def _sources(apt_dir: Path) -> list[tuple[str, str, list[str], list[str]]]:
    """(type, uri, suites, components) of every apt source, in apt's order: the one-line
    format of sources.list(5) and its deb822 `.sources` stanzas."""
    entries: list[tuple[str, str, list[str], list[str]]] = []
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                for kind in fields.get("types", "").split():
                    for uri in fields.get("uris", "").split():
                        entries.append(
                            (
                                kind,
                                uri,
                                fields.get("suites", "").split(),
                                fields.get("components", "").split(),
                            )
                        )
        elif f.name == "sources.list" or f.suffix == ".list":
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if words and words[1:2] and words[1].startswith("["):
                    while words[1:] and not words[1].endswith("]"):
                        del words[1]
                    del words[1]
                if len(words) >= 4:
                    entries.append((words[0], words[1], [words[2]], words[3:]))
    return entries


def debian_mirror(codename: str, apt_dir: Path = Path("/etc/apt")) -> str:
    """The mirror apt uses for `codename` main (not -security, -updates), so debootstrap
    fetches from where this machine is allowed to."""
    for kind, uri, suites, components in _sources(apt_dir):
        if (
            kind == "deb"
            and codename in suites
            and "main" in components
            and uri.startswith(("http://", "https://", "file:/"))
        ):
            return uri
    raise ContendError(f"no apt source for {codename} main in {apt_dir}: cannot run debootstrap")


def _unmount_under(root: Path) -> None:
    """debootstrap mounts /proc and /sys in its target and may leave them on failure;
    never delete through a mount."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = [Path(line.split()[4]) for line in lines if len(line.split()) > 4]
    for point in sorted((p for p in points if p.is_relative_to(root)), reverse=True):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def build_local_base(engine: Engine, note: Note) -> bool:
    """`localhost/contend-base` from debootstrap; False when it exists already."""
    if engine.image_exists(LOCAL_BASE):
        return False
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ContendError(
            "debootstrap is not installed (apt-get install debootstrap, or `make install` "
            f"as root); or give --base {REGISTRY_BASE} where a registry is reachable"
        )
    if os.geteuid() != 0:
        raise PermissionNeeded("building the local base image needs root (debootstrap)")
    codename = os_codename()
    mirror = debian_mirror(codename)
    note(f"debootstrap {codename} from {mirror} (about 45 s) ...")
    tmp = Path(tempfile.mkdtemp(prefix="contend-rootfs-", dir="/var/tmp"))
    try:
        done = subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                "--include=" + ",".join(BASE_PACKAGES),
                codename,
                str(tmp),
                mirror,
            ],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if done.returncode != 0:
            log = tmp / "debootstrap" / "debootstrap.log"
            detail = first_line(log.read_text()[-2000:]) if log.is_file() else ""
            raise ContendError(
                f"debootstrap failed ({done.returncode}): "
                f"{first_line(done.stderr or done.stdout)}{'; ' + detail if detail else ''}"
            )
        _unmount_under(tmp)
        # Not in the image: apt's downloaded packages and lists (about 60 MB).
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (tmp / cache).glob("*"):
                if entry.is_file() and entry.name != "lock":
                    entry.unlink()
        note(f"importing it as {LOCAL_BASE} ...")
        with subprocess.Popen(
            ["tar", "-C", str(tmp), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
        ) as tar:
            imported = subprocess.run(
                [engine.binary, "import", "-", LOCAL_BASE],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                timeout=900,
            )
            if tar.stdout is not None:
                tar.stdout.close()
        if tar.returncode != 0 or imported.returncode != 0:
            raise ContendError(
                f"{engine.name} import {LOCAL_BASE}: "
                f"{first_line(imported.stderr or imported.stdout or 'tar failed')}"
            )
    except subprocess.TimeoutExpired as e:
        raise ContendError(f"{Path(str(e.cmd[0])).name}: no end in {e.timeout:.0f} s") from None
    finally:
        _unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    return True


# --- 3. the image -------------------------------------------------------------------------


def context_digest(base: str) -> str:
    """What the image is made of: the Containerfile, the sources it copies, the base."""
    h = hashlib.sha256()
    h.update(b"base\0" + base.encode() + b"\0")
    h.update(b"Containerfile\0" + CONTAINERFILE.read_bytes() + b"\0")
    for rel in IMAGE_SOURCES:
        h.update(rel.encode() + b"\0" + (PACKAGE_ROOT / rel).read_bytes() + b"\0")
    return h.hexdigest()[:32]


def _write_context(directory: Path) -> None:
    """The repository's layout, so the same Containerfile builds from a clone's root."""
    shutil.copyfile(CONTAINERFILE, directory / "Containerfile")
    for rel in IMAGE_SOURCES:
        dest = directory / "src" / "contend" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_ROOT / rel, dest)


def image_size(engine: Engine, image: str) -> int | None:
    done = engine.run(["image", "inspect", "--format", "{{.Size}}", image], check=False)
    text = done.stdout.strip()
    return int(text) if done.returncode == 0 and text.isdigit() else None


def build(engine: Engine, base: str | None = None, note: Note = lambda _: None) -> BuildResult:
    """Make sure `dtrace-cpu-contention` exists and is up to date. `base`: None for the
    local debootstrap base, or an image reference (already validated)."""
    started = time.monotonic()
    config_note = ""
    if engine.is_podman:
        config_note = ensure_podman_config()
    base_built = False
    if base is None:
        base_built = build_local_base(engine, note)
        base = LOCAL_BASE
    digest = context_digest(base)
    image_built = False
    if engine.image_label(IMAGE, CONTEXT_LABEL) != digest:
        replaced = engine.image_id(IMAGE)
        note(f"building {IMAGE} from {base} ...")
        with tempfile.TemporaryDirectory(prefix="contend-build-") as ctx:
            _write_context(Path(ctx))
            args = [
                "build",
                "-t",
                IMAGE,
                "-f",
                str(Path(ctx) / "Containerfile"),
                "--build-arg",
                f"BASE={base}",
                "--label",
                f"{CONTEXT_LABEL}={digest}",
            ]
            if engine.is_podman:
                # docker format keeps HEALTHCHECK (OCI drops it); no cached layers left.
                args += ["--format", "docker", "--layers=false"]
            engine.run([*args, ctx], timeout_s=1800)
        if replaced is not None and replaced != engine.image_id(IMAGE):
            engine.run(["rmi", replaced], check=False)
        image_built = True
    return BuildResult(
        engine=engine.describe(),
        base=base,
        base_built=base_built,
        image_built=image_built,
        seconds=time.monotonic() - started,
        size_bytes=image_size(engine, IMAGE),
        config_note=config_note,
    )
