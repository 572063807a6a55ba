"""The tracefs backend: format parsers and the page decoder on fixtures copied from this
kernel (6.18), then the instance against the real kernel."""

from __future__ import annotations

import itertools
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import need
from contend.collect import tracefs as tf
from contend.collect.launch import launch
from contend.errors import ContendError

FIXTURES = Path(__file__).parent / "fixtures" / "tracefs"
SWITCH_FIELDS = ("prev_comm", "prev_pid", "prev_state", "next_comm", "next_pid")


def fixture_pages() -> tuple[list[bytes], list[int]]:
    """sched_switch.pages: 8 pages captured from trace_pipe_raw, each a CPU byte + 4096 B."""
    data = (FIXTURES / "sched_switch.pages").read_bytes()
    step = 4097
    return [data[i + 1 : i + step] for i in range(0, len(data), step)], [
        data[i] for i in range(0, len(data), step)
    ]


def header() -> tf.PageHeader:
    return tf.parse_header_page((FIXTURES / "header_page").read_text())


def switch_format() -> tf.EventFormat:
    return tf.parse_format((FIXTURES / "sched_switch.format").read_text(), "sched")


# --- pure parsers -----------------------------------------------------------------------


def test_format_file_fields() -> None:
    fmt = switch_format()
    assert (fmt.name, fmt.id) == ("sched_switch", 372)
    f = fmt.fields
    assert (f["common_pid"].offset, f["common_pid"].size, f["common_pid"].signed) == (4, 4, True)
    assert (f["prev_comm"].offset, f["prev_comm"].size, f["prev_comm"].is_string) == (8, 16, True)
    assert (f["prev_pid"].offset, f["prev_state"].offset, f["prev_state"].size) == (24, 32, 8)
    assert (f["next_comm"].offset, f["next_pid"].offset, f["next_prio"].offset) == (40, 56, 60)
    assert list(f) == ["common_type", "common_flags", "common_preempt_count", "common_pid",
                       "prev_comm", "prev_pid", "prev_prio", "prev_state", "next_comm",
                       "next_pid", "next_prio"]  # fmt: skip


def test_data_loc_and_array_elements() -> None:
    exec_fmt = tf.parse_format((FIXTURES / "sched_process_exec.format").read_text())
    assert exec_fmt.fields["filename"].data_loc and exec_fmt.fields["filename"].offset == 8
    enter = tf.parse_format((FIXTURES / "sys_enter.format").read_text())
    arg2 = tf.element(enter, "args[2]")
    assert (arg2.offset, arg2.size, arg2.signed) == (16 + 2 * 8, 8, False)
    with pytest.raises(ContendError, match="no element 6"):
        tf.element(enter, "args[6]")
    with pytest.raises(ContendError, match="no field 'nope'"):
        enter.field("nope")


def test_header_page_and_header_event() -> None:
    h = header()
    assert (h.timestamp.offset, h.timestamp.size) == (0, 8)
    assert (h.commit.offset, h.commit.size) == (8, 8)  # local_t: 8 bytes on 64-bit
    assert (h.data.offset, h.page_size) == (16, 4096)
    ev = tf.parse_header_event((FIXTURES / "header_event").read_text())
    assert ev == tf.EventHeader(5, 27, 29, 30, 31, 28)


def test_stats_and_losses() -> None:
    start = tf.parse_stats("entries: 5\noverrun: 2\ncommit overrun: 0\nbytes: 100\n"
                           "oldest event ts:  8.1\nnow ts:  9.2\ndropped events: 1\n")  # fmt: skip
    end = {"entries": 0, "overrun": 10, "commit_overrun": 1, "dropped_events": 4}
    assert start["overrun"] == 2 and "oldest_event_ts" not in start
    assert tf.lost_between(start, end) == 8 + 1 + 3


def test_filters_are_built_from_integers_only() -> None:
    assert tf.pid_filter("prev_pid", [3, 12]) == "prev_pid == 3 || prev_pid == 12"
    assert tf.id_filter([1, 0, 1]) == "id == 0 || id == 1"
    with pytest.raises(ValueError):
        tf.pid_filter("prev_pid", ["1 || common_pid > 0"])  # type: ignore[list-item]
    with pytest.raises(ContendError):
        tf.pid_filter("prev_pid) || (1", [1])


# --- the page decoder -------------------------------------------------------------------


def test_fixture_pages_decode_to_a_consistent_switch_chain() -> None:
    pages, cpus = fixture_pages()
    records = tf.decode(pages, cpus, header())
    assert len(records) == 480
    assert set(records.type_id.tolist()) == {372}  # a misaligned walk would read junk types
    cols = tf.columns(records, switch_format(), SWITCH_FIELDS)
    for cpu in (0, 1):
        mine = cols["cpu"] == cpu
        ts = cols["ts"][mine]
        assert len(ts) == 240 and np.all(np.diff(ts) >= 0)
        # Each switch on a CPU starts the task the next switch there stops; except that
        # this VM's kernel never records a switch *from* idle on CPU 1 (bpftrace sees
        # them; ftrace does not): every break in the chain follows a switch to idle.
        nxt, prev = cols["next_pid"][mine], cols["prev_pid"][mine]
        breaks = np.nonzero(nxt[:-1] != prev[1:])[0]
        assert len(breaks) == (0 if cpu == 0 else 176)
        assert set(nxt[breaks].tolist()) <= {0}
        assert not np.any(prev == 0) if cpu == 1 else np.any(prev == 0)
        # The switching-out task is the one running: common_pid == prev_pid.
        assert np.array_equal(cols["common_pid"][mine], prev)
    assert np.all(np.diff(cols["ts"]) >= 0)  # merged across CPUs by time
    assert b"swapper/0" in set(cols["prev_comm"].tolist())


def test_numpy_and_struct_decoders_agree() -> None:
    pages, cpus = fixture_pages()
    fmt = switch_format()
    cols = tf.columns(tf.decode(pages, cpus, header()), fmt, SWITCH_FIELDS)
    rows = tf.decode_struct(pages, cpus, header(), fmt, SWITCH_FIELDS)
    assert len(rows) == len(cols["ts"]) == 480
    assert [r[0] for r in rows] == cols["ts"].tolist()
    assert [r[2][2] for r in rows] == cols["prev_pid"].tolist()
    assert [r[2][3] for r in rows] == cols["prev_state"].tolist()
    assert [r[2][5] for r in rows] == cols["next_pid"].tolist()
    assert [r[2][1].rstrip(b"\0") for r in rows] == cols["prev_comm"].tolist()


def _page(base_ts: int, body: bytes, commit_flags: int = 0) -> bytes:
    page = struct.pack("<Qq", base_ts, len(body) | commit_flags) + body
    return page + bytes(4096 - len(page))


def _rec(type_len: int, delta: int, *words: int) -> bytes:
    return struct.pack("<I", (delta << 5) | type_len) + b"".join(
        struct.pack("<I", w) for w in words
    )


def test_time_extend_long_records_and_padding() -> None:
    """A hand-built page: a small record, a time extend, a type_len-0 record of 120 bytes,
    a discarded record (padding with a delta), then one more small record."""
    small = struct.pack("<HBBi", 7, 0, 0, 1111)  # common_type 7, common_pid 1111
    long_data = struct.pack("<HBBi", 7, 0, 0, 2222) + bytes(112)
    body = (
        _rec(2, 10) + small
        + _rec(30, 5, 3)  # time extend: 3 << 27 | 5
        + _rec(0, 7, len(long_data) + 4) + long_data
        + _rec(29, 4, 12) + bytes(8)  # discarded: 12 B with its length word; delta counts
        + _rec(2, 1) + struct.pack("<HBBi", 7, 0, 0, 3333)
    )  # fmt: skip
    records = tf.decode([_page(1000, body, commit_flags=1 << 31)], [1], header())
    assert records.ts.tolist() == [1010, 1010 + (3 << 27) + 5 + 7, 1010 + (3 << 27) + 5 + 7 + 4 + 1]
    pids = [int.from_bytes(records.buf[o + 4 : o + 8].tobytes(), "little", signed=True)
            for o in records.offset.tolist()]  # fmt: skip
    assert pids == [1111, 2222, 3333]
    assert records.cpu.tolist() == [1, 1, 1]


def test_absolute_stamp_and_pages_walked_together() -> None:
    """An absolute time stamp (type 31) replaces the low 59 bits; several pages of
    different lengths, walked together, keep page order."""
    small = struct.pack("<HBBi", 7, 0, 0, 1)
    stamp = (5 << 27) + 3
    body = _rec(2, 10) + small + _rec(31, 3, 5) + _rec(2, 2) + small
    short = _rec(2, 4) + small
    pages = [_page(1000, body), _page(2000, short), _page(3000, body + body)]
    records = tf.decode(pages, [0, 1, 0], header())
    assert records.ts.tolist() == [1010, stamp + 2, 2004, 3010, stamp + 2, stamp + 12,
                                   stamp + 2]  # fmt: skip
    assert records.cpu.tolist() == [0, 0, 1, 0, 0, 0, 0]
    assert records.offset.tolist() == [20, 40, 4096 + 20] + [8192 + o for o in (20, 40, 52, 72)]


def test_a_null_padding_ends_the_page() -> None:
    small = struct.pack("<HBBi", 7, 0, 0, 1)
    body = _rec(2, 3) + small + _rec(29, 0) + _rec(2, 3) + small
    assert len(tf.decode([_page(50, body)], [0], header())) == 1


# --- the real kernel --------------------------------------------------------------------


@pytest.fixture(scope="module")
def root_tracefs() -> None:
    need(os.geteuid() == 0, "needs root")
    need(tf.TRACEFS.is_dir(), "needs tracefs")


def instances() -> set[str]:
    return set(os.listdir(tf.TRACEFS / "instances"))


@pytest.mark.kernel
def test_instance_is_created_and_given_back(root_tracefs: None) -> None:
    before = instances()
    with tf.Instance(buffer_kb=256) as inst:
        assert inst.name == f"contend-{os.getpid()}" and inst.name in instances()
        assert "[mono]" in (inst.path / "trace_clock").read_text()
        # Rounded up to whole pages (258 KiB here).
        assert 256 <= int((inst.path / "buffer_size_kb").read_text()) <= 264
        inst.enable("sched", "sched_switch")
        inst.start()
    assert instances() == before


@pytest.mark.kernel
def test_reclaim_removes_dead_owners_only(root_tracefs: None) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    names = [f"contend-{dead.pid}", f"contend-{live.pid}", "someone-else"]
    try:
        for name in names:
            os.mkdir(tf.TRACEFS / "instances" / name)
        tf._write(tf.TRACEFS / "instances" / names[0] / "events/sched/sched_switch/enable", "1")
        assert tf.reclaim() == [names[0]]
        left = instances()
        assert names[0] not in left and names[1] in left and names[2] in left
    finally:
        live.kill()
        live.wait()
        for name in names[1:]:
            os.rmdir(tf.TRACEFS / "instances" / name)


@pytest.mark.kernel
def test_exact_syscall_count_of_a_followed_command(root_tracefs: None) -> None:
    """1234 getsid calls of a command held at the gate until tracing runs: all 1234
    recorded (set_event_pid + event-fork, raw_syscalls filtered to getsid by number)."""
    program = "import os\nfor _ in range(1234):\n    os.getsid(0)\n"
    launched = launch((sys.executable, "-c", program))
    getsid = 124 if os.uname().machine == "x86_64" else 156
    tracer = tf.Tracer(
        [tf.EventSpec("raw_syscalls", "sys_enter", ("id",), tf.id_filter([getsid]))],
        buffer_kb=512,
    )
    try:
        tracer.open(follow=[launched.proc.pid])
        before = time.monotonic_ns()
        tracer.start()
        launched.release()
        launched.proc.wait(30)
        after = time.monotonic_ns()
        capture = tracer.finish()
    finally:
        tracer.close()
    enter = capture.get("sys_enter")
    assert len(enter["id"]) == 1234 and set(enter["id"].tolist()) == {getsid}
    assert set(enter["common_pid"].tolist()) == {launched.proc.pid}
    assert capture.lost_events == 0
    # trace_clock mono: the same clock as time.monotonic_ns().
    assert before <= int(enter["ts"][0]) <= int(enter["ts"][-1]) <= after


@pytest.mark.kernel
def test_a_small_buffer_loses_events_and_says_so(root_tracefs: None) -> None:
    """A 64 KiB buffer not read during 200k getsid calls: most records are dropped, and
    the stats say how many (dropped + read = what was produced)."""
    program = "import os\nfor _ in range(200000):\n    os.getsid(0)\n"
    launched = launch((sys.executable, "-c", program))
    tracer = tf.Tracer([tf.EventSpec("raw_syscalls", "sys_enter", ("id",), "id == 124")], 64)
    try:
        tracer.open(follow=[launched.proc.pid])
        tracer.start()
        launched.release()
        launched.proc.wait(60)
        capture = tracer.finish()
    finally:
        tracer.close()
    got = len(capture.get("sys_enter").get("id", []))
    assert capture.lost_events > 100000
    assert got + capture.lost_events == 200000


@pytest.mark.kernel
def test_nothing_is_left_after_an_exception(root_tracefs: None) -> None:
    before = instances()
    with pytest.raises(ContendError, match="no event"), tf.Instance(buffer_kb=64) as inst:
        inst.enable("sched", "sched_switch")
        inst.enable("sched", "no_such_event")
    assert instances() == before


# --- the analysis and the Perfetto file on a hand-made capture (fake clock) --------------


def synthetic_capture() -> tf.Capture:
    """CPU 0: idle -> A(10) at 0; A preempted by B(20) at 100; B -> A at 300; A sleeps at
    400. A is woken at 500 and runs on CPU 1 until 900, its switch from idle unrecorded
    (as this VM's kernel does on CPU 1)."""

    def col(*values: object, dtype: str = "<i8") -> np.ndarray:  # type: ignore[type-arg]
        return np.array(values, dtype=dtype)

    switch = {
        "ts": col(0, 100, 300, 400, 900), "cpu": col(0, 0, 0, 0, 1, dtype="<i2"),
        "common_pid": col(0, 10, 20, 10, 10),
        "prev_pid": col(0, 10, 20, 10, 10), "prev_state": col(0, 0, 0, 1, 1),
        "next_pid": col(10, 20, 10, 0, 0),
        "prev_comm": col(b"swapper/0", b"a", b"b", b"a", b"a", dtype="S16"),
        "next_comm": col(b"a", b"b", b"a", b"swapper/0", b"swapper/1", dtype="S16"),
    }  # fmt: skip
    wakeup = {"ts": col(500), "cpu": col(1, dtype="<i2"), "common_pid": col(20),
              "pid": col(10), "target_cpu": col(1)}  # fmt: skip
    return tf.Capture({"sched_switch": switch, "sched_wakeup": wakeup}, {0: 0, 1: 0})


def test_slices_waits_and_who_held_the_cpu() -> None:
    from contend.monitors import timeline as tl

    capture = synthetic_capture()
    tasks = tl.learn_tasks(capture, tl.Tasks(tgid={10: 10}, targets={10}))
    slices = tl.on_cpu(capture, tasks)
    assert sorted(zip(slices.start.tolist(), slices.end.tolist(), strict=True)) == [
        (0, 100), (300, 400), (500, 900)]  # fmt: skip
    assert slices.inferred == 1
    rows, preemptors = tl.cpu_rows(capture, tasks, slices)
    a = next(r for r in rows if r.tid == 10)
    assert (a.on_cpu_ns, a.slices, a.voluntary_switches, a.involuntary_switches) == (600, 3, 2, 1)
    assert a.wakeups == 1 and a.run_queue_latency.count == 2
    assert a.run_queue_latency.avg_ns == 100.0  # (200 + 0) / 2
    # Every wait is known: each thread's percentiles are exact (numpy's linear rule).
    assert (a.run_queue_latency.p50_ns, a.run_queue_latency.p99_ns) == (100.0, 198.0)
    assert sum(b.count for b in a.run_queue_latency.hist) == 2
    assert sum(b.count for b in a.slice_hist) == 3
    assert [(p.pid, p.comm, p.count) for p in preemptors] == [(20, "b", 1)]
    occ = tl.occupancy(capture, slices)
    longest, behind = tl.waits_behind(slices, occ, tasks)
    assert (longest[0].wait_ns, longest[0].ts_ns, longest[0].cpu) == (200, 100, 0)
    assert [(o.comm, o.tid, o.ns) for o in longest[0].ran] == [("b", 20, 200)]
    assert [(o.tid, o.ns) for o in behind] == [(20, 200)]


def test_a_slice_back_from_throttling_starts_at_its_first_runtime_update() -> None:
    """A(10) on CPU 1 is throttled (switched out runnable to idle) at 1000 and comes back
    with no wakeup and no recorded switch-in; sched_stat_runtime at 1250 says it had run
    50 ns: the slice is 1200-1400 and the wait 1000-1200, not 1000-1400 and 0."""
    from contend.monitors import timeline as tl

    def col(*values: object, dtype: str = "<i8") -> np.ndarray:  # type: ignore[type-arg]
        return np.array(values, dtype=dtype)

    switch = {
        "ts": col(1000, 1400), "cpu": col(1, 1, dtype="<i2"), "common_pid": col(10, 10),
        "prev_pid": col(10, 10), "prev_state": col(0, 0), "next_pid": col(0, 0),
        "prev_comm": col(b"a", b"a", dtype="S16"),
        "next_comm": col(b"swapper/1", b"swapper/1", dtype="S16"),
    }  # fmt: skip
    runtime = {"ts": col(990, 1250, 1399), "cpu": col(1, 1, 1, dtype="<i2"),
               "common_pid": col(10, 10, 10), "pid": col(10, 10, 10),
               "runtime": col(400, 50, 149)}  # fmt: skip
    # The first record of CPU 1 is a switch-out too: from its runtime, that slice began
    # at 990 - 400; without runtime events its start is unknown and it is left out.
    for events, expected, exactly, wait in (
        ({"sched_switch": switch, "sched_stat_runtime": runtime},
         [(590, 1000), (1200, 1400)], 2, 200),
        ({"sched_switch": switch}, [(1000, 1400)], 0, 0),  # without them: the bound
    ):  # fmt: skip
        capture = tf.Capture(events, {0: 0, 1: 0})
        tasks = tl.learn_tasks(capture, tl.Tasks(tgid={10: 10}, targets={10}))
        slices = tl.on_cpu(capture, tasks)
        pairs = sorted(zip(slices.start.tolist(), slices.end.tolist(), strict=True))
        assert pairs == expected
        assert (slices.inferred, slices.inferred_exactly) == (len(expected), exactly)
        waits = (slices.wait_end - slices.wait_start).tolist()
        assert waits == [wait]


def test_first_event_after_each_query_packed_and_not() -> None:
    from contend.monitors import timeline as tl

    rng = np.random.default_rng(7)
    ev_tid = rng.integers(1, 6, 400)
    ev_ts = rng.integers(0, 1000, 400)
    q_tid = rng.integers(1, 7, 300)
    q_ts = rng.integers(-5, 1005, 300)

    pairs = list(zip(ev_tid.tolist(), ev_ts.tolist(), strict=True))
    queries = list(zip(q_tid.tolist(), q_ts.tolist(), strict=True))
    first_after = [min((s for e, s in pairs if e == t and s > q), default=-1) for t, q in queries]
    latest_before = [max((s for e, s in pairs if e == t and s < q), default=-1) for t, q in queries]
    assert any(v == -1 for v in first_after) and any(v == -1 for v in latest_before)

    at = tl._first_after(ev_tid, ev_ts, q_tid, q_ts)
    assert np.where(at >= 0, ev_ts[at], -1).tolist() == first_after
    assert tl._latest_before(ev_tid, ev_ts, q_tid, q_ts).tolist() == latest_before
    # Task ids too large to pack with 2^62 ns of time: the lexsort path.
    big, wide, scale = ev_tid + (1 << 40), ev_ts * (1 << 30), 1 << 30
    at = tl._first_after(big, wide, q_tid + (1 << 40), q_ts * scale)
    assert np.where(at >= 0, wide[at], -1).tolist() == [
        -1 if v < 0 else v * scale for v in first_after
    ]
    wide_before = tl._latest_before(big, wide, q_tid + (1 << 40), q_ts * scale)
    assert wide_before.tolist() == [-1 if v < 0 else v * scale for v in latest_before]


def test_waits_pair_the_latest_start_with_the_next_end_packed_and_not() -> None:
    from contend.monitors import timeline as tl

    rng = np.random.default_rng(11)
    n = 2000
    tid = rng.integers(1, 8, n)
    ts = rng.integers(0, 400, n)  # many ties of one task at one time
    kind = rng.integers(0, 4, n)
    cpu = np.where(kind >= tl.SWITCH_IN, rng.integers(0, 4, n), -1)
    # By hand: per task, events in (time, kind) order; an end right after a start closes
    # the wait from that start (the latest one), any other end closes none.
    want = []
    for t in sorted(set(tid.tolist())):
        own = sorted((int(s), int(k), int(c)) for i, s, k, c in zip(tid, ts, kind, cpu, strict=True)
                     if i == t)  # fmt: skip
        for (s0, k0, _), (s1, k1, c1) in itertools.pairwise(own):
            if k0 < tl.SWITCH_IN <= k1:
                want.append((t, s0, s1, c1))
    assert len(want) > 100
    got = tl._pair_waits(tid, ts, kind, cpu)
    assert sorted(zip(*(a.tolist() for a in got), strict=True)) == sorted(want)
    wide = tl._pair_waits(tid + (1 << 61), ts, kind, cpu)  # does not pack: the lexsort path
    assert sorted(zip(*(a.tolist() for a in wide), strict=True)) == sorted(
        (t + (1 << 61), s0, s1, c1) for t, s0, s1, c1 in want
    )


def test_syscall_rows_keep_any_number_with_its_pid() -> None:
    """-1 and numbers past 4095 (x32's bit 30) stay with their pid, not a neighbour's."""
    from contend.monitors import timeline as tl

    def col(*values: int) -> np.ndarray:  # type: ignore[type-arg]
        return np.array(values, dtype=np.int64)

    calls = tl.Calls(
        tid=col(100, 100, 100), nr=col(-1, 4097, 0x40000001), arg0=col(0, 0, 0),
        enter=col(10, 20, 30), exit=col(11, 21, 31), ret=col(0, 0, 0),
    )  # fmt: skip
    tasks = tl.Tasks(tgid={100: 100}, comm={100: "x"}, targets={100})
    rows = tl.syscall_rows(calls, tasks, set(), "x86_64")
    assert sorted(r.pid for r in rows) == [100, 100, 100]
    assert all(r.count == 1 and r.total_ns == 1 for r in rows)


def test_occupancy_keeps_integer_stamps_without_inferred_slices() -> None:
    """Nanosecond stamps past 2^53 (104 days of uptime) survive: no float64 on the way."""
    from contend.monitors import timeline as tl

    base = (1 << 53) + 1
    switch = {
        "ts": np.array([base, base + 2, base + 4], dtype=np.int64),
        "cpu": np.zeros(3, dtype=np.int16), "common_pid": np.array([0, 10, 20], np.int32),
        "prev_pid": np.array([0, 10, 20], np.int32), "prev_state": np.zeros(3, np.int64),
        "next_pid": np.array([10, 20, 0], np.int32),
        "prev_comm": np.array([b"swapper/0", b"a", b"b"], dtype="S16"),
        "next_comm": np.array([b"a", b"b", b"swapper/0"], dtype="S16"),
    }  # fmt: skip
    capture = tf.Capture({"sched_switch": switch}, {0: 0})
    tasks = tl.learn_tasks(capture, tl.Tasks(everyone=True))
    slices = tl.on_cpu(capture, tasks)
    assert slices.inferred == 0
    occ = tl.occupancy(capture, slices)
    assert occ.start.dtype == np.int64
    assert list(zip(occ.tid.tolist(), occ.start.tolist(), occ.end.tolist(), strict=True)) == [
        (10, base, base + 2), (20, base + 2, base + 4)]  # fmt: skip


def test_perfetto_document_follows_the_format() -> None:
    import json

    from contend.monitors import timeline as tl
    from contend.render import perfetto

    capture = synthetic_capture()
    tasks = tl.learn_tasks(capture, tl.Tasks(tgid={10: 10}, targets={10}))
    slices = tl.on_cpu(capture, tasks)
    occ = tl.occupancy(capture, slices)
    doc = json.loads(perfetto.render(tl.build_timeline(capture, tasks, slices, occ)))
    events = doc["traceEvents"]
    thread_x = [(e["ts"], e["dur"], e["args"]["cpu"]) for e in events
                if e["ph"] == "X" and e["tid"] == 10]  # fmt: skip
    assert thread_x == [(0.0, 0.1, 0), (0.3, 0.1, 0), (0.5, 0.4, 1)]  # microseconds
    cpu_x = [(e["tid"] - perfetto.CPU_TID_BASE, e["name"], e["ts"]) for e in events
             if e["ph"] == "X" and e["pid"] == perfetto.CPUS_PID]  # fmt: skip
    assert cpu_x == [(0, "a 10", 0.0), (0, "b 20", 0.1), (0, "a 10", 0.3), (1, "a 10", 0.5)]
    meta = {(e["name"], e["args"].get("name")) for e in events if e["ph"] == "M"}
    assert {("process_name", "a 10"), ("thread_name", "a 10"), ("thread_name", "CPU 0"),
            ("thread_name", "CPU 1")} <= meta  # fmt: skip
    (wake,) = [e for e in events if e["ph"] == "i"]
    assert (wake["ts"], wake["s"], wake["args"]["waker"]) == (0.5, "t", "b 20")
    counters = [(e["name"], e["ts"], e["args"]["waiting"]) for e in events if e["ph"] == "C"]
    assert ("runnable target threads, CPU 0", 0.1, 1.0) in counters
    assert ("runnable target threads, CPU 0", 0.3, 0.0) in counters
