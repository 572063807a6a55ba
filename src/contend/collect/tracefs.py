"""The tracefs backend: direct ftrace, every event, decoded from binary ring-buffer pages.

What the kernel documents and this module follows:
- Documentation/trace/ftrace.rst: instances (``mkdir instances/NAME`` gives a private
  ring buffer with its own events, ``trace_clock``, ``buffer_size_kb``, ``set_event_pid``
  and ``options/event-fork``, removed with ``rmdir``), ``per_cpu/cpuN/trace_pipe_raw``
  (consuming reads of whole ring-buffer pages) and ``per_cpu/cpuN/stats``.
- Documentation/trace/events.rst: ``events/SYSTEM/EVENT/{enable,filter,format}``.
- ``events/header_page`` and ``events/header_event`` describe the page and record headers;
  kernel/trace/ring_buffer.c (``rb_event_length``, ``rb_update_event``) the record walk,
  as tools/lib/traceevent's kbuffer.c reads it:

  ``type_len`` (5 bits) + ``time_delta`` (27 bits), then
  0: length in the next u32 (which it counts), data after it;
  1..28: data of ``type_len * 4`` bytes; 29: padding (delta 0: the rest of the page);
  30: time extend (``array[0] << 27 | delta``); 31: absolute time stamp.

No offset is hard-coded: event fields come from each event's ``format`` file, the page
layout from ``header_page``. Nothing here prints; OS errors become ``ContendError``.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from contend.errors import ContendError, PermissionNeeded
from contend.target import ftrace_string

TRACEFS = Path("/sys/kernel/tracing")
INSTANCE_PREFIX = "contend-"
_INSTANCE_RE = re.compile(r"^contend-(\d+)$")
DEFAULT_BUFFER_KB = 4096  # per CPU: ~64k sched_switch records, 1 s at 60k events/s/CPU


# --- format files: pure parsers ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a record: ``field:DECL; offset:N; size:N; signed:N;``."""

    name: str
    offset: int
    size: int
    signed: bool
    decl: str = ""

    @property
    def data_loc(self) -> bool:
        # __data_loc: a u32 holding (length << 16 | offset from the record start).
        return self.decl.startswith("__data_loc")

    @property
    def is_string(self) -> bool:
        return "char" in self.decl and "[" in self.decl and not self.data_loc


@dataclass(frozen=True, slots=True)
class EventFormat:
    system: str
    name: str
    id: int
    fields: dict[str, Field]

    def field(self, name: str) -> Field:
        try:
            return self.fields[name]
        except KeyError:
            raise ContendError(f"tracefs: event {self.name} has no field {name!r}") from None


_FIELD_RE = re.compile(
    r"field:\s*(?P<decl>[^;]*?)\s*;\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
    r"(?:\s*signed:(?P<signed>\d+);)?"
)


def _field_name(decl: str) -> str:
    # "char prev_comm[16]" -> prev_comm; "__data_loc char[] filename" -> filename.
    words = re.sub(r"\[[^\]]*\]", "", decl).split()
    return words[-1].lstrip("*") if words else ""


def parse_fields(text: str) -> dict[str, Field]:
    out: dict[str, Field] = {}
    for m in _FIELD_RE.finditer(text):
        decl = m["decl"]
        name = _field_name(decl)
        out[name] = Field(name, int(m["offset"]), int(m["size"]), m["signed"] == "1", decl)
    return out


def parse_format(text: str, system: str = "") -> EventFormat:
    """An ``events/SYSTEM/EVENT/format`` file."""
    name = re.search(r"^name:\s*(\S+)", text, re.MULTILINE)
    ident = re.search(r"^ID:\s*(\d+)", text, re.MULTILINE)
    if name is None or ident is None:
        raise ContendError("tracefs: an event format file without name or ID")
    return EventFormat(system, name[1], int(ident[1]), parse_fields(text))


@dataclass(frozen=True, slots=True)
class PageHeader:
    """``events/header_page``: where a page's timestamp, commit and data are."""

    timestamp: Field
    commit: Field
    data: Field

    @property
    def page_size(self) -> int:
        return self.data.offset + self.data.size


def parse_header_page(text: str) -> PageHeader:
    fields = parse_fields(text)
    try:
        return PageHeader(fields["timestamp"], fields["commit"], fields["data"])
    except KeyError as e:
        raise ContendError(f"tracefs: header_page lacks {e.args[0]}") from None


@dataclass(frozen=True, slots=True)
class EventHeader:
    """``events/header_event``: the record header's bit split and special type values."""

    type_len_bits: int = 5
    time_delta_bits: int = 27
    padding: int = 29
    time_extend: int = 30
    time_stamp: int = 31
    data_max: int = 28


def parse_header_event(text: str) -> EventHeader:
    def num(pattern: str, default: int) -> int:
        m = re.search(pattern, text)
        return int(m[1]) if m else default

    return EventHeader(
        type_len_bits=num(r"type_len\s*:\s*(\d+)\s*bits", 5),
        time_delta_bits=num(r"time_delta\s*:\s*(\d+)\s*bits", 27),
        padding=num(r"padding\s*:\s*type\s*==\s*(\d+)", 29),
        time_extend=num(r"time_extend\s*:\s*type\s*==\s*(\d+)", 30),
        time_stamp=num(r"time_stamp\s*:\s*type\s*==\s*(\d+)", 31),
        data_max=num(r"data max type_len\s*==\s*(\d+)", 28),
    )


def parse_stats(text: str) -> dict[str, int]:
    """``per_cpu/cpuN/stats``: ``overrun: 3`` lines; the float ``ts`` lines are skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if value.isdigit():
            out[key.strip().replace(" ", "_")] = int(value)
    return out


def lost_between(start: dict[str, int], end: dict[str, int]) -> int:
    """Records the buffer lost: overwritten (overrun), dropped when full (dropped_events,
    overwrite off) or lost to a commit overrun."""
    return sum(
        end.get(k, 0) - start.get(k, 0) for k in ("overrun", "commit_overrun", "dropped_events")
    )


# --- decoding pages ---------------------------------------------------------------------

# kernel/trace/ring_buffer.c: the commit word's top bits flag events missed before the page.
_RB_MISSED_FLAGS = (1 << 31) | (1 << 30)
_TS_MSB_SHIFT = 59  # rb_fix_abs_ts(): an absolute stamp carries only the low 59 bits
I64s = npt.NDArray[np.int64]


@dataclass
class Records:
    """Records decoded from a batch of pages: each one's type id, CPU, monotonic
    timestamp and where its data starts in ``buf`` (all the pages, back to back)."""

    buf: npt.NDArray[np.uint8]
    offset: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    cpu: npt.NDArray[np.int16]
    type_id: npt.NDArray[np.uint16]

    def __len__(self) -> int:
        return len(self.offset)


_WALK_PAGES = 2048  # pages walked together: their records are reordered within cache


def _page_words(
    joined: bytes, sizes: I64s, header: PageHeader
) -> tuple[npt.NDArray[np.uint32], I64s, I64s, I64s]:
    """The pages' words, and per page: its time stamp, first data word, end of data."""
    n = len(sizes)
    base = np.zeros(n, np.int64)
    np.cumsum(sizes[:-1], out=base[1:])
    buf = np.frombuffer(joined, np.uint8)
    words = buf[: len(buf) // 4 * 4].view("<u4")
    ts = buf[base[:, None] + (header.timestamp.offset + np.arange(8))].view("<i8").ravel()
    # The commit's low 32 bits hold the length (its top bits flag missed events).
    commit = buf[base[:, None] + (header.commit.offset + np.arange(4))].view("<u4").ravel()
    length = commit.astype(np.int64) & (0xFFFFFFFF & ~_RB_MISSED_FLAGS)
    end = (base + np.minimum(header.data.offset + length, sizes)) >> 2
    return words, ts, (base + header.data.offset) >> 2, end


def walk_pages(
    pages: Sequence[bytes], header: PageHeader, ev: EventHeader = EventHeader()
) -> tuple[bytes, I64s, I64s, I64s]:
    """Walk each page's record headers. Returns the pages joined, and per data record its
    byte offset in them, its timestamp and the page's index, in page order.

    Vectorised across pages: every page of a group advances one record per step (the
    steps are as many as a page has records), so Python runs per step, not per record.
    A step where every header is a plain data record (type_len 1..28) is a few array
    operations; the others (long records, time extends, padding, absolute stamps) take
    a slower path for that step only."""
    joined = b"".join(pages)
    n = len(pages)
    empty = np.zeros(0, np.int64)
    if n == 0:
        return joined, empty, empty.copy(), empty.copy()
    sizes = np.fromiter(map(len, pages), np.int64, n)
    words, ts0, pos0, end0 = _page_words(joined, sizes, header)
    last = len(words) - 1
    bits, dbits = ev.type_len_bits, ev.time_delta_bits
    type_mask, data_max = (1 << bits) - 1, ev.data_max
    high = np.int64(-(1 << _TS_MSB_SHIFT))  # the bits an absolute stamp keeps
    out_word: list[I64s] = []
    out_ts: list[I64s] = []
    out_page: list[I64s] = []
    for lo in range(0, n, _WALK_PAGES):
        hi = min(n, lo + _WALK_PAGES)
        pos, end, ts = pos0[lo:hi], end0[lo:hi], ts0[lo:hi].copy()
        page = np.arange(lo, hi, dtype=np.int64)
        keep = pos < end
        pos, end, ts, page = pos[keep], end[keep], ts[keep], page[keep]
        rank = np.zeros(len(pos), np.int64)  # records the page gave before this step
        s_word: list[I64s] = []
        s_ts: list[I64s] = []
        s_page: list[I64s] = []
        s_rank: list[I64s] = []
        while len(pos):
            h = words[pos]
            tl = h & type_mask  # uint32; sums with int64 arrays are int64
            delta = h >> bits
            ts = ts + delta
            special = (tl == 0) | (tl > data_max)
            if not special.any():
                s_word.append(pos)
                s_ts.append(ts)
                s_page.append(page)
                s_rank.append(rank)
                rank = rank + 1
                pos = pos + tl + 1
                keep = pos < end
            else:
                after = words[np.minimum(pos + 1, last)].astype(np.int64)
                tl, delta = tl.astype(np.int64), delta.astype(np.int64)
                long = tl == 0  # length in the next word, which it counts
                rec = ~special | long
                extend = tl == ev.time_extend
                padding = tl == ev.padding
                absolute = tl == ev.time_stamp
                ts[extend] += after[extend] << dbits
                if absolute.any():
                    d = delta[absolute]
                    ts[absolute] = ((ts[absolute] - d) & high) | ((after[absolute] << dbits) + d)
                s_word.append(pos[rec] + long[rec])
                s_ts.append(ts[rec])
                s_page.append(page[rec])
                s_rank.append(rank[rec])
                rank = rank + rec
                skip = 1 + ((after + 3) >> 2)
                pos = pos + np.where(long | padding, skip, np.where(extend | absolute, 2, tl + 1))
                # A padding without delta: the rest of the page is empty.
                stop = (padding & (delta == 0)) | ~(rec | extend | padding | absolute)
                keep = (pos < end) & ~stop
            if not keep.all():
                pos, end, ts, page, rank = pos[keep], end[keep], ts[keep], page[keep], rank[keep]
        if not s_page:
            continue
        # Step order to page order: each record's place is its page's first + its rank.
        pg = np.concatenate(s_page)
        counts = np.bincount(pg - lo, minlength=hi - lo)
        first = np.zeros(hi - lo, np.int64)
        np.cumsum(counts[:-1], out=first[1:])
        dest = first[pg - lo] + np.concatenate(s_rank)
        for out, parts in ((out_word, s_word), (out_ts, s_ts)):
            ordered = np.empty(len(pg), np.int64)
            ordered[dest] = np.concatenate(parts)
            out.append(ordered)
        ordered = np.empty(len(pg), np.int64)
        ordered[dest] = pg
        out_page.append(ordered)
    if not out_word:
        return joined, empty, empty.copy(), empty.copy()
    # A record's data starts after its header word (after the length word: see above).
    offsets = (np.concatenate(out_word) + 1) << 2
    return joined, offsets, np.concatenate(out_ts), np.concatenate(out_page)


def decode(
    pages: Sequence[bytes],
    cpus: Sequence[int],
    header: PageHeader,
    ev: EventHeader = EventHeader(),
) -> Records:
    """Pages (one CPU each, ``cpus[i]``) to records; fields are then gathered with numpy."""
    joined, off, ts, page_of = walk_pages(pages, header, ev)
    buf = np.frombuffer(joined, dtype=np.uint8)
    # common_type: the low half of each record's first (4-byte aligned) word.
    type_id = (buf[: len(buf) // 4 * 4].view("<u4")[off // 4] & 0xFFFF).astype(np.uint16)
    return Records(
        buf=buf,
        offset=off,
        ts=ts,
        cpu=np.array(cpus, dtype=np.int16)[page_of] if len(off) else np.zeros(0, np.int16),
        type_id=type_id,
    )


def _dtype(f: Field) -> np.dtype[np.generic]:
    if f.is_string:
        return np.dtype(f"S{f.size}")
    kind = "i" if f.signed else "u"
    if f.size not in (1, 2, 4, 8):
        raise ContendError(f"tracefs: field {f.name} of size {f.size} is not a number")
    return np.dtype(f"<{kind}{f.size}")


def gather(
    buf: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64], f: Field
) -> npt.NDArray[np.generic]:
    """One field of every record at `offsets`, vectorised: a (records x size) fancy index
    of the bytes, viewed as the field's type."""
    if len(offsets) == 0:
        return np.zeros(0, dtype=_dtype(f))
    raw = buf[offsets[:, None] + (f.offset + np.arange(f.size))]
    values: npt.NDArray[np.generic] = raw.view(_dtype(f)).ravel()
    return values


def data_loc_strings(
    buf: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64], f: Field
) -> list[str]:
    """__data_loc strings (rare events only: exec filenames)."""
    locs = gather(buf, offsets, f).astype(np.int64)
    out = []
    for start, loc in zip(offsets.tolist(), locs.tolist(), strict=True):
        where, length = loc & 0xFFFF, loc >> 16
        raw = buf[start + where : start + where + length].tobytes()
        out.append(raw.split(b"\0", 1)[0].decode(errors="replace"))
    return out


Columns = dict[str, npt.NDArray[np.generic]]
_CHUNK = 16384  # records per gather


def element(fmt: EventFormat, name: str) -> Field:
    """A field, or one element of an array field: ``args[0]`` of ``unsigned long args[6]``."""
    m = re.fullmatch(r"(\w+)\[(\d+)\]", name)
    if m is None:
        return fmt.field(name)
    f = fmt.field(m[1])
    count = re.search(r"\[(\d+)\]", f.decl)
    if count is None or int(m[2]) >= int(count[1]):
        raise ContendError(f"tracefs: {fmt.name}.{m[1]} has no element {m[2]}")
    size = f.size // int(count[1])
    return Field(name, f.offset + int(m[2]) * size, size, f.signed, f.decl.split("[")[0])


def columns(records: Records, fmt: EventFormat, names: Iterable[str]) -> Columns:
    """The records of one event, as columns: ts, cpu, common_pid and the named fields,
    merged across CPUs in time order (a stable sort keeps each CPU's own order).

    One gather per event: each record's words (records are 4-byte aligned) into an
    (N x words) array, viewed as a structured type built from the format's offsets;
    a field is then a strided view of it."""
    picked = np.nonzero(records.type_id == fmt.id)[0]
    picked = picked[np.argsort(records.ts[picked], kind="stable")]
    offsets = records.offset[picked]
    out: Columns = {"ts": records.ts[picked], "cpu": records.cpu[picked]}
    wanted = [element(fmt, name) for name in ("common_pid", *names)]
    plain = [f for f in wanted if not f.data_loc]
    if plain:
        nwords = -(-max(f.offset + f.size for f in plain) // 4)
        words = records.buf[: len(records.buf) // 4 * 4].view("<u4")
        if len(offsets) and int(offsets.max()) // 4 + nwords > len(words):
            words = np.concatenate([words, np.zeros(nwords, "<u4")])
        layout = np.dtype(
            {
                "names": [f.name for f in plain],
                "formats": [_dtype(f) for f in plain],
                "offsets": [f.offset for f in plain],
                "itemsize": nwords * 4,
            }
        )
        for f in plain:
            out[f.name] = np.empty(len(offsets), dtype=_dtype(f))
        span = np.arange(nwords)
        # In chunks: the (chunk x words) index and rows stay in cache.
        for lo in range(0, len(offsets), _CHUNK):
            part = offsets[lo : lo + _CHUNK] // 4
            table = words[part[:, None] + span].view(layout).ravel()
            for f in plain:
                out[f.name][lo : lo + len(part)] = table[f.name]
    for f in wanted:
        if f.data_loc:
            out[f.name] = np.array(data_loc_strings(records.buf, offsets, f), dtype=object)
    return out


def decode_struct(
    pages: Sequence[bytes],
    cpus: Sequence[int],
    header: PageHeader,
    fmt: EventFormat,
    names: Sequence[str],
    ev: EventHeader = EventHeader(),
) -> list[tuple[int, int, tuple[object, ...]]]:
    """The plain-Python reference decoder (struct per record, one event type), merged
    across CPUs by time: what the numpy path must equal, and the bench's baseline."""
    joined, offsets, stamps, page_of = walk_pages(pages, header, ev)
    fields = [fmt.field(n) for n in ("common_pid", *names)]
    codes = {1: "B", 2: "H", 4: "I", 8: "Q"}
    by_offset = sorted(fields, key=lambda f: f.offset)
    layout, at = "<", 0
    for f in by_offset:
        code = f"{f.size}s" if f.is_string else codes[f.size]
        layout += f"{f.offset - at}x" + (code.lower() if f.signed else code)
        at = f.offset + f.size
    order = [by_offset.index(f) for f in fields]
    unpack = struct.Struct(layout).unpack_from
    type_of = struct.Struct("<H").unpack_from
    out = []
    for off, ts, page in zip(offsets.tolist(), stamps.tolist(), page_of.tolist(), strict=True):
        if type_of(joined, off)[0] != fmt.id:
            continue
        values = unpack(joined, off)
        out.append((ts, cpus[page], tuple(values[i] for i in order)))
    out.sort(key=lambda r: r[0])
    return out


# --- the instance -----------------------------------------------------------------------


def available(root: Path = TRACEFS) -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "tracefs needs root"
    if not root.is_dir():
        return False, f"no {root} (kernel without CONFIG_TRACING)"
    return True, f"tracefs at {root}, running as root"


def _write(path: Path, value: str, append: bool = False) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise ContendError(f"tracefs: cannot write {value!r} to {path}: {e.strerror}") from None


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _remove(path: Path) -> None:
    """Disable everything an instance does, then remove it (rmdir fails with EBUSY while
    events are enabled or its files are open, so quiesce first and retry briefly)."""
    for name, value in (("tracing_on", "0"), ("events/enable", "0"), ("set_event_pid", "")):
        try:
            _write(path / name, value)
        except ContendError:
            pass
    for attempt in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or attempt == 49:
                raise ContendError(f"tracefs: cannot remove {path}: {e.strerror}") from None
            time.sleep(0.02)


def instance_owner(name: str) -> int | None:
    m = _INSTANCE_RE.match(name)
    return int(m[1]) if m else None


def reclaim(root: Path = TRACEFS) -> list[str]:
    """Remove ``contend-<pid>`` instances whose process is dead (a SIGKILLed run); never
    an instance of a live contend, nor one whose name contend does not make."""
    directory = root / "instances"
    removed = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    for name in names:
        pid = instance_owner(name)
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        _remove(directory / name)
        removed.append(name)
    return removed


def ensure_mounted(root: Path = TRACEFS) -> None:
    if (root / "events").is_dir():
        return
    from contend.collect.bpftrace import ensure_tracefs

    ensure_tracefs()


@dataclass
class Instance:
    """A private ftrace instance: created, configured, read and given back.

    Use as a context manager, or call `close()` in a ``finally``: it disables every
    event and removes the directory whatever happened before.
    """

    root: Path = TRACEFS
    name: str = field(default_factory=lambda: f"{INSTANCE_PREFIX}{os.getpid()}")
    buffer_kb: int = DEFAULT_BUFFER_KB
    formats: dict[tuple[str, str], EventFormat] = field(default_factory=dict)
    header: PageHeader | None = None
    event_header: EventHeader = field(default_factory=EventHeader)
    stats_start: dict[int, dict[str, int]] = field(default_factory=dict)
    _fds: dict[int, int] = field(default_factory=dict)
    _created: bool = False

    @property
    def path(self) -> Path:
        return self.root / "instances" / self.name

    def __enter__(self) -> Instance:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> None:
        ok, why = available(self.root)
        if not ok:
            raise PermissionNeeded(why) if "root" in why else ContendError(why)
        ensure_mounted(self.root)
        reclaim(self.root)
        try:
            os.mkdir(self.path)
        except FileExistsError:
            _remove(self.path)  # our own pid's: left by this very process
            os.mkdir(self.path)
        except OSError as e:
            raise ContendError(f"tracefs: cannot create {self.path}: {e.strerror}") from None
        self._created = True
        events = self.root / "events"
        try:
            self.header = parse_header_page((events / "header_page").read_text())
            self.event_header = parse_header_event((events / "header_event").read_text())
        except OSError as e:
            raise ContendError(f"tracefs: cannot read the page headers: {e.strerror}") from None
        _write(self.path / "tracing_on", "0")
        # CLOCK_MONOTONIC, the clock of the rest of contend (trace_clock: "mono").
        _write(self.path / "trace_clock", "mono")
        # Producer/consumer: when full, drop new records (counted) rather than overwrite.
        _write(self.path / "options" / "overwrite", "0")
        _write(self.path / "buffer_size_kb", str(int(self.buffer_kb)))

    def format(self, system: str, event: str) -> EventFormat:
        key = (system, event)
        if key not in self.formats:
            try:
                text = (self.root / "events" / system / event / "format").read_text()
            except OSError:
                raise ContendError(f"tracefs: no event {system}:{event} on this kernel") from None
            self.formats[key] = parse_format(text, system)
        return self.formats[key]

    def has_event(self, system: str, event: str) -> bool:
        return (self.root / "events" / system / event).is_dir()

    def follow_pids(self, pids: Iterable[int]) -> None:
        """Record only events of these tasks (sched_switch: either side; wakeups: the
        woken task) and of every task they create (options/event-fork)."""
        _write(self.path / "options" / "event-fork", "1")
        for pid in pids:
            _write(self.path / "set_event_pid", f"{int(pid)}\n", append=True)

    def enable(self, system: str, event: str, filter_expr: str | None = None) -> None:
        self.format(system, event)
        directory = self.path / "events" / system / event
        if filter_expr is not None:
            _write(directory / "filter", filter_expr)
        _write(directory / "enable", "1")

    def cpus(self) -> list[int]:
        try:
            names = os.listdir(self.path / "per_cpu")
        except OSError:
            return []
        return sorted(int(n[3:]) for n in names if n.startswith("cpu") and n[3:].isdigit())

    def stats(self) -> dict[int, dict[str, int]]:
        out = {}
        for cpu in self.cpus():
            try:
                out[cpu] = parse_stats((self.path / "per_cpu" / f"cpu{cpu}" / "stats").read_text())
            except OSError:
                out[cpu] = {}
        return out

    def start(self) -> None:
        self.stats_start = self.stats()
        for cpu in self.cpus():
            raw = self.path / "per_cpu" / f"cpu{cpu}" / "trace_pipe_raw"
            try:
                self._fds[cpu] = os.open(raw, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as e:
                raise ContendError(f"tracefs: cannot open {raw}: {e.strerror}") from None
        _write(self.path / "tracing_on", "1")

    def stop(self) -> None:
        _write(self.path / "tracing_on", "0")

    def lost_by_cpu(self) -> dict[int, int]:
        end = self.stats()
        return {cpu: lost_between(self.stats_start.get(cpu, {}), s) for cpu, s in end.items()}

    def read_pages(self, max_pages_per_cpu: int | None = None) -> tuple[list[bytes], list[int]]:
        """What is in the buffers now: whole pages, and the last one partly filled. Never
        blocks (O_NONBLOCK): the caller sleeps between batches, so that reading does not
        wake per event and trace itself. At most one buffer's worth per CPU per call, so
        a producer faster than the reader cannot keep it here forever."""
        assert self.header is not None
        size = self.header.page_size
        if max_pages_per_cpu is None:
            max_pages_per_cpu = max(1, self.buffer_kb * 1024 // size)
        pages: list[bytes] = []
        cpus: list[int] = []
        for cpu, fd in self._fds.items():
            for _ in range(max_pages_per_cpu):
                try:
                    page = os.read(fd, size)
                except BlockingIOError:
                    break
                except OSError as e:
                    raise ContendError(f"tracefs: reading cpu{cpu}: {e.strerror}") from None
                if not page:
                    break
                if len(page) < size:
                    page = page + bytes(size - len(page))
                pages.append(page)
                cpus.append(cpu)
        return pages, cpus

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        if self._created:
            self._created = False
            _remove(self.path)


def comm_filter(fmt: EventFormat, comm: str) -> str:
    """The events of tasks named `comm` (validated and quoted by target.ftrace_string):
    a switch either side of it; an event with its own `comm` field (the woken, new,
    exiting or running task) by that field; any other by the current task's (`COMM`)."""
    name = ftrace_string(comm)
    if "prev_comm" in fmt.fields and "next_comm" in fmt.fields:
        return f"prev_comm == {name} || next_comm == {name}"
    if "comm" in fmt.fields:
        return f"comm == {name}"
    return f"COMM == {name}"


def pid_filter(field_name: str, pids: Iterable[int]) -> str:
    """A kernel-side filter from integers only: ``prev_pid == 1 || prev_pid == 2``."""
    if not re.fullmatch(r"[a-z_]+", field_name):
        raise ContendError(f"tracefs: bad filter field {field_name!r}")
    return " || ".join(f"{field_name} == {int(p)}" for p in pids)


def id_filter(ids: Iterable[int]) -> str:
    """raw_syscalls filter on syscall numbers (integers only)."""
    return " || ".join(f"id == {int(i)}" for i in sorted(set(ids)))


# --- a tracing session ------------------------------------------------------------------


@dataclass
class Capture:
    """Every decoded event of a run, as columns per event name (``sched_switch``, ...),
    with what the buffers lost per CPU."""

    events: dict[str, Columns]
    lost_by_cpu: dict[int, int]
    records: int = 0
    pages: int = 0

    @property
    def lost_events(self) -> int:
        return sum(self.lost_by_cpu.values())

    def get(self, event: str) -> Columns:
        return self.events.get(event, {})


def merge(chunks: Sequence[Columns]) -> Columns:
    """Batches of one event's columns as one, in time order (stable: a CPU's own order)."""
    merged = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    ts = merged["ts"]
    if np.all(ts[1:] >= ts[:-1]):
        return merged  # each batch after the last already: the sort would keep all
    order = np.argsort(ts, kind="stable")
    return {k: v[order] for k, v in merged.items()}


@dataclass
class EventSpec:
    system: str
    name: str
    fields: tuple[str, ...]
    filter_expr: str | None = None
    optional: bool = False  # left out where the kernel does not have it


class Tracer:
    """An instance with some events, read in batches: `poll()` between sleeps, then
    `finish()`. Each batch is decoded at once, so only the needed columns are kept."""

    def __init__(self, specs: Sequence[EventSpec], buffer_kb: int = DEFAULT_BUFFER_KB) -> None:
        self.specs = [s for s in specs]
        self.instance = Instance(buffer_kb=buffer_kb)
        self._chunks: dict[str, list[Columns]] = {s.name: [] for s in self.specs}
        self.records = 0
        self.pages = 0
        self.fill = 0.0  # the last batch: the most pages one CPU gave, / its buffer's pages

    def open(self, follow: Iterable[int] | None = None, comm: str | None = None) -> None:
        """Create the instance and enable the events (tracing still off). `follow`: the
        tasks to record, with everything they create; None: every task. `comm`: only
        the events of tasks of that name, matched in the kernel on every event."""
        self.instance.create()
        self.specs = [
            s for s in self.specs if not s.optional or self.instance.has_event(s.system, s.name)
        ]
        for s in self.specs:
            expr = s.filter_expr
            if comm is not None:
                by_name = comm_filter(self.instance.format(s.system, s.name), comm)
                expr = by_name if expr is None else f"({expr}) && ({by_name})"
            self.instance.enable(s.system, s.name, expr)
        # Last, just before tracing starts: event-fork adds a task's children to the list
        # from here on, and a child forked before tracing is on has no task_newtask.
        if follow is not None:
            self.instance.follow_pids(follow)

    def add_pids(self, pids: Iterable[int]) -> None:
        for pid in pids:
            _write(self.instance.path / "set_event_pid", f"{int(pid)}\n", append=True)

    def start(self) -> None:
        self.instance.start()

    def chunks(self, event: str) -> list[Columns]:
        """The batches of one event decoded so far (read-only use)."""
        return self._chunks.get(event, [])

    def poll(self) -> int:
        """Read and decode what the buffers hold now; returns the records decoded."""
        inst = self.instance
        pages, cpus = inst.read_pages()
        assert inst.header is not None
        per_cpu = np.bincount(np.array(cpus, dtype=np.int64)) if cpus else np.zeros(1, np.int64)
        self.fill = int(per_cpu.max()) * inst.header.page_size / (inst.buffer_kb * 1024)
        if not pages:
            return 0
        records = decode(pages, cpus, inst.header, inst.event_header)
        self.pages += len(pages)
        self.records += len(records)
        for s in self.specs:
            fmt = inst.format(s.system, s.name)
            if not np.any(records.type_id == fmt.id):
                continue
            self._chunks[s.name].append(columns(records, fmt, s.fields))
        return len(records)

    def snapshot(self) -> Capture:
        """What was decoded so far, as a Capture (a merged copy); tracing goes on."""
        events = {s.name: merge(self._chunks[s.name]) for s in self.specs if self._chunks[s.name]}
        return Capture(events, self.instance.lost_by_cpu(), self.records, self.pages)

    def finish(self) -> Capture:
        """Stop, drain, count the losses; the instance is removed by `close()`."""
        self.instance.stop()
        while self.poll():
            pass
        lost = self.instance.lost_by_cpu()
        events: dict[str, Columns] = {}
        for s in self.specs:
            chunks = self._chunks[s.name]
            if not chunks:
                continue
            events[s.name] = merge(chunks)
        return Capture(events, lost, self.records, self.pages)

    def close(self) -> None:
        self.instance.close()
