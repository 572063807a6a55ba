"""contend top in a real terminal: tmux runs it, `capture-pane` reads the screen, and
`send-keys` types. A 0.3-CPU group with two loops, a victim and a hog pinned to one CPU
in two groups; keys, resizes, the exit; `--once --format json` against diagnose."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import TIME_SCALE, busy_loop, contend_command, need, pgrep, quiet_cpu
from contend.lab.sandbox import Limits, Sandbox


class Tmux:
    def __init__(self, command: list[str], width: int = 160, height: int = 40) -> None:
        self.socket = f"contend-test-{os.getpid()}"
        shell = " ".join(command)
        self.tmux("new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height),
                  f"env -u COLUMNS -u LINES NO_COLOR=1 {shell}")  # fmt: skip
        self.tmux("set-option", "-t", "top", "remain-on-exit", "on")
        self.tmux("set-option", "-t", "top", "window-size", "manual")
        self.tmux("resize-window", "-t", "top", "-x", str(width), "-y", str(height))

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, timeout=30)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "top", *keys)

    def wait_for(self, ok: Any, timeout_s: float = 10) -> str:
        deadline = time.monotonic() + timeout_s * TIME_SCALE
        while True:
            text = self.screen()
            if ok(text):
                return text
            assert time.monotonic() < deadline, text
            time.sleep(0.1)

    def exit_status(self) -> int | None:
        out = self.tmux("display-message", "-p", "-t", "top", "#{pane_dead} #{pane_dead_status}")
        dead, _, status = out.strip().partition(" ")
        return int(status) if dead == "1" and status else None

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def top_root() -> None:
    need(os.geteuid() == 0, "needs root")
    need(shutil.which("tmux") is not None, "needs tmux")
    need(shutil.which("bpftrace") is not None, "needs bpftrace")


@pytest.fixture
def workload() -> Iterator[dict[str, Any]]:
    cpu = quiet_cpu()
    with Sandbox(Limits(0.3, None)) as limited, Sandbox(Limits(None, None)) as v_box, \
            Sandbox(Limits(None, None)) as h_box:  # fmt: skip
        procs = [busy_loop(join=limited.join_function()) for _ in range(2)]
        procs += [busy_loop(cpu, v_box.join_function()), busy_loop(cpu, h_box.join_function())]
        try:
            yield {"limited": "/" + limited.name, "victim": "/" + v_box.name,
                   "hog": "/" + h_box.name, "procs": procs}  # fmt: skip
        finally:
            for p in procs:
                p.kill()
                p.wait()


def test_top_shows_the_throttled_group_and_the_victims_holder(
    top_root: None, workload: dict[str, Any]
) -> None:
    bpftraces = set(pgrep("bpftrace"))
    tmux = Tmux([*contend_command(), "top", "--interval", "0.5"])
    lim, vic, hog = workload["limited"], workload["victim"], workload["hog"]
    try:
        # Within 3 refreshes of the first full interval: the 0.3-CPU group throttled in
        # (nearly) every period, the victim waiting behind the hog's group.
        text = tmux.wait_for(lambda t: lim in t and vic in t, timeout_s=15)
        start = time.monotonic()

        def throttled(t: str) -> bool:
            m = re.search(re.escape(lim) + r".*?(\d+)%\s", t)
            return bool(m) and int(m.group(1)) >= 90

        text = tmux.wait_for(throttled, timeout_s=3 * 0.5 + 2)
        assert time.monotonic() - start <= (3 * 0.5 + 2) * TIME_SCALE
        text = tmux.wait_for(lambda t: any(line.startswith(vic) and hog in line
                                           for line in t.splitlines()), timeout_s=5)  # fmt: skip
        header = text.splitlines()[0]
        assert "contend top" in header and "backend bpftrace" in header
        # `/` filters by name: only the victim's group is left.
        tmux.keys("/", *vic, "Enter")
        text = tmux.wait_for(lambda t: lim not in t and vic in t.split("\n", 3)[-1])
        assert f"filter '{vic}'" in text
        # `d`: contend diagnose on the selected group, its answer on the screen: the
        # victim waits behind the hog's loop, named by its pid; any key goes back.
        hog_pid = workload["procs"][3].pid
        tmux.keys("d")
        text = tmux.wait_for(lambda t: "Verdict:" in t, timeout_s=60)
        assert "CONTENTION" in text and re.search(rf"PID\s+{hog_pid}\b", text), text
        tmux.keys("x")
        tmux.wait_for(lambda t: "Verdict:" not in t and vic in t)
        # Enter: its processes (the one loop, python3); Backspace: back to the cgroups.
        tmux.keys("Enter")
        text = tmux.wait_for(lambda t: f"processes of {vic}" in t)
        tmux.wait_for(lambda t: re.search(r"python3? \(\d+\)", t) is not None)
        tmux.keys("BSpace")
        tmux.wait_for(lambda t: t.splitlines()[1].startswith("cgroups;"))
        # `s` moves the sort to the next column.
        tmux.keys("s")
        text = tmux.wait_for(lambda t: "sort w/r" in t)
        # The terminal shrinks to 80x24 and grows to 200x60: the table refits.
        for w, h in ((80, 24), (200, 60)):
            tmux.tmux("resize-window", "-t", "top", "-x", str(w), "-y", str(h))
            time.sleep(1.2)
            text = tmux.screen()
            lines = text.splitlines()
            assert "Traceback" not in text and lines[0].startswith("contend top")
            assert max(len(line) for line in lines) <= w and len(lines) <= h
            # At 80 columns a long name keeps its tail: "…tend-812-2".
            assert any(line.split(" ", 1)[0].lstrip("…") in vic and line.split(" ", 1)[0].endswith(vic[-6:])
                       for line in lines), text  # fmt: skip
        tmux.keys("q")
        quit_at = time.monotonic()
        deadline = quit_at + 40 * TIME_SCALE
        while tmux.exit_status() is None:
            assert time.monotonic() < deadline, tmux.screen()
            time.sleep(0.1)
        assert tmux.exit_status() == 0
        print(f"top exited {time.monotonic() - quit_at:.1f} s after q")
    finally:
        tmux.kill()
    time.sleep(0.5)
    assert set(pgrep("bpftrace")) <= bpftraces  # its bpftrace ended with it


def test_once_json_agrees_with_diagnose_on_the_same_group(
    top_root: None, workload: dict[str, Any]
) -> None:
    lim = workload["limited"]
    time.sleep(0.5)
    diag = subprocess.run([*contend_command(), "diagnose", "--cgroup", lim, "--duration", "2",
                           "--format", "json"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert diag.returncode == 0, diag.stderr
    (group,) = [c for c in json.loads(diag.stdout)["cgroups"] if c["path"] == lim]
    once = subprocess.run([*contend_command(), "top", "--once", "--format", "json", "--interval",
                           "2", "--cgroup", lim], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert once.returncode == 0, once.stderr
    doc = json.loads(once.stdout)
    assert doc["schema"] == "contend.top/1"
    (row,) = doc["cgroups"]
    assert row["path"] == lim and row["quota_cpus"] == pytest.approx(0.3)
    assert row["cpu_cores"] == pytest.approx(group["usage_cpus"], rel=0.10)
    assert row["throttled_ratio"] == pytest.approx(group["throttled_periods_ratio"], abs=0.10)
    # Its waits are in too (the window's in-kernel waits arrive with bpftrace's next print):
    # two loops in 0.3 CPU wait far more than they run, starved by their quota.
    assert row["wait_to_run"] >= 2 and row["severity"] == "severe" and row["reason"] == "quota"


def test_top_refuses_a_pipe_and_bad_options() -> None:
    for args, word in (([], "needs a terminal"), (["--interval", "x"], "not a number"),
                       (["--format", "json"], "needs --once"), (["--cgroup", "rel"], "cgroup path"),
                       (["--once", "--backend", "x"], "not one of")):  # fmt: skip
        done = subprocess.run([*contend_command(), "top", *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=30)  # fmt: skip
        assert done.returncode == 2 and word in done.stderr and done.stderr.count("\n") == 1, (
            done.stderr
        )
