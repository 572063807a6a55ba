"""Session files: every decoded event of a tracefs run, saved to be analysed later (on
any machine) through the same code path as a live run (`tracefs_trace.analyse`).

Format ``contend.session/1``: a NumPy ``.npz`` archive (zip, deflate) holding one array
per event column, named ``EVENT/COLUMN``, and ``meta``: UTF-8 JSON with the schema, the
monitors, the target, the run's duration, exit status and notes, the records lost per
CPU, every task's tgid and name as known at the end of the run, the initial target
tasks, the paths of opened files read from /proc during the run, and the machine
(`platform.machine()`: its syscall numbers are used to name the calls).

Changelog: contend.session/1 (0.1.0): first version; (0.3.0) additive: `around`, what
`record` read around the events (the window, the threads asleep at its start, the
cgroups of the target's tasks at the start and the end, their samples, every process's
CPU time), so that `report` diagnoses the file as `diagnose` did live.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from contend.collect.tracefs import Capture, Columns
from contend.errors import ContendError
from contend.model import Observation, SchemaError, from_dict
from contend.monitors import MONITORS
from contend.monitors import timeline as tl
from contend.monitors.tracefs_trace import TracefsRun, analyse

SCHEMA_SESSION = "contend.session/1"


def save(run: TracefsRun, path: Path) -> None:
    arrays: dict[str, Any] = {}
    for event, cols in run.capture.events.items():
        for name, values in cols.items():
            if values.dtype == object:
                values = values.astype(str)
            arrays[f"{event}/{name}"] = values
    r = run.result
    meta = {
        "schema": SCHEMA_SESSION,
        "monitors": list(r.monitors),
        "target": r.target,
        "duration_s": r.duration_s,
        "exit_status": r.exit_status,
        "notes": [
            n
            for n in r.notes
            if not n.startswith(("cpu:", "io:", "tracefs: events lost"))
            and "events were lost" not in n
        ],
        "lost_by_cpu": {str(c): n for c, n in run.capture.lost_by_cpu.items()},
        "records": run.capture.records,
        "tracer_cpu_s": r.overhead.tracer_cpu_s,
        "machine": platform.machine(),  # syscall numbers differ by architecture
        "everyone": run.tasks.everyone,
        "by_comm": run.tasks.by_comm,
        "targets": sorted(run.tasks.targets),
        "tgid": {str(t): p for t, p in run.tasks.tgid.items()},
        "comm": {str(t): c for t, c in run.tasks.comm.items()},
        "paths": [[t, ts, p] for (t, ts), p in run.paths.items()],
    }
    if run.around is not None:
        meta["around"] = dataclasses.asdict(
            dataclasses.replace(run.around, sched_times=None, syscalls=None)
        )
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    try:
        # What np.savez_compressed writes, at deflate level 1: 3.4x faster on 10M events
        # (1.5 vs 5.1 s), 17% larger; np.load reads it the same.
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, values in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(values), allow_pickle=False)
    except OSError as e:
        raise ContendError(f"cannot write {path}: {e.strerror}") from None


def load(path: Path) -> TracefsRun:
    try:
        capture, tasks, paths, meta = _read(path)
    except ContendError:
        raise
    except Exception as e:  # a damaged file can fail anywhere in zip, npy or JSON
        raise ContendError(f"{path}: not a contend session file ({type(e).__name__})") from None
    try:
        run = analyse(tuple(meta["monitors"]), capture, tasks, paths, meta.get("machine"))
    except (IndexError, KeyError, ValueError, TypeError) as e:
        # Columns the analysis needs are missing or do not fit together.
        raise ContendError(
            f"{path}: not a consistent contend session ({type(e).__name__})"
        ) from None
    if isinstance(meta.get("around"), dict):
        run.around = _around(meta["around"], path)
    run.result = dataclasses.replace(
        run.result,
        target=str(meta["target"]),
        duration_s=float(meta["duration_s"]),
        exit_status=meta["exit_status"],
        notes=(*meta["notes"], *run.result.notes),
        overhead=dataclasses.replace(run.result.overhead, tracer_cpu_s=meta["tracer_cpu_s"]),
    )
    return run


def _read(
    path: Path,
) -> tuple[Capture, tl.Tasks, dict[tuple[int, int], str], dict[str, Any]]:
    """The file's events and metadata, checked: every column read (CRCs), each event's
    columns of one length, integer stamps, the metadata's types."""
    archive = np.load(path, allow_pickle=False)
    meta = json.loads(bytes(archive["meta"]).decode())
    if not isinstance(meta, dict):
        raise ValueError("meta is not an object")
    if meta.get("schema") != SCHEMA_SESSION:
        raise ContendError(f"{path}: schema {meta.get('schema')!r}, expected {SCHEMA_SESSION}")
    events: dict[str, Columns] = {}
    for key in archive.files:
        if "/" in key:
            event, name = key.split("/", 1)
            events.setdefault(event, {})[name] = archive[key]
    for event, cols in events.items():
        if len({len(c) for c in cols.values()}) != 1 or "ts" not in cols:
            raise ValueError(f"{event}: columns of different lengths")
        if cols["ts"].dtype.kind not in "iu":
            raise ValueError(f"{event}: timestamps are not integers")
    monitors = tuple(str(m) for m in meta["monitors"])
    if not monitors or not set(monitors) <= set(MONITORS):
        raise ValueError("unknown monitors")
    duration = float(meta["duration_s"])
    if not duration >= 0:
        raise ValueError("negative duration")
    if not isinstance(meta["notes"], list):
        raise ValueError("notes")
    capture = Capture(
        events,
        {int(c): int(n) for c, n in dict(meta["lost_by_cpu"]).items()},
        records=int(meta["records"]),
    )
    tasks = tl.Tasks(
        tgid={int(t): int(p) for t, p in dict(meta["tgid"]).items()},
        comm={int(t): str(c) for t, c in dict(meta["comm"]).items()},
        targets={int(t) for t in meta["targets"]},
        everyone=bool(meta["everyone"]),
        by_comm=meta.get("by_comm"),
        resolve=None,  # another machine: its /proc says nothing about these tasks
    )
    paths = {(int(t), int(ts)): str(p) for t, ts, p in meta["paths"]}
    return capture, tasks, paths, meta


def _around(d: dict[str, Any], path: Path) -> Observation:
    """What `record` read around the events (JSON keys of pid maps are strings)."""
    try:
        obs = from_dict(Observation, d)
        return dataclasses.replace(
            obs,
            task_cgroups={int(k): str(v) for k, v in obs.task_cgroups.items()},
            roles={int(k): str(v) for k, v in obs.roles.items()},
            asleep={int(k): int(v) for k, v in obs.asleep.items()},
        )
    except (SchemaError, KeyError, TypeError, ValueError) as e:
        raise ContendError(
            f"{path}: not a consistent contend session ({type(e).__name__})"
        ) from None
