"""The bpftrace backend: generated programs, aggregation in the kernel, JSON output.

Programs are assembled from fixed text and validated integers only. The one user string
a program may need (a comm) is passed as positional parameter $1 and compared with
`str($1)`: it is data to bpftrace, never code.

bpftrace runs as a child that dies with us (PR_SET_PDEATHSIG=SIGKILL: the kernel then
closes its BPF links and detaches every probe), is stopped with SIGINT so that it prints
its maps, and is killed if it does not exit in time.
"""

from __future__ import annotations

import functools
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contend.collect.procfs import CLOCK_TICKS, ProcFS, ProcGone
from contend.errors import ContendError, PermissionNeeded
from contend.prctl import die_with_parent
from contend.target import Target

TRACEFS = Path("/sys/kernel/tracing")
READY = "contend-ready"
INTERVAL = "contend-interval"
# Bytes per string (paths in the io monitor). The default 64 cuts most paths; above 80
# the io monitor's open probe, which holds a path twice, exceeds the 512-byte BPF stack
# (measured with bpftrace 0.17).
STRLEN = "80"


def ensure_tracefs() -> None:
    """bpftrace resolves tracepoints through tracefs; mount it if the machine has not
    (Documentation/trace/ftrace.rst: mount -t tracefs nodev /sys/kernel/tracing)."""
    if (TRACEFS / "events").is_dir():
        return
    done = subprocess.run(
        ["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True, text=True
    )
    if done.returncode != 0 or not (TRACEFS / "events").is_dir():
        raise ContendError(f"cannot mount tracefs at {TRACEFS}: {done.stderr.strip()}")


def available() -> tuple[bool, str]:
    if shutil.which("bpftrace") is None:
        return False, "bpftrace is not installed (as root: make install)"
    if os.geteuid() != 0:
        return False, "bpftrace needs root"
    return True, "bpftrace found, running as root"


def tracepoint_exists(category: str, name: str) -> bool:
    """Is the tracepoint there? Mounts tracefs first when we may (a fresh machine has it
    unmounted, and then every tracepoint would look absent)."""
    if not (TRACEFS / "events").is_dir() and os.geteuid() == 0:
        ensure_tracefs()
    return (TRACEFS / "events" / category / name).is_dir()


# --- predicates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Predicate:
    """How a program tells a target task from any other.

    `expr` tests the current task (empty: everything). `seed` is BEGIN-block text and
    `probes` extra probes that maintain the tracked set. `positional` are the program's
    positional parameters.
    """

    expr: str
    seed: str = ""
    probes: str = ""
    positional: tuple[str, ...] = ()
    tracked_map: str | None = None

    def guard(self) -> str:
        return f"/{self.expr}/" if self.expr else ""


def predicate_for(target: Target, initial_pids: tuple[int, ...] = ()) -> Predicate:
    """`initial_pids`: processes already in the target (a launched command, a v1 cgroup's
    members), tracked from the start along with every process they fork."""
    if target.pids:
        # Integers only; `pid` is the thread group id, so every thread matches.
        return Predicate(" || ".join(f"pid == {int(p)}" for p in target.pids))
    if target.comm is not None:
        return Predicate("comm == str($1)", positional=(target.comm,))
    if target.cgroup_id is not None:
        return Predicate(f"cgroup == {int(target.cgroup_id)}")
    if target.command or target.cgroup is not None:
        seed = "".join(f"@contend_pids[{int(p)}] = 1; " for p in initial_pids)
        probes = (
            "tracepoint:sched:sched_process_fork /@contend_pids[args->parent_pid]/ "
            "{ @contend_pids[args->child_pid] = 1; }\n"
        )
        return Predicate(
            "@contend_pids[pid]", seed=seed, probes=probes, tracked_map="@contend_pids"
        )
    return Predicate("")


# --- programs -----------------------------------------------------------------------------


@dataclass
class Program:
    """A bpftrace program assembled from monitor fragments."""

    predicate: Predicate
    fragments: list[str] = field(default_factory=list)
    internal_maps: list[str] = field(default_factory=list)
    begin: list[str] = field(default_factory=list)
    end: list[str] = field(default_factory=list)  # END-block text, before the clears
    # --interval: every interval_ms, print these maps, then the INTERVAL marker.
    interval_ms: int | None = None
    result_maps: list[str] = field(default_factory=list)

    def text(self) -> str:
        begin = self.predicate.seed + " ".join(self.begin)
        clears = " ".join(f"clear({m});" for m in self.internal_maps)
        if self.predicate.tracked_map:
            clears += f" clear({self.predicate.tracked_map});"
        periodic = ""
        if self.interval_ms is not None:
            prints = " ".join(f"print({m});" for m in self.result_maps)
            periodic = (
                f'interval:ms:{int(self.interval_ms)} {{ {prints} printf("{INTERVAL}\\n"); }}\n'
            )
        return (
            f'BEGIN {{ {begin} printf("{READY}\\n"); }}\n'
            + self.predicate.probes
            + "".join(self.fragments)
            + periodic
            + f"END {{ {' '.join(self.end)} {clears} }}\n"
        )


# --- running ------------------------------------------------------------------------------


@dataclass
class Output:
    """What bpftrace printed, parsed from its `-f json` lines."""

    maps: dict[str, dict[str, Any]] = field(default_factory=dict)
    hists: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    lost_events: int = 0
    attached_probes: int = 0
    errors: list[str] = field(default_factory=list)
    # Set when bpftrace did not end this long after SIGINT and was killed: what it had
    # not yet printed (the maps it prints at exit) is missing.
    killed_after_s: float | None = None


# bpftrace 0.17's JSON writes a string's bytes >= 0x80 as a sign-extended char,
# "\uffffffc3" (not JSON): read as the byte, and a name's UTF-8 decoded.
_SIGNED_BYTE = re.compile(r"\\uffffff([0-9a-fA-F]{2})")


def _utf8(value: Any) -> Any:
    if isinstance(value, str):
        if any("\x80" <= ch <= "\xff" for ch in value) and max(map(ord, value)) < 0x100:
            return value.encode("latin-1").decode("utf-8", errors="replace")
        return value
    if isinstance(value, dict):
        return {_utf8(k): _utf8(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_utf8(v) for v in value]
    return value


def _harmless(line: str) -> bool:
    # Where the memlock limit cannot be raised, bpftrace says so and goes on: kernels
    # since 5.11 charge BPF memory to the memory cgroup instead.
    return "RLIMIT_MEMLOCK" in line


def _preexec() -> None:
    # bpftrace asks for a large RLIMIT_MEMLOCK; root may raise the hard limit.
    try:
        resource.setrlimit(
            resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )
    except (ValueError, OSError):
        pass
    die_with_parent(signal.SIGKILL)
    os.setpgrp()  # a Ctrl-C on the terminal goes to us; we stop bpftrace ourselves


class Bpftrace:
    def __init__(
        self,
        program: Program | str,
        on_printf: Callable[[str], None] | None = None,
        start_timeout_s: float = 60.0,
        buffer_pages: int | None = None,
        on_record: Callable[[str, dict[str, Any]], None] | None = None,
        map_keys: int | None = None,
    ) -> None:
        """`program`: a Program, or finished text that prints READY from BEGIN.
        `on_record(kind, data)` sees every map, hist and stats record in output order.
        `map_keys`: entries per map (bpftrace's default is 4096)."""
        self.program = program
        self.map_keys = map_keys
        self.on_record = on_record
        self.buffer_pages = buffer_pages
        self.on_printf = on_printf
        self.start_timeout_s = start_timeout_s
        self.output = Output()
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._stderr: list[str] = []
        self.tracer_cpu_s: float | None = None
        self.stop_ns: int | None = None  # CLOCK_MONOTONIC when stop() asked it to end

    def start(self) -> None:
        ok, why = available()
        if not ok:
            raise PermissionNeeded(why) if "root" in why else ContendError(why)
        ensure_tracefs()
        if isinstance(self.program, str):
            cmd = ["bpftrace", "-f", "json", "-e", self.program]
        else:
            cmd = ["bpftrace", "-f", "json", "-e", self.program.text()]
            cmd += self.program.predicate.positional
        env = dict(os.environ, BPFTRACE_STRLEN=STRLEN)
        if self.map_keys is not None:
            env["BPFTRACE_MAP_KEYS_MAX"] = str(int(self.map_keys))
        if self.buffer_pages is not None:
            # Pages per CPU of the perf ring buffer that carries printf events (default 64).
            env["BPFTRACE_PERF_RB_PAGES"] = str(int(self.buffer_pages))
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            preexec_fn=_preexec,
        )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ContendError(f"bpftrace failed to start: {self._first_error()}")

    def _first_error(self) -> str:
        time.sleep(0.05)
        for line in self._stderr:
            if "ERROR" in line or "error" in line:
                return line.strip()
        return self._stderr[0].strip() if self._stderr else "no output"

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            if _harmless(line):
                continue
            self._stderr.append(line)

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        out = self.output
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                fixed, signed = _SIGNED_BYTE.subn(r"\\u00\1", line)
                record = json.loads(fixed)
                if signed:  # rare: only then is every string looked at
                    record = _utf8(record)
            except json.JSONDecodeError:
                out.errors.append(line)
                continue
            kind, data = record.get("type"), record.get("data")
            try:
                self._dispatch(kind, data)
            except Exception as e:  # keep draining: a stalled pipe would stall bpftrace
                out.errors.append(f"{type(e).__name__}: {e}")

    def _dispatch(self, kind: object, data: Any) -> None:
        out = self.output
        if kind == "printf":
            text = str(data)
            if text.strip() == READY:
                self._ready.set()
            elif self.on_printf is not None:
                self.on_printf(text)
        elif kind in ("map", "hist", "stats"):
            {"map": out.maps, "hist": out.hists, "stats": out.stats}[kind].update(data)
            if self.on_record is not None:
                self.on_record(kind, data)
        elif kind == "attached_probes":
            out.attached_probes = int(data.get("probes", 0))
        elif kind == "lost_events":
            out.lost_events += int(data.get("events", 0))

    def _cpu_seconds(self) -> float | None:
        if self.proc is None:
            return None
        try:
            st = ProcFS().stat(self.proc.pid)
        except (ProcGone, ValueError):
            return None
        return (st.utime_ticks + st.stime_ticks) / CLOCK_TICKS

    def stop(self, timeout_s: float = 30.0, working_cap_s: float = 120.0) -> Output:
        """SIGINT (bpftrace detaches, prints its maps and exits), then SIGKILL if it hangs:
        after `timeout_s` once it made no progress for `IDLE_S`, or, while it still works
        (uses CPU, or waits in the kernel: detaching and printing on a slow machine),
        after `working_cap_s`. Killed, its maps are lost."""
        proc = self.proc
        if proc is None:
            return self.output
        if proc.poll() is None:
            self.tracer_cpu_s = self._cpu_seconds()
            self.stop_ns = time.monotonic_ns()
            proc.send_signal(signal.SIGINT)
            begun = time.monotonic()
            seen_t, seen_cpu = begun, self._cpu_seconds()
            while True:
                waited = time.monotonic() - begun
                try:
                    proc.wait(min(timeout_s - waited, 0.5) if waited < timeout_s else 0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                waited = now - begun
                if waited < timeout_s:
                    continue
                hung = waited >= max(timeout_s, working_cap_s)
                cpu = self._cpu_seconds()
                # Working: its CPU time went up, or a thread runs or waits in the kernel
                # (detaching waits for RCU grace periods). Stopped or asleep with no
                # progress for IDLE_S: hung (a loaded machine left a working one asleep
                # for over 0.5 s).
                if (
                    cpu is not None and seen_cpu is not None and cpu > seen_cpu + 0.015
                ) or _in_kernel_or_running(proc.pid):
                    seen_t, seen_cpu = now, cpu
                elif now - seen_t >= IDLE_S:
                    hung = True
                if hung:
                    # Killed, its BPF programs and maps go with its file descriptors.
                    proc.kill()
                    proc.wait()
                    self.output.killed_after_s = round(waited, 1)
                    break
        if self._reader is not None:
            self._reader.join(timeout=10)
        for line in self._stderr:
            # Without -f json bpftrace says "Lost N events"; keep counting it either way.
            if line.startswith("Lost ") and line.split()[1].isdigit():
                self.output.lost_events += int(line.split()[1])
        return self.output

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


IDLE_S = 5.0  # after its timeout, a stopping bpftrace without progress this long is hung


def _in_kernel_or_running(pid: int) -> bool:
    """Whether a thread of `pid` is running (R) or in uninterruptible sleep (D)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                text = f.read()
        except OSError:
            continue
        state = text[text.rfind(b")") + 2 : text.rfind(b")") + 3]
        if state in (b"R", b"D"):
            return True
    return False


@functools.cache
def _has_dry_run() -> bool:
    done = subprocess.run(["bpftrace", "--help"], capture_output=True, text=True)
    return "--dry-run" in done.stdout + done.stderr


def compile_check(program: Program | str) -> tuple[bool, str]:
    """Compile without attaching (bpftrace >= 0.18: --dry-run; 0.17: --emit-elf)."""
    ensure_tracefs()
    elf = Path(f"/tmp/contend-check-{os.getpid()}.elf")
    flags = ["--dry-run"] if _has_dry_run() else ["--emit-elf", str(elf)]
    if isinstance(program, str):
        args = ["-e", program]
    else:
        args = ["-e", program.text(), *program.predicate.positional]
    done = subprocess.run(
        ["bpftrace", *flags, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, BPFTRACE_STRLEN=STRLEN),
        preexec_fn=_preexec,
    )
    elf.unlink(missing_ok=True)
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line and not _harmless(line)]
    return done.returncode == 0 and not errors, "\n".join(errors)


def split_key(key: str, parts: int) -> list[str]:
    """bpftrace's JSON joins tuple keys with ','; the last part (a comm or a path) may
    contain commas itself, so split from the left only."""
    return key.split(",", parts - 1)
