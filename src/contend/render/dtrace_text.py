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

_MARK = re.compile("\x01([SW])(-?\\d+)\x01")
PRINTA = "\x02printa "
END = "\x02end"
_MONOTONIC_TO_WALL_NS = time.time_ns() - time.monotonic_ns()


def walltime(monotonic_ns: int) -> str:
    """DTrace's %Y: '2024 Jan 15 10:30:45'."""
    t = time.localtime((monotonic_ns + _MONOTONIC_TO_WALL_NS) / 1e9)
    return time.strftime("%Y %b %e %H:%M:%S", t).replace("  ", " ")


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
            value = int(m.group(2))
            return self.syscall_name(value) if m.group(1) == "S" else walltime(value)

        return _MARK.sub(one, text)

    def printf(self, text: str) -> None:
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
        parts = raw.split(",", len(spec.key_kinds) - 1) if spec.key_kinds else []
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
                return "\n" + _histogram(value, spec.func) + "\n"
            blocks = []
            for raw, buckets in value.items():
                blocks.append(
                    "  " + "  ".join(self._key(spec, raw)) + "\n" + _histogram(buckets, spec.func)
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


def _histogram(buckets: list[dict[str, int]], func: str) -> str:
    """DTrace's quantize/lquantize layout, one zero row before and after the data."""
    rows: list[tuple[str, int]] = []
    for b in buckets:
        if "min" not in b:
            rows.append((f"< {int(b['max']) + 1}", int(b["count"])))
        elif "max" not in b and func == "lquantize":
            rows.append((f">= {int(b['min'])}", int(b["count"])))
        else:
            rows.append((str(int(b["min"])), int(b["count"])))
    nonzero = [i for i, (_, c) in enumerate(rows) if c]
    header = f"{'value':>16}  ------------- Distribution ------------- count"
    if not nonzero:
        return header + "\n"
    first, last = nonzero[0], nonzero[-1]
    shown = rows[first : last + 1]
    if func == "quantize":
        low = int(rows[first][0])
        before = "0" if low <= 1 else str(low // 2)
        after = str(int(rows[last][0]) * 2) if int(rows[last][0]) > 0 else "1"
        if first == 0 or rows[first - 1][1] == 0:
            shown.insert(0, (before, 0))
        shown.append((after, 0))
    else:
        if first > 0:
            shown.insert(0, rows[first - 1])
        elif not rows[0][0].startswith("<"):
            shown.insert(0, (f"< {rows[0][0]}", 0))  # dtrace shows the underflow row
        if last + 1 < len(rows):
            shown.append(rows[last + 1])
    total = sum(c for _, c in rows)
    lines = [header]
    for label, count in shown:
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
