"""`contend top`'s screen: a header, then a table of cgroups (or of one cgroup's
processes, or one process's threads), sorted and filtered as the viewer asks, fitted
to the terminal's size. Pure: rows in, a rich renderable out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from contend.model import AccountingSnapshot, CgroupAccount

SEVERITY_STYLE = {
    "none": "",
    "mild": "yellow",
    "moderate": "bold dark_orange",
    "severe": "bold red",
}
SEVERITY_RANK = {"none": 0, "mild": 1, "moderate": 2, "severe": 3}


@dataclass
class View:
    """What the viewer chose: the level (cgroups, processes of `cgroup`, threads of
    `pid`), the sort column, the filter, the selected row, pause."""

    cgroup: str | None = None
    pid: int | None = None
    sort: int = 5  # index into the level's columns (wait/s)
    reverse: bool = True
    filter: str = ""
    typing: str | None = None  # the filter being typed after `/`
    selected: int = 0
    paused: bool = False
    message: str = ""

    @property
    def level(self) -> str:
        return "threads" if self.pid is not None else "processes" if self.cgroup else "cgroups"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _num(x: float | None, spec: str = ".2f") -> str:
    if x is None:
        return "-"
    if x == float("inf"):
        return "inf"
    return f"{x:{spec}}"


def group_name(c: CgroupAccount) -> str:
    if c.container_name:
        return f"{c.container_name} ({c.path})"
    return c.path


Column = tuple[str, Callable[[Any], str], Callable[[Any], Any]]

CGROUP_COLUMNS: list[Column] = [
    ("cgroup", group_name, lambda c: group_name(c)),
    ("cpu", lambda c: _num(c.cpu_cores), lambda c: c.cpu_cores or 0.0),
    ("quota", lambda c: _num(c.quota_cpus, "g"), lambda c: c.quota_cpus or 0.0),
    ("thr%", lambda c: _pct(c.throttled_ratio), lambda c: c.throttled_ratio or 0.0),
    ("psi s/f", lambda c: f"{_pct(c.psi_some_ratio)}/{_pct(c.psi_full_ratio)}", lambda c: c.psi_some_ratio or 0.0),
    ("wait/s", lambda c: _num(c.wait_per_s), lambda c: c.wait_per_s),
    ("w/r", lambda c: _num(c.wait_to_run), lambda c: c.wait_to_run or 0.0),
    ("sev", lambda c: c.severity, lambda c: SEVERITY_RANK[c.severity]),
    ("behind", lambda c: c.top_holder or "-", lambda c: c.top_holder or ""),
]  # fmt: skip

TASK_COLUMNS: list[Column] = [
    ("name", lambda r: f"{r.comm} ({r.id})", lambda r: r.comm),
    ("thr", lambda r: str(r.threads), lambda r: r.threads),
    ("cpu", lambda r: _num(r.cpu_cores), lambda r: r.cpu_cores),
    ("-", lambda r: "", lambda r: 0),
    ("-", lambda r: "", lambda r: 0),
    ("wait/s", lambda r: _num(r.wait_per_s), lambda r: r.wait_per_s),
    ("w/r", lambda r: _num(r.wait_to_run), lambda r: r.wait_to_run or 0.0),
    ("sev", lambda r: r.severity, lambda r: SEVERITY_RANK[r.severity]),
    ("behind", lambda r: r.top_holder or "-", lambda r: r.top_holder or ""),
]


def columns(view: View) -> list[Column]:
    return CGROUP_COLUMNS if view.level == "cgroups" else TASK_COLUMNS


def ordered(rows: Sequence[Any], view: View) -> list[Any]:
    """The rows as shown: filtered by name, sorted by the view's column."""
    cols = columns(view)
    name = cols[0][1]
    kept = [r for r in rows if view.filter.lower() in name(r).lower()]
    key = cols[view.sort][2]
    return sorted(kept, key=key, reverse=view.reverse)


def screen(
    snap: AccountingSnapshot,
    rows: Sequence[Any],
    view: View,
    width: int,
    height: int,
    own_cpu: float | None,
    load: str,
    root_note: str,
    color: bool,
) -> RenderableType:
    cols = [c for c in columns(view) if c[0] != "-"]
    all_cols = columns(view)
    where = {"cgroups": "cgroups", "processes": f"processes of {view.cgroup}",
             "threads": f"threads of PID {view.pid}"}[view.level]  # fmt: skip
    psi = _pct(snap.psi_some_ratio)
    head = Text(
        f"contend top  {snap.cpus} CPUs  load {load}  PSI some {psi}  backend {snap.backend}  "
        f"own CPU {'-' if own_cpu is None else f'{own_cpu:.1%}'}  {'PAUSED  ' if view.paused else ''}",
        no_wrap=True, overflow="ellipsis",
    )  # fmt: skip
    sort_name = all_cols[view.sort][0]
    keys = Text(
        f"{where}; sort {sort_name}{' v' if view.reverse else ' ^'} (s/r)"
        f"{'  filter ' + repr(view.filter) if view.filter else ''}"
        "  Enter in, Backspace out, / filter, d diagnose, p pause, q quit",
        no_wrap=True, overflow="ellipsis", style="dim" if color else "",
    )  # fmt: skip
    lines: list[RenderableType] = [head, keys]
    if root_note:
        lines.append(Text(root_note, no_wrap=True, overflow="ellipsis"))
    if view.typing is not None:
        lines.append(Text(f"filter: {view.typing}_", no_wrap=True))
    if view.message:
        lines.append(Text(view.message, overflow="fold"))
    if width < 100:
        cols = [c for c in cols if c[0] != "psi s/f"]  # 80 columns: the name needs the room
    room = max(height - len(lines) - 2, 1)
    first = max(0, min(view.selected - room + 1, len(rows) - room))
    shown = rows[first : first + room]
    behind_max = max(width // 5, 8)
    cells = [[fmt(r) for _, fmt, _ in cols] for r in shown]
    for row in cells:
        row[-1] = row[-1] if len(row[-1]) <= behind_max else "…" + row[-1][-(behind_max - 1) :]
    # The name keeps its tail (a path's last part is what tells groups apart) in what the
    # other columns leave of the width.
    others = sum(
        max([len(cols[i][0]) + 1] + [len(row[i]) for row in cells]) + 1 for i in range(1, len(cols))
    )
    name_room = max(width - others - 1, 8)
    for row in cells:
        if len(row[0]) > name_room:
            row[0] = "…" + row[0][-(name_room - 1) :]
    # Drawn as plain lines (rich's Table costs tens of ms a frame at 40 rows): the name
    # left-aligned in what is left, the numbers right-aligned, "behind" last.
    titles = [
        t + ("*" if all_cols.index(c) == view.sort else "")
        for c, t in zip(cols, [c[0] for c in cols], strict=True)
    ]
    widths = [max([len(titles[i])] + [len(row[i]) for row in cells]) for i in range(len(cols))]
    widths[0] = name_room

    def line(values: list[str]) -> str:
        out = [values[0].ljust(widths[0])]
        for i in range(1, len(values)):
            v = values[i]
            out.append(v.ljust(widths[i]) if cols[i][0] == "behind" else v.rjust(widths[i]))
        return " ".join(out).rstrip()[:width]

    lines.append(Text(line(titles), style="bold" if color else "", no_wrap=True))
    for n, (r, row) in enumerate(zip(shown, cells, strict=True), start=first):
        style = SEVERITY_STYLE[r.severity] if color else ""
        if n == view.selected:
            style = (style + " reverse").strip()
        lines.append(Text(line(row), style=style, no_wrap=True))
    return Group(*lines)
