"""Run commands (the kernel tests) inside a VM on another kernel with pure cgroup v2.

    python3 tools/vmtest.py fetch              # Debian's kernel package into .vm/ (apt)
    python3 tools/vmtest.py run -- CMD ARGS    # boot, run CMD in the project, exit with its status

The VM is qemu in TCG mode (no nested KVM on these machines) booting Debian bookworm's
generic kernel (6.1: its cloud flavour has no 9p) with a busybox initramfs. The host's root
is its root, read-only over virtio 9p under a tmpfs overlay, so the VM has exactly the
host's Python, venv, bpftrace and podman and writes nothing back; a second 9p share
carries the command in and its exit status out. tools/vm/inside.sh lays the machine out as
systemd does (cgroup2 alone at /sys/fs/cgroup, controllers enabled down to the slices, the
command in a session scope) and leaves tracefs unmounted, as on a fresh machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
VM_DIR = PROJECT / ".vm"
# The kernel flavour and the modules the initramfs needs to reach the host's root.
FLAVOUR = "amd64"
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")


def fail(message: str) -> None:
    print(f"vmtest: {message}", file=sys.stderr)
    sys.exit(2)


def kernel_package() -> str:
    """The package that Debian's `linux-image-amd64` depends on now, e.g. linux-image-6.1.0-57-amd64."""
    done = subprocess.run(
        ["apt-cache", "depends", f"linux-image-{FLAVOUR}"], capture_output=True, text=True
    )
    for line in done.stdout.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m:
            return m.group(1)
    fail(f"apt-cache knows no linux-image-{FLAVOUR} (run apt-get update): {done.stderr.strip()}")
    raise AssertionError


def fetch() -> Path:
    """Download and unpack the kernel package once; the unpacked tree is the cache."""
    package = kernel_package()
    tree = VM_DIR / package
    if (tree / "boot").is_dir():
        return tree
    VM_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=VM_DIR) as tmp:
        os.chmod(tmp, 0o755)  # apt's download user must be able to write there
        done = subprocess.run(
            ["apt-get", "download", "-q", package], cwd=tmp, capture_output=True, text=True
        )
        debs = list(Path(tmp).glob("*.deb"))
        if not debs:
            fail(f"apt-get download {package} failed: {done.stderr.strip()}")
        unpacked = Path(tmp) / "tree"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True)
        unpacked.rename(tree)
    return tree


def _depends(ko: Path) -> list[str]:
    m = re.search(rb"\x00depends=([^\x00]*)\x00", b"\x00" + ko.read_bytes())
    return [d for d in (m.group(1).decode().split(",") if m else []) if d]


def module_order(tree: Path) -> list[Path]:
    """The module files to insmod, each after the ones it depends on (read from each
    module's .modinfo: the package has no modules.dep, and this machine no depmod)."""
    by_name = {
        ko.name.removesuffix(".ko").replace("-", "_"): ko
        for ko in (tree / "lib" / "modules").rglob("*.ko")
    }
    order: list[Path] = []

    def visit(name: str) -> None:
        ko = by_name.get(name.replace("-", "_"))
        if ko is None:
            fail(f"module {name} is not in the kernel package")
        assert ko is not None
        if ko in order:
            return
        for dep in _depends(ko):
            visit(dep)
        order.append(ko)

    for name in MODULES:
        visit(name)
    return order


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive (what the kernel unpacks as an initramfs) of (path, mode, data)."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\x00"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        out += b"\x00" * (-len(out) % 4) + data
        out += b"\x00" * (-len(out) % 4)
    return bytes(out)


def initramfs(tree: Path) -> Path:
    busybox = shutil.which("busybox")
    if busybox is None or b"GLIBC" in Path(busybox).read_bytes()[:4096]:
        busybox = "/bin/busybox"
    if not Path(busybox).is_file():
        fail("no busybox (apt-get install busybox-static)")
    modules = module_order(tree)
    dirs = ["bin", "dev", "proc", "sys", "modules"]
    entries = [(d, 0o040755, b"") for d in dirs]
    entries.append(("bin/busybox", 0o100755, Path(busybox).read_bytes()))
    entries.append(("init", 0o100755, (PROJECT / "tools" / "vm" / "init").read_bytes()))
    names = [ko.name.removesuffix(".ko") for ko in modules]
    entries.append(("modules.order", 0o100644, ("\n".join(names) + "\n").encode()))
    entries += [(f"modules/{ko.name}", 0o100644, ko.read_bytes()) for ko in modules]
    image = VM_DIR / f"initramfs-{tree.name}.cpio"
    image.write_bytes(_cpio(entries))
    return image


def saved_images(images: list[str]) -> Path | None:
    """The podman images, saved on the host once per set of image IDs, for the VM to
    `podman load` into a tmpfs store (its root is an overlay: no overlay store on it)."""
    if not images:
        return None
    ids = []
    for image in images:
        done = subprocess.run(
            ["podman", "image", "inspect", "--format", "{{.Id}}", image],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            fail(f"podman has no image {image}: {done.stderr.strip()}")
        ids.append(done.stdout.strip()[:12])
    archive = VM_DIR / f"images-{'-'.join(ids)}.tar"
    if not archive.exists():
        for old in VM_DIR.glob("images-*.tar"):
            old.unlink()
        partial = archive.with_suffix(".partial")
        subprocess.run(["podman", "save", "-q", "-m", "-o", str(partial), *images], check=True)
        partial.rename(archive)
    return archive


# The guest's own words for a CPU that made no progress (kernel/watchdog.c, kernel/rcu):
# under TCG the emulated CPUs have locked up this way twice in ~10 runs, inside bpftrace's
# attach. That is the emulator's failure, not a test's: the VM is booted once more.
LOCKUP = re.compile(
    rb"soft lockup - CPU#\d+ stuck|rcu_\w+ (?:self-)?detected stall|detected stalls on CPUs"
)


INCONCLUSIVE = 75  # EX_TEMPFAIL: the guest kernel locked up twice; no test result


def _boot(argv: list[str], timeout: float) -> str | None:
    """Run the VM, its console echoed; None when it powered off, else why it was stopped
    ("timeout", "interrupted", or the lockup line)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    found: list[str] = []

    def watch() -> None:
        assert proc.stdout is not None
        tail = b""  # the console as it comes (pytest's dots have no newline)
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            tail = (tail + chunk)[-8192:]
            m = LOCKUP.search(tail)
            if not found and m:
                line = tail[tail.rfind(b"\n", 0, m.start()) + 1 :].split(b"\n", 1)[0]
                found.append(line.decode(errors="replace").strip())
                proc.kill()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        print("vmtest: the VM ran past its time and was stopped", file=sys.stderr)
        return "timeout"
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        return "interrupted"
    reader.join(timeout=10)
    return found[0] if found else None


def run(command: list[str], cpus: int, memory: str, timeout: float, images: list[str]) -> int:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        fail("no qemu-system-x86_64 (apt-get install qemu-system-x86)")
    tree = fetch()
    kernel = next((tree / "boot").glob("vmlinuz-*"))
    image = initramfs(tree)
    archive = saved_images(images)
    with tempfile.TemporaryDirectory(prefix="contend-vm-") as out:
        if archive is not None:
            (Path(out) / "images").write_text(f"{archive}\n")
        (Path(out) / "cwd").write_text(str(PROJECT) + "\n")
        env_lines = [
            f"export {k}={shlex.quote(v)}"
            for k, v in os.environ.items()
            if k.startswith(("CONTEND_", "PYTEST_")) or k in ("CI", "TZ")
        ]
        (Path(out) / "command").write_text("\n".join([*env_lines, shlex.join(command)]) + "\n")
        append = " ".join([
            "console=ttyS0", "quiet", "panic=-1", "oops=panic", "psi=1",
            f"contend.project={PROJECT}",
        ])  # fmt: skip
        argv = [
            qemu, "-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max",
            "-smp", str(cpus), "-m", memory, "-nographic", "-no-reboot", "-nodefaults",
            "-serial", "stdio", "-kernel", str(kernel), "-initrd", str(image),
            "-append", append,
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={out},mount_tag=out,security_model=none",
        ]  # fmt: skip
        started = time.monotonic()
        for attempt in (1, 2):
            stuck = _boot(argv, timeout - (time.monotonic() - started))
            if stuck is None:
                break
            if stuck in ("timeout", "interrupted"):
                return 124 if stuck == "timeout" else 130
            print(f"vmtest: the guest kernel locked up ({stuck}): not a test's result",
                  file=sys.stderr)  # fmt: skip
            if attempt == 2 or time.monotonic() - started > timeout / 2:
                print("vmtest: inconclusive: the emulator locked up again (exit 75)",
                      file=sys.stderr)  # fmt: skip
                return INCONCLUSIVE
            print("vmtest: booting the VM again (second and last attempt)", file=sys.stderr)
            (Path(out) / "rc").unlink(missing_ok=True)
        rc_file = Path(out) / "rc"
        took = time.monotonic() - started
        if not rc_file.exists():
            print(f"vmtest: the VM stopped after {took:.0f} s without a result", file=sys.stderr)
            return 1
        rc = int(rc_file.read_text().strip() or 1)
        print(f"vmtest: {shlex.join(command)} exited {rc} in the VM after {took:.0f} s")
        return rc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("fetch", help="download Debian's kernel into .vm/")
    r = sub.add_parser("run", help="boot the VM and run a command in the project")
    r.add_argument("--cpus", type=int, default=2)
    r.add_argument("--memory", default="4G")
    r.add_argument("--timeout", type=float, default=1200)
    r.add_argument(
        "--podman-image", action="append", default=[], help="load this podman image in the VM"
    )
    r.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.what == "fetch":
        print(fetch())
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        fail("give a command after --")
    return run(command, args.cpus, args.memory, args.timeout, args.podman_image)


if __name__ == "__main__":
    sys.exit(main())
