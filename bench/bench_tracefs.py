"""The tracefs backend's speed, side by side in one run.

1. Decoding: real sched_switch pages captured here, replicated (timestamps shifted) to
   N records, decoded by the plain-Python struct reference and by the numpy path
   (header walk + vectorised field gathering + cross-CPU merge). Events/s, and the ratio.
2. A session of `--analyse` records (default 10M) of the cpu monitor's events, made of
   real pages replicated: decoded in batches as a run decodes them, analysed (slices,
   waits, occupancy, the longest waits), saved, then `contend report FILE` on it in a
   fresh process, timed end to end (it diagnoses the session too, as `diagnose` does).
3. At the issue's event rate: a pipe ping-pong paced to 11k round trips/s, then to 20k
   (about 60k events/s in all); `contend trace cpu --backend tracefs` on it: its
   CPU time (% of one core; while tracing, and in all), events, losses; then `perf sched
   record -a` on the same workload for the same time: perf's CPU, and the time `perf
   sched timehist` takes to analyse what it wrote.

Run as root:  .venv/bin/python bench/bench_tracefs.py [--records 2000000] [--analyse 10000000]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from contend.collect import tracefs as tf
from contend.monitors import session as sessions
from contend.monitors import timeline as tl
from contend.monitors import tracefs_trace as tt

print = functools.partial(print, flush=True)

FIELDS = ("prev_comm", "prev_pid", "prev_state", "next_comm", "next_pid")
PING_PONG = """
import os, sys, time
rate = float(sys.argv[1])  # round trips per second
r1, w1 = os.pipe(); r2, w2 = os.pipe()
if os.fork() == 0:
    os.close(w1); os.close(r2)
    while True:
        b = os.read(r1, 1)
        if not b:
            os._exit(0)
        os.write(w2, b)
print(os.getpid(), flush=True)
per_tick = max(1, int(rate / 100))
t = time.monotonic()
while True:
    for _ in range(per_tick):
        os.write(w1, b"x"); os.read(r2, 1)
    t += 0.01
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)
"""


def ping_pong(rate: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", PING_PONG, str(rate)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(pp: subprocess.Popen[bytes]) -> None:
    """The ping-pong's two processes: its own session, ended as one group."""
    try:
        os.killpg(pp.pid, 9)
    except ProcessLookupError:
        pass
    pp.wait()


def capture(seconds: float) -> tuple[list[bytes], list[int], tf.PageHeader, tf.EventFormat]:
    """Every sched_switch of the machine for `seconds`, under an unpaced ping-pong."""
    pp = ping_pong(1e9)
    pages: list[bytes] = []
    cpus: list[int] = []
    try:
        with tf.Instance(buffer_kb=65536) as inst:
            inst.enable("sched", "sched_switch")
            inst.start()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(0.1)
                p, c = inst.read_pages()
                pages += p
                cpus += c
            inst.stop()
            p, c = inst.read_pages()
            pages += p
            cpus += c
            assert inst.header is not None
            return pages, cpus, inst.header, inst.format("sched", "sched_switch")
    finally:
        stop(pp)


def replicate(
    pages: list[bytes], cpus: list[int], header: tf.PageHeader, records: int, per_copy: int
) -> tuple[list[bytes], list[int]]:
    """Copies of the captured pages, each copy's timestamps shifted past the previous."""
    stamps = [struct.unpack_from("<Q", p, header.timestamp.offset)[0] for p in pages]
    span = max(stamps) - min(stamps) + 10_000_000
    out: list[bytes] = []
    out_cpus: list[int] = []
    copies = max(1, -(-records // max(per_copy, 1)))
    for k in range(copies):
        for page, cpu, ts in zip(pages, cpus, stamps, strict=True):
            b = bytearray(page)
            struct.pack_into("<Q", b, header.timestamp.offset, ts + k * span)
            out.append(bytes(b))
            out_cpus.append(cpu)
    return out, out_cpus


def bench_decode(
    pages: list[bytes], cpus: list[int], header: tf.PageHeader, fmt: tf.EventFormat
) -> dict[str, float]:
    t = time.perf_counter()
    _, offsets, _, _ = tf.walk_pages(pages, header)
    walk_s = time.perf_counter() - t
    n = len(offsets)
    t = time.perf_counter()
    cols = tf.columns(tf.decode(pages, cpus, header), fmt, FIELDS)
    numpy_s = time.perf_counter() - t
    t = time.perf_counter()
    rows = tf.decode_struct(pages, cpus, header, fmt, FIELDS)
    struct_s = time.perf_counter() - t
    assert len(rows) == len(cols["ts"]) == n
    return {"records": n, "walk": n / walk_s, "numpy": n / numpy_s, "struct": n / struct_s}


def capture_cpu_events(seconds: float) -> tuple[list[bytes], list[int], tf.Instance]:
    """Every event the cpu monitor records, machine-wide, for `seconds` under an unpaced
    ping-pong: the pages, and the (closed) instance whose formats decode them."""
    pp = ping_pong(1e9)
    pages: list[bytes] = []
    cpus: list[int] = []
    tracer = tf.Tracer(tt.event_specs(("cpu",)), buffer_kb=65536)
    try:
        tracer.open(follow=None)
        tracer.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.1)
            p, c = tracer.instance.read_pages()
            pages += p
            cpus += c
        tracer.instance.stop()
        p, c = tracer.instance.read_pages()
        return pages + p, cpus + c, tracer.instance
    finally:
        tracer.close()
        stop(pp)


def bench_session(records: int, directory: Path) -> dict[str, float]:
    """A `records`-event session of the cpu monitor's events (switches, wakeups, runtime
    updates), decoded in batches as a run decodes them, analysed in this process, saved;
    then `contend report FILE` on it in a fresh process, timed end to end."""
    pages, cpus, inst = capture_cpu_events(1.0)
    assert inst.header is not None
    per_copy = len(tf.walk_pages(pages, inst.header)[1])
    pages, cpus = replicate(pages, cpus, inst.header, records, per_copy)
    specs = [s for s in tt.event_specs(("cpu",)) if inst.has_event(s.system, s.name)]
    t = time.perf_counter()
    batch = 2 * tf.DEFAULT_BUFFER_KB * 1024 // inst.header.page_size
    chunks: dict[str, list[tf.Columns]] = {s.name: [] for s in specs}
    n = 0
    for i in range(0, len(pages), batch):
        recs = tf.decode(pages[i : i + batch], cpus[i : i + batch], inst.header)
        n += len(recs)
        for s in specs:
            fmt = inst.format(s.system, s.name)
            if np.any(recs.type_id == fmt.id):
                chunks[s.name].append(tf.columns(recs, fmt, s.fields))
    del pages, cpus
    events = {name: tf.merge(c) for name, c in chunks.items() if c}
    del chunks
    decode_s = time.perf_counter() - t
    capture = tf.Capture(events, {0: 0, 1: 0}, records=n)
    t = time.perf_counter()
    run = tt.analyse(("cpu",), capture, tl.Tasks(everyone=True))
    analyse_s = time.perf_counter() - t
    path = directory / "big.session"
    t = time.perf_counter()
    sessions.save(run, path)
    save_s = time.perf_counter() - t
    del run, capture, events
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "contend", "report", str(path), "--format", "json", "-o",
         str(directory / "big.json")],
        capture_output=True, text=True,
    )  # fmt: skip
    report_s = time.perf_counter() - t
    assert done.returncode == 0, done.stderr
    doc = json.loads((directory / "big.json").read_text())
    assert doc["diagnosis"]["schema"] == "contend.diagnosis/1"  # report diagnoses it too
    return {"records": n, "decode_s": decode_s, "analyse_s": analyse_s, "save_s": save_s,
            "report_s": report_s, "mb": path.stat().st_size / 1e6}  # fmt: skip


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench_rate(rate: float, seconds: float) -> dict[str, object]:
    """contend and perf sched on the same paced ping-pong."""
    pp = ping_pong(rate)
    assert pp.stdout is not None
    parent = int(pp.stdout.readline())
    out: dict[str, object] = {}
    try:
        time.sleep(0.5)
        child = [int(t) for t in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        done = subprocess.run(
            [sys.executable, "-m", "contend", "trace", "cpu", "--backend", "tracefs",
             "--pid", str(parent), *[a for c in child for a in ("--pid", str(c))],
             "--duration", str(seconds), "--format", "json"],
            capture_output=True, text=True, timeout=seconds + 120,
        )  # fmt: skip
        result = json.loads(done.stdout)
        cpu_s = result["overhead"]["tracer_cpu_s"]
        out["contend"] = {
            "events": result["overhead"]["events"],
            "events_per_s": result["overhead"]["events"] / result["duration_s"],
            "tracer_cpu_s": cpu_s,
            "core_pct": 100 * cpu_s / result["duration_s"],
            "lost": result["lost_events"],
            "split": next(n for n in result["notes"] if n.startswith("tracefs: tracer CPU")),
        }
        if shutil.which("perf"):
            with tempfile.TemporaryDirectory() as tmp:
                data = Path(tmp) / "perf.data"
                before = children_cpu()
                rec = subprocess.run(
                    ["perf", "sched", "record", "-a", "-o", str(data), "--", "sleep", str(seconds)],
                    capture_output=True, text=True,
                )  # fmt: skip
                record_cpu = children_cpu() - before
                t = time.perf_counter()
                before = children_cpu()
                hist = subprocess.run(
                    ["perf", "sched", "timehist", "-i", str(data)], capture_output=True, text=True
                )
                timehist_s = time.perf_counter() - t
                timehist_cpu = children_cpu() - before
                lines = hist.stdout.count("\n")
                out["perf"] = {
                    "record_cpu_s": record_cpu,
                    "core_pct": 100 * record_cpu / seconds,
                    "data_mb": data.stat().st_size / 1e6 if data.exists() else 0,
                    "timehist_s": timehist_s,
                    "timehist_cpu_s": timehist_cpu,
                    "timehist_lines": lines,
                    "record_note": (rec.stderr.strip().splitlines() or [""])[-1],
                }
    finally:
        stop(pp)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--analyse", type=int, default=10_000_000)
    ap.add_argument(
        "--rates", default="11000,20000",
        help="ping-pong round trips/s, comma-separated (20k: about 60k events/s in all)",
    )  # fmt: skip
    ap.add_argument("--only-rate", action="store_true", help="only the lab's rate")
    ap.add_argument("--only-session", action="store_true", help="only the session")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_tracefs: run as root")
    rates = [float(r) for r in args.rates.split(",")]
    if args.only_rate:
        for rate in rates:
            report_rate(rate, args.seconds)
        return
    if args.only_session:
        report_session(args.analyse)
        return
    pages, cpus, header, fmt = capture(1.0)
    per_copy = len(tf.walk_pages(pages, header)[1])
    print(f"captured {len(pages)} pages, {per_copy} sched_switch records")

    big, big_cpus = replicate(pages, cpus, header, args.records, per_copy)
    d = bench_decode(big, big_cpus, header, fmt)
    print(f"\n== decoding {d['records']:,.0f} sched_switch records (one core) ==")
    print(f"  struct (plain Python, merged)   {d['struct'] / 1e6:6.2f} M events/s")
    print(f"  numpy  (walk + gather + merge)  {d['numpy'] / 1e6:6.2f} M events/s"
          f"   ratio {d['numpy'] / d['struct']:.1f}x")  # fmt: skip
    print(f"  header walk alone               {d['walk'] / 1e6:6.2f} M events/s")
    del big, big_cpus

    del pages, cpus
    report_session(args.analyse)
    for rate in rates:
        report_rate(rate, args.seconds)


def report_session(records: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        a = bench_session(records, Path(tmp))
    print(f"\n== a {a['records'] / 1e6:.1f}M-event session (cpu monitor's events) ==")
    print(f"  while recording: decoded in batches in {a['decode_s']:.1f} s")
    print(f"  at the end of the run: analysed in {a['analyse_s']:.1f} s, saved in "
          f"{a['save_s']:.1f} s ({a['mb']:.0f} MB)")  # fmt: skip
    print(
        "  contend report FILE (fresh process: load + analyse + diagnose + JSON): "
        f"{a['report_s']:.1f} s"
    )


def report_rate(rate: float, seconds: float) -> None:
    r = bench_rate(rate, seconds)
    c = r["contend"]
    assert isinstance(c, dict)
    print(f"\n== ping-pong at {rate:,.0f} round trips/s, {seconds:.0f} s ==")
    print(f"  contend tracefs: {c['events_per_s']:,.0f} events/s, tracer CPU {c['tracer_cpu_s']:.2f} s"
          f" = {c['core_pct']:.1f}% of one core, {c['lost']} lost ({c['split']})")  # fmt: skip
    reading = float(str(c["split"]).split("CPU ")[1].split(" s")[0])
    print(f"  of which while tracing (setting up, reading, decoding): {100 * reading / seconds:.1f}%"
          " of one core; the rest is the analysis at the end")  # fmt: skip
    p = r.get("perf")
    if isinstance(p, dict):
        print(f"  perf sched record -a: CPU {p['record_cpu_s']:.2f} s = {p['core_pct']:.1f}% of one "
              f"core, {p['data_mb']:.1f} MB ({p['record_note']})")  # fmt: skip
        print(f"  perf sched timehist: {p['timehist_s']:.2f} s for {p['timehist_lines']:,} lines")
        analysing = c["tracer_cpu_s"] - reading
        print(f"  analysis at the end: contend {analysing:.2f} s CPU vs perf sched timehist "
              f"{p['timehist_cpu_s']:.2f} s CPU")  # fmt: skip
        print(
            f"  ratio tracer CPU contend/perf record: {c['tracer_cpu_s'] / max(p['record_cpu_s'], 1e-9):.2f}"
        )


if __name__ == "__main__":
    main()
