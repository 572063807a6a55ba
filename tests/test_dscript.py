"""D scripts: golden translations, errors with positions, and real runs with exact results."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import LIKE_SETSID_BACKGROUND, contend_command, need
from contend.collect import bpftrace as bt
from contend.dscript.parser import DSyntaxError, parse
from contend.dscript.translate import translate
from contend.monitors.syscalls import table_for

SYSCALLS = {name: nr for nr, name in table_for("x86_64").items()}
TEMPLATE = (
    'syscall:::entry\n/execname == "python"/\n{\n'
    '    printf("[%Y] %s syscall: %s\\n", walltimestamp, execname, probefunc);\n}\n'
)


def program(source: str, target: int | None = None, quiet: bool = True) -> str:
    return translate(parse(source), SYSCALLS, target, quiet).program


def body(source: str, target: int | None = None) -> str:
    """The program without our BEGIN and END lines; the clock offset of walltimestamp
    (taken when the program is built) shows as OFFSET."""
    text = "\n".join(program(source, target).splitlines()[1:-1])
    return re.sub(r"\(nsecs \+ \d+\)", "(nsecs + OFFSET)", text)


GOLDEN = [
    (TEMPLATE,
     'tracepoint:raw_syscalls:sys_enter /((comm == "python"))/ { printf("[\\x01W%llu\\x01] %s syscall: '
     '\\x01S:%d\\x01\\n", (nsecs + OFFSET), comm, args->id); }'),
    ("syscall:::entry /pid != 0/ { @[probefunc] = count(); }",
     "tracepoint:raw_syscalls:sys_enter /((pid != 0))/ { @[args->id] = count(); }"),
    ("syscall::write:entry /arg0 > 1000/ { @n = count(); }",
     "tracepoint:raw_syscalls:sys_enter /(args->id == 1) && ((args->args[0] > 1000))/ { @n = count(); }"),
    ("syscall:::return /probefunc == \"read\"/ { @b = sum(arg0); }",
     "tracepoint:raw_syscalls:sys_exit /((args->id == 0))/ { @b = sum(args->ret); }"),
    ("sched:::on-cpu /execname == \"x\"/ { self->on = timestamp; }",
     'tracepoint:sched:sched_switch /((args->next_comm == "x"))/ { @_self_on[args->next_pid] = nsecs; }'),
    ("sched:::off-cpu /self->on/ { @t[execname] = quantize(timestamp - self->on); self->on = 0; }",
     "tracepoint:sched:sched_switch /(@_self_on[tid])/ { @t[comm] = hist((nsecs - @_self_on[tid])); "
     "delete(@_self_on[tid]); }"),
    ("proc:::exec-success { trace(execname); }",
     'tracepoint:sched:sched_process_exec { printf("%s\\n", comm); }'),
    ("thread:::create { @t[pid] = count(); }",
     "tracepoint:task:task_newtask /((args->clone_flags & 0x10000) != 0)/ { @t[pid] = count(); }"),
    ("proc:::exit { @r[arg0] = count(); }",
     "tracepoint:sched:sched_process_exit /(pid == tid)/ { @r[((curtask->exit_code & 0x7f) ? 2 : 1)] = count(); }"),
    ("tick-1s { exit(0); }", "interval:s:1 { exit(); }"),
    ("tick-250ms { n = n + 1; }", "interval:ms:250 { @_global_n = (@_global_n + 1); }"),
    ("profile-99 { @[cpu] = lquantize(pid, 0, 100, 10); }",
     "profile:hz:99 { @[cpu] = lhist(pid, 0, 100, 10); }"),
    ("syscall:::entry { this->x = arg1 * 2; @m = max(this->x); @a = avg(arg2); @i = min(arg3); }",
     "tracepoint:raw_syscalls:sys_enter { $this_x = (args->args[1] * 2); @m = max($this_x); "
     "@a = avg(args->args[2]); @i = min(args->args[3]); }"),
    ("syscall:::entry /pid == $target/ { @c = count(); } tick-1s { printa(@c); trunc(@c); clear(@c); }",
     "tracepoint:raw_syscalls:sys_enter /((pid == 4242))/ { @c = count(); }\n"
     'interval:s:1 { printf("\\x02printa 0\\n"); print(@c); printf("\\x02printa-done\\n"); clear(@c); zero(@c); }'),
]  # fmt: skip


@pytest.mark.parametrize(("source", "expected"), GOLDEN)
def test_golden_translation(source: str, expected: str) -> None:
    assert body(source, target=4242) == expected


def test_begin_end_clauses_merge_into_one_each() -> None:
    text = program(
        'BEGIN { printf("hi\\n"); } END /1 == 1/ { printf("bye\\n"); } END { trace(1); }'
    )
    lines = text.splitlines()
    assert lines[0] == 'BEGIN { printf("contend-ready\\n"); if (1) { printf("hi\\n"); } }'
    assert lines[-1] == (
        'END { printf("\\x02end\\n"); if (((1 == 1))) { printf("bye\\n"); } if (1) { printf("%lld\\n", 1); }  }'
    )


def test_several_probes_per_clause_expand() -> None:
    text = body("syscall::read:return, syscall::write:return { @[probefunc] = sum(arg0); }")
    assert text.splitlines() == [
        'tracepoint:raw_syscalls:sys_exit /(args->id == 0)/ { @["read"] = sum(args->ret); }',
        'tracepoint:raw_syscalls:sys_exit /(args->id == 1)/ { @["write"] = sum(args->ret); }',
    ]


def test_strings_are_reescaped_never_pasted() -> None:
    hostile = 'syscall:::entry /execname == "a\\"); system(\\"x"/ { @ = count(); }'
    text = body(hostile)
    assert (
        text
        == 'tracepoint:raw_syscalls:sys_enter /((comm == "a\\"); system(\\"x"))/ { @ = count(); }'
    )


@pytest.mark.parametrize(
    ("source", "error"),
    [
        (
            "sched:::enqueue { @ = count(); }",
            "-n:1:1: sched:::enqueue: Linux has no tracepoint for it",
        ),
        ("fbt::foo:entry { }", "-n:1:1: probe fbt::foo:entry is not supported"),
        ("syscall::nosuch:entry { }", "-n:1:1: no syscall named 'nosuch' on this machine"),
        ("BEGIN { stack(); }", "-n:1:9: action 'stack' is not supported"),
        ('BEGIN {\n  printf("%f\\n", 1); }', "-n:2:3: printf conversion %f is not supported"),
        ("BEGIN { trace(nosuch); }", "unknown variable 'nosuch'"),
        ("BEGIN /execname == 1/ { }", "cannot compare a string with a number"),
        (
            "BEGIN { @a = count(); } END { @a = sum(1); }",
            "@a is used with different functions or keys",
        ),
        ("BEGIN { printa(@z); }", "@z is not defined before this printa()"),
        ("syscall:::entry /pid == $target/ { }", "$target needs -c COMMAND or -p PID"),
        ("BEGIN { x = ; }", "-n:1:13: unexpected ';'"),
        ("BEGIN { @a = stddev(1); }", "-n:1:14: aggregating function 'stddev' is not supported"),
        ("syscall:::entry /pid != 0/ { # comment\n }", "-n:1:30: unexpected character '#'"),
    ],
)
def test_errors_name_file_line_column(source: str, error: str) -> None:
    with pytest.raises(DSyntaxError) as info:
        translate(parse(source, "-n"), SYSCALLS)
    assert error in info.value.message


# --- real runs -----------------------------------------------------------------------------

KNOWN = textwrap.dedent(
    """
    import os, threading
    fd = os.open("/dev/null", os.O_WRONLY)
    for _ in range(321):
        os.getsid(0)
    for _ in range(50):
        os.write(fd, b"y" * 7)
    t = threading.Thread(target=lambda: None); t.start(); t.join()
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    os.waitpid(pid, 0)
    """
)


@pytest.fixture(scope="module")
def known_program(tmp_path_factory: pytest.TempPathFactory) -> str:
    need(shutil.which("bpftrace") is not None, "needs bpftrace (make install as root)")
    need(os.geteuid() == 0, "needs root")
    folder = tmp_path_factory.mktemp("d")
    path = folder / "known.py"
    path.write_text(KNOWN)
    # Run it as "python3", a name the four scripts match, while contend and pytest run as
    # "python": the scripts filter by execname, so only the known program is counted.
    python3 = folder / "python3"
    python3.symlink_to(os.path.realpath(sys.executable))
    return f"{python3} {path}"


def dtrace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*contend_command(), "dtrace", *args], capture_output=True, text=True, timeout=120
    )


def test_every_golden_program_compiles(known_program: str) -> None:
    for source, _ in GOLDEN:
        ok, errors = bt.compile_check(program(source, target=1))
        assert ok, f"{source}: {errors}"


def test_count_by_probefunc_is_exact(known_program: str) -> None:
    done = dtrace(
        "-n", "syscall:::entry /pid == $target/ { @[probefunc] = count(); }", "-c", known_program
    )
    assert done.returncode == 0, done.stderr
    counts = dict(re.findall(r"^\s+(\w+)\s+(\d+)$", done.stdout, re.M))
    assert counts["getsid"] == "321"
    assert "matched 1 probes" in done.stderr


def test_template_prints_one_line_per_syscall_with_a_valid_timestamp(known_program: str) -> None:
    script = TEMPLATE.replace(
        'execname == "python"', 'execname == "python3" && probefunc == "getsid"'
    )
    done = dtrace("-n", script, "-c", known_program)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line]
    assert len(lines) == 321
    now = time.time()
    for line in lines:
        m = re.fullmatch(
            r"\[(\d{4} \w{3} (?: \d|\d\d) \d\d:\d\d:\d\d)\] python3 syscall: getsid", line
        )
        assert m, line
        stamp = time.mktime(time.strptime(m.group(1), "%Y %b %d %H:%M:%S"))
        assert abs(now - stamp) < 120


def test_quantize_prints_dtrace_histogram(known_program: str) -> None:
    done = dtrace(
        "-q",
        "-n",
        "syscall::write:return /pid == $target/ { @ = quantize(arg0); }",
        "-c",
        known_program,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines[0] == "           value  ------------- Distribution ------------- count"
    # 50 writes of 7 bytes: all in the [4, 8) bucket, a zero row on each side.
    assert lines[1] == "               2 |                                         0"
    assert lines[2] == "               4 |" + "@" * 40 + " 50"
    assert lines[3] == "               8 |                                         0"


def test_the_four_scripts_ship_and_run(known_program: str) -> None:
    scripts = Path(__file__).resolve().parent.parent / "src" / "contend" / "dscript" / "scripts"
    assert sorted(p.name for p in scripts.glob("*.d")) == [
        "cpu_usage.d", "io_analysis.d", "process_info.d", "syscalls.d"]  # fmt: skip
    sysc = dtrace("-s", "syscalls.d", "-c", known_program)
    assert sysc.returncode == 0, sysc.stderr
    assert "=== System Calls Summary ===\nProcess: Function Count\n" in sysc.stdout
    assert "python3  getsid  321\n" in sysc.stdout and "python3  write  50\n" in sysc.stdout
    assert re.search(r"=== Average Execution Time \(ns\) ===\n(python3  \w+  \d+\n)+", sysc.stdout)

    proc = dtrace("-s", "process_info.d", "-c", known_program)
    assert len(re.findall(r"New process: python3 \(PID:\d+, PPID:\d+\)", proc.stdout)) == 1
    assert len(re.findall(r"New thread created in python3 \(PID:\d+, TID:\d+\)", proc.stdout)) == 1
    assert len(re.findall(r"Process exit: python3 \(PID:\d+\) reason 1", proc.stdout)) == 2
    assert re.search(r"=== Process Activity Summary ===\n(python3?  \d+\n)+", proc.stdout)

    io = dtrace("-s", "io_analysis.d", "-c", known_program)
    assert "python3  write  50\n" in io.stdout and "python3  write  350\n" in io.stdout
    assert io.stdout.count("python3 (PID:") >= 50
    assert io.stdout.count("-> write()\n       Result: 7 bytes\n") == 50

    cpu = dtrace("-s", "cpu_usage.d", "-c", known_program)
    on = len(re.findall(r"\) on CPU$", cpu.stdout, re.M))
    off = len(re.findall(r"\) off CPU after \d+ nanoseconds$", cpu.stdout, re.M))
    scheduled = sum(
        int(n)
        for n in re.findall(
            r"^python3?  (\d+)$",
            cpu.stdout.split("=== Times scheduled ===")[1].split("===")[0],
            re.M,
        )
    )  # type: ignore[union-attr]
    assert off == scheduled and on >= off > 0
    assert "------------- Distribution -------------" in cpu.stdout


@pytest.mark.parametrize(
    "clause",
    ["syscall:::entry", "syscall:::return", "sched:::on-cpu", "sched:::off-cpu", "proc:::exec",
     "thread:::create", "syscall:::entry /pid != 0/", 'syscall:::entry /execname == "python"/',
     "syscall:::entry /arg0 > 1000/"],
)  # fmt: skip
def test_every_snippet_of_the_document_runs(known_program: str, clause: str) -> None:
    """The document's common probes and predicates, with dtrace's default action."""
    done = dtrace("-n", clause, "-c", "true")
    assert done.returncode == 0, done.stderr
    assert "matched" in done.stderr and "error" not in done.stderr


def test_attach_by_pid_and_stop_with_ctrl_c(known_program: str) -> None:
    """-p PID, $target, and Ctrl-C: dtrace prints the aggregations and exits 0."""
    from conftest import pgrep

    loop = "import os, time\nwhile True:\n    os.getsid(0)\n    time.sleep(0.01)\n"
    target = subprocess.Popen([sys.executable, "-c", loop])
    try:
        proc = subprocess.Popen(
            [*contend_command(), "dtrace", "-n", "syscall::getsid:entry /pid == $target/ { @n = count(); }",
             "-p", str(target.pid)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **LIKE_SETSID_BACKGROUND,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not pgrep("bpftrace") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        target.kill()
        target.wait()
    assert proc.returncode == 0, err
    count = int(out.split()[-1])
    assert 30 <= count <= 400  # ~100 calls/s for about 1.5 s
    assert pgrep("bpftrace") == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-s", "/nonexistent/x.d"], "-s: cannot read /nonexistent/x.d"),
        (["-n", "BEGIN {}", "-c", "true", "-p", "1"], "give -c COMMAND or -p PID, not both"),
        ([], "give a script with -s FILE or a clause with -n"),
        (["-n", 'BEGIN { printf("%q", 1); }'], "-n:1:9: printf conversion %q is not supported"),
        (["-n", "BEGIN {}", "-p", "999999999"], "-p: '999999999' is out of range"),
    ],
)
def test_dtrace_bad_input_is_one_line(args: list[str], message: str) -> None:
    done = subprocess.run(
        [*contend_command(), "dtrace", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


# --- details DTrace users rely on (from review) --------------------------------------------


def test_octal_and_three_argument_lquantize() -> None:
    assert body("syscall:::entry /arg2 == 0644/ { @ = lquantize(arg0, 0, 4); }") == (
        "tracepoint:raw_syscalls:sys_enter /((args->args[2] == 420))/ { @ = lhist(args->args[0], 0, 4, 1); }"
    )


def test_percent_y_pads_the_day_to_two_characters_as_dtrace_does() -> None:
    from contend.render.dtrace_text import walltime

    with_tz = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        # DTrace's own example (libdtrace pfprint_time): ctime's layout, day space-padded.
        assert walltime(123786000 * 10**9) == "1973 Dec  3 17:00:00"
        assert walltime(1705314645 * 10**9) == "2024 Jan 15 10:30:45"
    finally:
        if with_tz is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = with_tz
        time.tzset()


def test_walltimestamp_is_epoch_and_probefunc_keeps_its_width() -> None:
    text = program(
        'syscall:::entry { trace(probefunc); printf("%-10s|%d\\n", probefunc, walltimestamp); }'
    )
    offset = int(re.search(r"nsecs \+ (\d+)", text).group(1))  # type: ignore[union-attr]
    assert abs(offset - (time.time_ns() - time.monotonic_ns())) < 1e9
    assert 'printf("\\x01S:%d\\x01\\n", args->id)' in text
    assert 'printf("\\x01S-10:%d\\x01|%lld\\n", args->id, (nsecs + ' in text
    from contend.model import AggregationSpec
    from contend.render.dtrace_text import DTraceOutput

    lines: list[str] = []
    out = DTraceOutput({}, [], lambda n: {1: "write"}[n], lines.append)
    out.printf("\x01S-10:1\x01|5\n")
    assert lines == ["write     |5\n"]
    assert AggregationSpec("a", "count", (), 0).lquantize is None


def _render(spec: object, value: object) -> list[str]:
    from contend.render.dtrace_text import DTraceOutput

    lines: list[str] = []
    out = DTraceOutput({"a": spec}, [], str, lines.append)  # type: ignore[dict-item]
    out.record("hist", {"@a": value})
    out.finish()
    return [line for line in "".join(lines).splitlines() if line.strip()]


def test_histogram_rows_as_dtrace_shows_them() -> None:
    from contend.model import AggregationSpec

    q = AggregationSpec("a", "quantize", (), 0)
    # Negative values (one bpftrace bucket) and zeros: no crash, a row each.
    rows = _render(q, [{"max": -1, "count": 2}, {"min": 0, "max": 0, "count": 1}])
    assert rows[1:] == [
        "             < 0 |" + "@" * 27 + "              2",
        "               0 |" + "@" * 13 + "                            1",
        "               1 |                                         0",
    ]
    assert _render(q, [{"min": 0, "max": 0, "count": 3}])[1].startswith("              -1 |")
    lq = AggregationSpec("a", "lquantize", (), 0, (0, 100, 10))
    rows = _render(lq, [{"min": 50, "max": 59, "count": 1}])
    assert [r.split("|")[0].strip() for r in rows[1:]] == ["40", "50", "60"]


def test_keys_with_commas_and_printa_of_an_empty_aggregation() -> None:
    from contend.model import AggregationSpec
    from contend.render.dtrace_text import DTraceOutput, split_key

    assert split_key("a,b,1", ("str", "syscall")) == ["a,b", "1"]
    assert split_key("7,x,y,3", ("int", "str", "int")) == ["7", "x,y", "3"]
    lines: list[str] = []
    specs = {
        "a": AggregationSpec("a", "count", ("str",), 0),
        "b": AggregationSpec("b", "count", ("str",), 1),
    }
    out = DTraceOutput(specs, ["%s=%@d\n"], str, lines.append)
    out.printf("\x02printa 0\n")  # @a was empty: bpftrace printed nothing
    out.printf("\x02printa-done\n")
    out.record("map", {"@b": {"k": 2}})
    out.finish()
    assert "".join(lines).split() == ["k", "2"]  # @b in the default layout, not @a's format


def test_a_gate_never_released_does_not_run_the_command(tmp_path: Path) -> None:
    from contend.collect.launch import launch

    marker = tmp_path / "ran"
    launched = launch(("touch", str(marker)))
    launched.abort()
    assert launched.proc.returncode == 125
    assert not marker.exists()
