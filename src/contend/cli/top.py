"""`contend top`: the live view of who waits for CPU, and behind whom.

The same engine as the exporter (collect/accounting.py read, analysis/accounting.py
fold), drawn with rich's Live on the terminal's alternate screen; keys are read from
the terminal in cbreak mode between refreshes (no extra thread, no curses)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import termios
import time
import tty
from dataclasses import asdict
from typing import Any

import click
from rich.console import Console
from rich.live import Live

from contend.analysis.accounting import Accounting, task_rows
from contend.collect import bpftrace as bt
from contend.collect.accounting import MachineReader
from contend.collect.cgroups import detect_layout
from contend.collect.containers import ContainerNames
from contend.collect.sched_accounting import SchedAccounting
from contend.errors import ContendError, Terminated, UsageError
from contend.model import AccountingSnapshot, MachineSample
from contend.render import top as screen
from contend.target import parse_duration

BACKENDS = ("auto", "bpftrace", "procfs")
SCHEMA = "contend.top/1"


def _backend(backend: str) -> tuple[str, str]:
    if backend not in BACKENDS:
        raise UsageError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "procfs":
        return "procfs", ""
    ok, why = bt.available()
    if not ok and backend == "bpftrace":
        raise ContendError(f"--backend bpftrace: {why}")
    return ("bpftrace", "") if ok else ("procfs", why)


class Top:
    def __init__(self, interval_s: float, backend: str, cgroup: str | None) -> None:
        self.interval_s = interval_s
        self.sched = SchedAccounting(interval_s) if backend == "bpftrace" else None
        self.reader = MachineReader(detect_layout(), sched=self.sched, containers=ContainerNames())
        self.acc = Accounting(cpus=os.cpu_count() or 1)
        self.prev: MachineSample | None = None
        self.cur: MachineSample | None = None
        self.snap: AccountingSnapshot | None = None
        self.only = cgroup
        self.cpu_at: tuple[float, float] | None = None
        self.own_cpu: float | None = None

    def start(self) -> None:
        if self.sched is not None:
            self.sched.start()
        self.step()

    def step(self) -> None:
        sample = self.reader.read()
        self.prev, self.cur = self.cur, sample
        self.snap = self.acc.update(sample)
        now = (time.monotonic(), sample.own_cpu_ns / 1e9)
        if self.cpu_at is not None and now[0] > self.cpu_at[0]:
            self.own_cpu = (now[1] - self.cpu_at[1]) / (now[0] - self.cpu_at[0])
        self.cpu_at = now

    def rows(self, view: screen.View) -> list[Any]:
        assert self.snap is not None
        if view.level == "cgroups":
            groups = [c for c in self.snap.cgroups if self.only is None or c.path == self.only]
            return screen.ordered(groups, view)
        if self.prev is None or self.cur is None:
            return []
        tasks = task_rows(self.prev, self.cur, cgroup=view.cgroup, pid=view.pid)
        return screen.ordered(tasks, view)

    def stop(self) -> str | None:
        """Ends bpftrace (a live view needs none of its last counts: 3 s, then SIGKILL);
        a line for stderr if that was slow."""
        self.reader.close()
        if self.sched is None:
            return None
        began = time.monotonic()
        killed = self.sched.stop(timeout_s=3)
        took = time.monotonic() - began
        if killed is not None:
            return f"contend top: bpftrace had not ended {killed:g} s after SIGINT: killed"
        return f"contend top: bpftrace took {took:.1f} s to end" if took > 1 else None


def _load() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "-"


def _diagnose(view: screen.View, row: Any) -> str:
    """`contend diagnose` on the selection, for 3 s; its text answer (first lines)."""
    if view.level == "cgroups":
        args = ["--cgroup", row.path]
    else:
        args = ["--pid", str(row.id if view.level == "processes" else view.pid)]
    done = subprocess.run(
        [sys.executable, "-m", "contend", "diagnose", *args, "--duration", "3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    text = (done.stdout or done.stderr).strip().splitlines()
    return "\n".join(text[:12]) + "\n(any key: back)"


def _key(view: screen.View, key: str, rows: list[Any], top: Top, ncols: int) -> bool:
    """Apply a key; False to quit."""
    if view.message:
        view.message = ""
        return True
    if view.typing is not None:
        if key in ("\r", "\n"):
            view.filter, view.typing = view.typing, None
        elif key == "\x1b":
            view.typing = None
        elif key in ("\x7f", "\x08"):
            view.typing = view.typing[:-1]
        elif key.isprintable():
            view.typing += key
        view.selected = 0
        return True
    if key == "q":
        return False
    if key == "p":
        view.paused = not view.paused
    elif key == "/":
        view.typing = ""
    elif key == "s":
        view.sort = (view.sort + 1) % ncols
        while screen.columns(view)[view.sort][0] == "-":
            view.sort = (view.sort + 1) % ncols
    elif key == "r":
        view.reverse = not view.reverse
    elif key in ("\x1b[A", "k"):
        view.selected = max(view.selected - 1, 0)
    elif key in ("\x1b[B", "j"):
        view.selected = min(view.selected + 1, max(len(rows) - 1, 0))
    elif key in ("\r", "\n") and rows:
        row = rows[min(view.selected, len(rows) - 1)]
        if view.level == "cgroups":
            view.cgroup, view.selected, view.filter = row.path, 0, ""
        elif view.level == "processes":
            view.pid, view.selected, view.filter = row.id, 0, ""
    elif key in ("\x7f", "\x08"):
        if view.pid is not None:
            view.pid, view.selected = None, 0
        elif view.cgroup is not None:
            view.cgroup, view.selected = None, 0
    elif key == "d" and rows:
        view.message = _diagnose(view, rows[min(view.selected, len(rows) - 1)])
    return True


def _read_keys(fd: int, timeout_s: float) -> list[str]:
    """Keys typed within `timeout_s` (escape sequences kept whole)."""
    ready, _, _ = select.select([fd], [], [], max(timeout_s, 0))
    if not ready:
        return []
    data = os.read(fd, 64).decode(errors="replace")
    keys, i = [], 0
    while i < len(data):
        if data[i] == "\x1b" and data[i + 1 : i + 2] == "[" and i + 2 < len(data):
            keys.append(data[i : i + 3])
            i += 3
        else:
            keys.append(data[i])
            i += 1
    return keys


@click.command("top")
@click.option("--interval", default="1", show_default=True, help="Seconds between refreshes.")
@click.option("--cgroup", help="Show this cgroup only (its path, as /proc/PID/cgroup has it).")
@click.option("--backend", default="auto", show_default=True,
              help="auto (bpftrace as root, else procfs), bpftrace or procfs.")  # fmt: skip
@click.option("--once", is_flag=True, help="One snapshot after one interval, then exit.")
@click.option("--format", "fmt", default="text", show_default=True,
              help="With --once: text or json.")  # fmt: skip
def command(interval: str, cgroup: str | None, backend: str, once: bool, fmt: str) -> int:
    """Live: every cgroup's CPU use, quota, throttling, PSI, run-queue wait and who it
    waited behind; Enter drills into its processes, then a process's threads."""
    seconds = parse_duration("--interval", interval, 0.2, 3600)
    if fmt not in ("text", "json"):
        raise UsageError(f"--format: {fmt!r} is not text or json")
    if fmt == "json" and not once:
        raise UsageError("--format json needs --once")
    if cgroup is not None and not cgroup.startswith("/"):
        raise UsageError(f"--cgroup: {cgroup!r} is not a cgroup path (they start with /)")
    if not once and not (sys.stdout.isatty() and sys.stdin.isatty()):
        raise UsageError("top needs a terminal; for scripts: --once --format json")
    chosen, why = _backend(backend)
    note = "" if chosen == "bpftrace" else (
        f"procfs: waited behind whom needs root and bpftrace ({why})" if why else
        "procfs: waited behind whom needs the bpftrace backend"
    )  # fmt: skip
    top = Top(seconds, chosen, cgroup)
    try:
        top.start()
        if once:
            printed = top.sched.intervals if top.sched is not None else 0
            time.sleep(seconds)
            if top.sched is not None:
                # The in-kernel waits of the window arrive with bpftrace's next print.
                top.sched.wait_printed(printed + 1, seconds + 5)
            top.step()
            return _print_once(top, fmt, note)
        return _live(top, note)
    except Terminated:
        return 0
    finally:
        slow = top.stop()
        if slow is not None:
            click.echo(slow, err=True)


def _print_once(top: Top, fmt: str, note: str) -> int:
    assert top.snap is not None
    view = screen.View()
    rows = top.rows(view)
    if fmt == "json":
        doc = {"schema": SCHEMA, "backend": top.snap.backend, "interval_s": top.snap.interval_s,
               "cpus": top.snap.cpus, "psi_some_ratio": top.snap.psi_some_ratio,
               "notes": [note] if note else [], "cgroups": [asdict(c) for c in rows]}  # fmt: skip
        click.echo(json.dumps(doc, indent=1, default=str))
        return 0
    console = Console(width=120 if not sys.stdout.isatty() else None)
    console.print(screen.screen(top.snap, rows, view, console.width, 10_000, top.own_cpu,
                                _load(), note, color=not os.environ.get("NO_COLOR")))  # fmt: skip
    return 0


def _live(top: Top, note: str) -> int:
    view = screen.View()
    console = Console()
    color = not os.environ.get("NO_COLOR") and console.color_system is not None
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    next_at = time.monotonic() + top.interval_s
    try:
        tty.setcbreak(fd)
        with Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                assert top.snap is not None
                rows = top.rows(view)
                view.selected = min(view.selected, max(len(rows) - 1, 0))
                w, h = console.size
                live.update(screen.screen(top.snap, rows, view, w, h, top.own_cpu, _load(),
                                          note, color), refresh=True)  # fmt: skip
                keys = _read_keys(fd, next_at - time.monotonic())
                for key in keys:
                    if not _key(view, key, rows, top, len(screen.columns(view))):
                        return 0
                if time.monotonic() >= next_at:
                    if not view.paused:
                        top.step()
                    next_at = time.monotonic() + top.interval_s
    except KeyboardInterrupt:
        return 0
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
