"""Output of `contend dtrace` as DTrace prints it.

Fed in order with what bpftrace printed (printf lines and maps); printf lines get their
markers finished (syscall numbers to names, %Y times), `printa()` prints at once, and the
aggregations left at exit are printed in the order the script defined them, in DTrace's
layouts: `key value` lines sorted by value, and the quantize histogram with its
`value  --- Distribution --- count` header.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from contend.model import AggregationSpec

# \x01S<flags><width>:<n>\x01 is syscall n printed as %<flags><width>s of its name;
# \x01W<ns>\x01 is a time in ns since the epoch, printed as DTrace's %Y.
_MARK = re.compile("\x01(?:S([-+ #0]*\\d*(?:\\.\\d+)?):(-?\\d+)|W(-?\\d+))\x01")
PRINTA = "\x02printa "
PRINTA_DONE = "\x02printa-done"
END = "\x02end"


def walltime(epoch_ns: int) -> str:
    """DTrace's %Y, ctime's layout with the day padded to two characters:
    '2024 Jan 15 10:30:45', '1973 Dec  3 17:20:00' (libdtrace's pfprint_time)."""
    return time.strftime("%Y %b %e %H:%M:%S", time.localtime(epoch_ns / 1e9))


class DTraceOutput:
    def __init__(
        self,
        aggregations: dict[str, AggregationSpec],
        printa_formats: list[str],
        syscall_name: Callable[[int], str],
        write: Callable[[str], None],
    ) -> None:
        self.aggs = aggregations
        self.printa_formats = printa_formats
        self.syscall_name = syscall_name
        self.write = write
        self.pending_printa: int | None = None
        self.at_exit: dict[str, Any] = {}
        self.ending = False  # END has begun
        self.printed_in_end: set[str] = set()

    def finish_marks(self, text: str) -> str:
        def one(m: re.Match[str]) -> str:
            if m.group(3) is not None:
                return walltime(int(m.group(3)))
            return f"%{m.group(1)}s" % self.syscall_name(int(m.group(2)))

        return _MARK.sub(one, text)

    def printf(self, text: str) -> None:
        if text.strip() == PRINTA_DONE:
            # bpftrace prints nothing for an empty map: forget its pending format.
            self.pending_printa = None
            return
        if text.startswith(PRINTA):
            self.pending_printa = int(text[len(PRINTA) :].strip())
            return
        if text.strip() == END:
            self.ending = True
            return
        self.write(self.finish_marks(text))

    def record(self, kind: str, data: dict[str, Any]) -> None:
        for bpf_name, value in data.items():
            name = bpf_name[1:]
            if name.startswith(("_self_", "_global_")) or name not in self.aggs:
                continue
            if self.pending_printa is not None:
                fmt = self.printa_formats[self.pending_printa]
                self.pending_printa = None
                self.write(self.format(self.aggs[name], value, fmt or None))
                if self.ending:
                    # Printed by the END clause: dtrace does not print it again at exit.
                    self.printed_in_end.add(name)
            else:
                self.at_exit[name] = value

    def finish(self) -> None:
        left = [n for n in self.at_exit if n not in self.printed_in_end]
        for name in sorted(left, key=lambda n: self.aggs[n].order):
            self.write(self.format(self.aggs[name], self.at_exit[name], None))

    # formatting ------------------------------------------------------------------------

    def _key(self, spec: AggregationSpec, raw: str) -> list[str]:
        parts = split_key(raw, spec.key_kinds)
        out = []
        for kind, part in zip(spec.key_kinds, parts, strict=False):
            if kind == "syscall":
                out.append(self.syscall_name(int(part)))
            elif kind == "walltime":
                out.append(walltime(int(part)))
            else:
                out.append(part)
        return out

    def format(self, spec: AggregationSpec, value: Any, fmt: str | None) -> str:
        if spec.func in ("quantize", "lquantize"):
            if not spec.key_kinds:
                return "\n" + _histogram(value, spec) + "\n"
            blocks = []
            for raw, buckets in value.items():
                blocks.append(
                    "  " + "  ".join(self._key(spec, raw)) + "\n" + _histogram(buckets, spec)
                )
            return "\n" + "\n".join(blocks) + "\n"
        entries: list[tuple[list[str], int]]
        if not spec.key_kinds:
            entries = [([], int(value))]
        else:
            entries = [(self._key(spec, raw), int(v)) for raw, v in value.items()]
        if not entries:
            return ""
        entries.sort(key=lambda e: (e[1], e[0]))
        if fmt is not None:
            return "".join(_printa_line(fmt, keys, v, spec.key_kinds) for keys, v in entries)
        widths = [max(len(k[i]) for k, _ in entries) for i in range(len(spec.key_kinds))]
        lines = []
        for keys, v in entries:
            cells = [
                k.rjust(16) if kind == "int" else k.ljust(max(w, 8))
                for k, w, kind in zip(keys, widths, spec.key_kinds, strict=True)
            ]
            lines.append("  " + "  ".join(cells) + f"{v:>16}")
        return "\n" + "\n".join(lines) + "\n\n"


def split_key(raw: str, kinds: tuple[str, ...]) -> list[str]:
    """bpftrace joins tuple keys with ',' unquoted. Numbers hold no commas, so they are
    peeled off both ends; what is left in the middle is the string key(s)."""
    if not kinds:
        return []
    parts = raw.split(",")
    left: list[str] = []
    right: list[str] = []
    i, j = 0, len(kinds) - 1
    while i <= j and kinds[i] != "str" and parts:
        left.append(parts.pop(0))
        i += 1
    while j >= i and kinds[j] != "str" and parts:
        right.insert(0, parts.pop())
        j -= 1
    middle_count = j - i + 1
    if middle_count <= 0:
        return left + right
    if middle_count == 1:
        return [*left, ",".join(parts), *right]
    # Several string keys: ambiguous if they hold commas; split from the left.
    head = parts[: middle_count - 1]
    return [*left, *head, ",".join(parts[middle_count - 1 :]), *right]


def _histogram(buckets: list[dict[str, int]], spec: AggregationSpec) -> str:
    """DTrace's quantize/lquantize layout: the rows from one below the first non-zero
    bucket to one above the last, `value |@@@ count`, bars scaled to the total."""
    header = f"{'value':>16}  ------------- Distribution ------------- count"
    rows: list[tuple[str, int]]
    if spec.func == "lquantize" and spec.lquantize is not None:
        lo, hi, step = spec.lquantize
        by_min = {int(b["min"]): int(b["count"]) for b in buckets if "min" in b}
        under = sum(int(b["count"]) for b in buckets if "min" not in b)
        rows = [(f"< {lo}", under)]
        rows += [(str(v), by_min.get(v, 0)) for v in range(lo, hi, step)]
        rows.append((f">= {hi}", by_min.get(hi, 0)))
    else:
        # bpftrace puts every negative value in one bucket ({"max": -1}); the rest are
        # 0, 1, then powers of two: one row each, labelled by its low bound.
        negative = sum(int(b["count"]) for b in buckets if "min" not in b)
        lows = {int(b["min"]): int(b["count"]) for b in buckets if "min" in b}
        top = max(lows, default=0)
        values = [0, 1]
        while values[-1] < max(top, 1) * 2:
            values.append(values[-1] * 2)
        rows = [("< 0", negative)] + [(str(v), lows.get(v, 0)) for v in values]
        if not negative:
            rows[0] = ("-1", 0)  # dtrace's row below 0
    nonzero = [i for i, (_, c) in enumerate(rows) if c]
    if not nonzero:
        return header + "\n"
    first, last = max(nonzero[0] - 1, 0), min(nonzero[-1] + 1, len(rows) - 1)
    total = sum(c for _, c in rows)
    lines = [header]
    for label, count in rows[first : last + 1]:
        bar = "@" * round(40 * count / total) if total else ""
        lines.append(f"{label:>16} |{bar:<40} {count}")
    return "\n".join(lines) + "\n"


_PRINTA_CONV = re.compile(
    r"%(?P<spec>[-+ #0]*\d*(?:\.\d+)?)(?P<len>ll|l|h)?(?P<at>@)?(?P<conv>[a-zA-Z%])"
)


def _printa_line(fmt: str, keys: list[str], value: int, kinds: tuple[str, ...]) -> str:
    """printa("fmt", @agg): conversions take the keys in order; %@d takes the value."""
    out = []
    pos = 0
    key_i = 0
    for m in _PRINTA_CONV.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        conv, spec = m.group("conv"), m.group("spec")
        if conv == "%":
            out.append("%")
        elif m.group("at"):
            out.append(f"%{spec}d" % value)
        elif key_i < len(keys):
            key = keys[key_i]
            kind = kinds[key_i] if key_i < len(kinds) else "str"
            key_i += 1
            if kind == "int" and conv in "diuxXo":
                out.append(f"%{spec}{'d' if conv in 'iu' else conv}" % int(key))
            else:
                out.append(f"%{spec}s" % key)
    out.append(fmt[pos:])
    return "".join(out)
