"""D (the subset parsed by parser.py) to a bpftrace program.

Nothing from the script reaches the program unchecked: identifiers come from the lexer's
identifier rule, numbers are re-printed from ints, strings are re-escaped, and every
probe, variable, action and format conversion is looked up in the tables below; anything
else is an error naming file:line:column.

What bpftrace cannot say itself is marked in its output and finished by the renderer:
`\\x01S<n>\\x01` is syscall number n (printed as its name, as DTrace's probefunc), and
`\\x01W<ns>\\x01` is a CLOCK_MONOTONIC time printed as DTrace prints %Y.

Linux mapping of the probes (and where it differs from DTrace):
- syscall::[F]:entry|return -> raw_syscalls sys_enter|sys_exit (+ id == n for F);
  arg0..5 at entry are the call's arguments, at return arg0 = arg1 = the return value.
- sched:::on-cpu / off-cpu -> sched_switch: off-cpu runs as the outgoing task; on-cpu's
  execname, pid and tid are the incoming task's (pid is its thread id: the kernel does not
  give the incoming task's process id there).
- sched:::wakeup -> sched_wakeup (arg0 = the woken thread id); enqueue/dequeue: no
  tracepoint on Linux, refused.
- proc:::exec -> syscalls:sys_enter_execve (arg0 = the path, a string);
  proc:::exec-success -> sched_process_exec; proc:::create -> task_newtask without
  CLONE_THREAD (arg0 = the child's pid); proc:::exit -> sched_process_exit of the thread group leader
  (arg0 = 1 exited, 2 killed, as CLD_EXITED/CLD_KILLED); thread:::create and
  proc:::lwp-create -> task_newtask with CLONE_THREAD (arg0 = the new thread id).
- BEGIN, END, tick-N[s|sec|ms|msec|hz] -> interval, profile-N[hz] -> profile:hz.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from contend.dscript.parser import (
    ActionCall,
    AggAssign,
    AggRef,
    Assign,
    Binary,
    Call,
    Clause,
    DSyntaxError,
    Expr,
    Num,
    ProbeDesc,
    Script,
    SelfVar,
    Str,
    ThisVar,
    Unary,
    Var,
)
from contend.model import AggregationSpec

READY = "contend-ready"
SYSCALL_MARK = "\x01S"
WALLTIME_MARK = "\x01W"
PRINTA_MARK = "\x02printa "
PRINTA_DONE = "\x02printa-done"
END_MARK = "\x02end"

# Value kinds, for printf conversions and aggregation keys.
INT, STR, SYSCALL, WALLTIME = "int", "str", "syscall", "walltime"


@dataclass(frozen=True)
class ProbeMap:
    """One D probe on Linux: the bpftrace probe, an extra predicate, and what the
    probe-dependent variables are there."""

    bpf: str
    provider: str
    function: str
    name: str
    predicate: str = ""
    variables: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (expr, kind)


def _args_entry() -> dict[str, tuple[str, str]]:
    return {f"arg{i}": (f"args->args[{i}]", INT) for i in range(6)}


def map_probe(p: ProbeDesc, syscalls: dict[str, int], filename: str) -> ProbeMap:
    where = f"{filename}:{p.line}:{p.col}"
    prov, func, name = p.provider, p.function, p.name
    if prov in ("BEGIN", "END") and not (p.module or func or name):
        return ProbeMap(prov, prov, "", "")
    m = re.fullmatch(r"tick-(\d+)(s|sec|ms|msec|hz)?", prov)
    if m and not (p.module or func or name):
        n, unit = int(m.group(1)), m.group(2) or "hz"
        if n <= 0:
            raise DSyntaxError(f"{where}: {prov}: the rate must be positive")
        if unit in ("s", "sec"):
            return ProbeMap(f"interval:s:{n}", "profile", "", prov)
        if unit in ("ms", "msec"):
            return ProbeMap(f"interval:ms:{n}", "profile", "", prov)
        return ProbeMap(f"interval:ms:{max(1000 // n, 1)}", "profile", "", prov)
    m = re.fullmatch(r"profile-(\d+)(hz)?", prov)
    if m and not (p.module or func or name):
        return ProbeMap(f"profile:hz:{int(m.group(1))}", "profile", "", prov)
    if p.module not in ("", "*"):
        raise DSyntaxError(
            f"{where}: probe module {p.module!r}: modules are not supported on Linux"
        )
    if prov == "syscall" and name in ("entry", "return"):
        bpf = (
            "tracepoint:raw_syscalls:sys_enter"
            if name == "entry"
            else "tracepoint:raw_syscalls:sys_exit"
        )
        variables = _args_entry() if name == "entry" else {
            "arg0": ("args->ret", INT), "arg1": ("args->ret", INT)}  # fmt: skip
        variables["probefunc"] = ("args->id", SYSCALL)
        if func in ("", "*"):
            return ProbeMap(bpf, prov, "", name, "", variables)
        if func not in syscalls:
            raise DSyntaxError(f"{where}: no syscall named {func!r} on this machine")
        variables["probefunc"] = (_str_lit(func), STR)
        return ProbeMap(bpf, prov, func, name, f"args->id == {int(syscalls[func])}", variables)
    if prov not in ("sched", "proc", "thread"):
        raise DSyntaxError(f"{where}: probe {p} is not supported")
    if func not in ("", "*"):
        raise DSyntaxError(f"{where}: {prov}:::{name} takes no function name on Linux")
    if prov == "sched":
        if name == "on-cpu":
            variables = {
                "execname": ("args->next_comm", STR),
                "pid": ("args->next_pid", INT),
                "tid": ("args->next_pid", INT),
            }
            return ProbeMap("tracepoint:sched:sched_switch", prov, "", name, "", variables)
        if name == "off-cpu":
            return ProbeMap("tracepoint:sched:sched_switch", prov, "", name)
        if name == "wakeup":
            return ProbeMap(
                "tracepoint:sched:sched_wakeup", prov, "", name, "", {"arg0": ("args->pid", INT)}
            )
        if name in ("enqueue", "dequeue"):
            raise DSyntaxError(f"{where}: sched:::{name}: Linux has no tracepoint for it")
    if prov == "proc":
        if name == "exec":
            return ProbeMap(
                "tracepoint:syscalls:sys_enter_execve", prov, "", name, "",
                {"arg0": ("str(args->filename)", STR)},
            )  # fmt: skip
        if name == "exec-success":
            return ProbeMap("tracepoint:sched:sched_process_exec", prov, "", name)
        if name == "create":
            # task_newtask, not sched_process_fork: only it tells a process from a thread.
            return ProbeMap(
                "tracepoint:task:task_newtask", prov, "", name,
                "(args->clone_flags & 0x10000) == 0", {"arg0": ("args->pid", INT)},
            )  # fmt: skip
        if name == "exit":
            return ProbeMap(
                "tracepoint:sched:sched_process_exit", prov, "", name, "pid == tid",
                {"arg0": ("((curtask->exit_code & 0x7f) ? 2 : 1)", INT)},
            )  # fmt: skip
        if name == "lwp-create":
            return _thread_create(prov, name)
    if prov == "thread" and name == "create":
        return _thread_create(prov, name)
    raise DSyntaxError(f"{where}: probe {p} is not supported")


def _thread_create(prov: str, name: str) -> ProbeMap:
    return ProbeMap(
        "tracepoint:task:task_newtask", prov, "", name, "(args->clone_flags & 0x10000) != 0",
        {"arg0": ("args->pid", INT)},
    )  # fmt: skip


def _str_lit(value: str) -> str:
    """A bpftrace string literal: printable characters only, quotes and backslashes escaped."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch.isprintable() and ord(ch) < 128:
            out.append(ch)
        else:
            raise DSyntaxError(f"string {value!r}: only printable ASCII is supported")
    return '"' + "".join(out) + '"'


@dataclass
class Translation:
    program: str
    aggregations: dict[str, AggregationSpec]
    printa_formats: list[str]
    quiet: bool
    uses_target: bool


_CONVERSION = re.compile(
    r"%(?P<flags>[-+ #0]*)(?P<width>\d+|\*)?(?:\.(?P<prec>\d+))?(?P<len>hh|h|ll|l|L|j|z|t)?(?P<conv>[a-zA-Z@%])"
)

BUILTINS: dict[str, tuple[str, str]] = {
    "execname": ("comm", STR),
    "pid": ("pid", INT),
    "tid": ("tid", INT),
    "ppid": ("curtask->real_parent->tgid", INT),
    "uid": ("uid", INT),
    "gid": ("gid", INT),
    "cpu": ("cpu", INT),
    "timestamp": ("nsecs", INT),
    # nsecs is CLOCK_MONOTONIC; walltimestamp is ns since the epoch: the offset between
    # the two clocks is added as a constant taken when the program is built.
    "walltimestamp": ("(nsecs + {wall_offset})", WALLTIME),
}


class Translator:
    def __init__(
        self,
        script: Script,
        syscalls: dict[str, int],
        target_pid: int | None = None,
        quiet: bool = False,
        exclude_pid: int | None = None,
    ) -> None:
        self.exclude_pid = exclude_pid
        self.wall_offset = time.time_ns() - time.monotonic_ns()
        self.script = script
        self.syscalls = syscalls
        self.target_pid = target_pid
        self.quiet = quiet
        self.aggs: dict[str, AggregationSpec] = {}
        self.printa_formats: list[str] = []
        self.self_vars: set[str] = set()
        self.globals: set[str] = set()
        self.uses_target = False
        self.where = ""

    def err(self, message: str) -> DSyntaxError:
        return DSyntaxError(f"{self.where}: {message}")

    # expressions -----------------------------------------------------------------------

    def expr(self, e: Expr, pm: ProbeMap) -> tuple[str, str]:
        """(bpftrace text, kind)."""
        if isinstance(e, Num):
            return str(int(e.value)), INT
        if isinstance(e, Str):
            return _str_lit(e.value), STR
        if isinstance(e, Var):
            return self.var(e.name, pm)
        if isinstance(e, SelfVar):
            self.self_vars.add(e.name)
            return f"@_self_{e.name}[{self.var('tid', pm)[0]}]", INT
        if isinstance(e, ThisVar):
            return f"$this_{e.name}", INT
        if isinstance(e, Unary):
            text, kind = self.expr(e.operand, pm)
            if kind != INT and e.op != "!":
                raise self.err(f"operator {e.op!r} needs a number")
            return f"({e.op}{text})", INT
        if isinstance(e, Binary):
            left, lk = self.expr(e.left, pm)
            right, rk = self.expr(e.right, pm)
            # probefunc == "write" at a syscall probe: compare syscall numbers.
            for side, kind, other in ((0, lk, e.right), (1, rk, e.left)):
                if kind == SYSCALL and isinstance(other, Str) and e.op in ("==", "!="):
                    if other.value not in self.syscalls:
                        raise self.err(f"no syscall named {other.value!r} on this machine")
                    number = str(int(self.syscalls[other.value]))
                    left, right = (left, number) if side == 0 else (number, right)
                    return f"({left} {e.op} {right})", INT
            if (lk == STR) != (rk == STR):
                raise self.err(f"cannot compare a string with a number ({e.op!r})")
            if lk == STR and e.op not in ("==", "!="):
                raise self.err(f"operator {e.op!r} is not supported on strings")
            return f"({left} {e.op} {right})", INT
        if isinstance(e, AggRef):
            raise self.err("an aggregation can only be used in printa, trunc or clear")
        if isinstance(e, Call):
            raise self.err(f"function {e.name!r} is not supported")
        raise self.err("unsupported expression")

    def var(self, name: str, pm: ProbeMap) -> tuple[str, str]:
        if name in pm.variables:
            return pm.variables[name]
        if name in BUILTINS:
            text, kind = BUILTINS[name]
            return text.format(wall_offset=int(self.wall_offset)), kind
        if name == "probeprov":
            return _str_lit(pm.provider), STR
        if name == "probemod":
            return _str_lit(""), STR
        if name == "probefunc":
            return _str_lit(pm.function), STR
        if name == "probename":
            return _str_lit(pm.name), STR
        if re.fullmatch(r"arg\d", name):
            raise self.err(f"{name} is not defined for {pm.provider}:::{pm.name} here")
        if name == "$target":
            if self.target_pid is None:
                raise self.err("$target needs -c COMMAND or -p PID")
            self.uses_target = True
            return str(int(self.target_pid)), INT
        if name.startswith("$"):
            raise self.err(f"macro {name} is not supported")
        if name not in self.globals:
            raise self.err(f"unknown variable {name!r}")
        return f"@_global_{name}", INT

    # statements ------------------------------------------------------------------------

    def statement(self, s: object, pm: ProbeMap) -> str:
        if isinstance(s, AggAssign):
            return self.aggregation(s, pm)
        if isinstance(s, Assign):
            value, kind = self.expr(s.value, pm)
            if kind == STR:
                raise self.err("string variables are not supported")
            if isinstance(s.target, SelfVar):
                self.self_vars.add(s.target.name)
                # Thread-locals belong to the probe's thread (on-cpu: the incoming one).
                slot = f"@_self_{s.target.name}[{self.var('tid', pm)[0]}]"
                if s.value == Num(0):  # D frees a thread-local by assigning 0
                    return f"delete({slot});"
                return f"{slot} = {value};"
            if isinstance(s.target, ThisVar):
                return f"$this_{s.target.name} = {value};"
            if s.target.name in BUILTINS or s.target.name.startswith("$"):
                raise self.err(f"cannot assign to {s.target.name!r}")
            self.globals.add(s.target.name)
            return f"@_global_{s.target.name} = {value};"
        assert isinstance(s, ActionCall)
        self.where = f"{self.script.filename}:{s.line}:{s.col}"
        return self.action(s, pm)

    def aggregation(self, s: AggAssign, pm: ProbeMap) -> str:
        keys = [self.expr(k, pm) for k in s.keys]
        key_kinds = tuple(kind for _, kind in keys)
        args = [self.expr(a, pm) for a in s.args]
        if any(kind == STR for _, kind in args):
            raise self.err(f"{s.func}() needs numbers")
        wanted = {"count": 0, "sum": 1, "avg": 1, "min": 1, "max": 1, "quantize": 1, "lquantize": 4}
        if len(args) != wanted[s.func] and not (s.func == "lquantize" and len(args) == 3):
            raise self.err(f"{s.func}() takes {wanted[s.func]} argument(s)")
        func = {"quantize": "hist", "lquantize": "lhist"}.get(s.func, s.func)
        if s.func == "lquantize":
            bounds = [a.value if isinstance(a, Num) else None for a in s.args[1:]]
            bounds += [1] * (3 - len(bounds))  # lquantize(x, lo, hi): step 1
            lo, hi, step = bounds
            if lo is None or hi is None or step is None or step <= 0 or hi <= lo:
                raise self.err("lquantize() bounds and step must be integers, lo < hi, step > 0")
            argtext = f"{args[0][0]}, {int(lo)}, {int(hi)}, {int(step)}"
            lq_bounds: tuple[int, int, int] | None = (int(lo), int(hi), int(step))
        else:
            argtext = ", ".join(a for a, _ in args)
            lq_bounds = None
        spec = AggregationSpec(s.name, s.func, key_kinds, len(self.aggs), lq_bounds)
        info = self.aggs.setdefault(s.name, spec)
        if (info.func, info.key_kinds, info.lquantize) != (s.func, key_kinds, lq_bounds):
            raise self.err(f"@{s.name} is used with different functions or keys")
        key = f"[{', '.join(k for k, _ in keys)}]" if keys else ""
        return f"{self.agg_name(s.name)}{key} = {func}({argtext});"

    @staticmethod
    def agg_name(name: str) -> str:
        return f"@{name}" if name else "@"

    def action(self, s: ActionCall, pm: ProbeMap) -> str:
        if s.name == "printf":
            if not s.args or not isinstance(s.args[0], Str):
                raise self.err("printf needs a format string first")
            return self.printf(s.args[0].value, [self.expr(a, pm) for a in s.args[1:]])
        if s.name == "trace":
            if len(s.args) != 1:
                raise self.err("trace() takes one argument")
            text, kind = self.expr(s.args[0], pm)
            return self.printf("%s\n" if kind in (STR, SYSCALL) else "%d\n", [(text, kind)])
        if s.name == "exit":
            return "exit();"
        if s.name in ("printa", "trunc", "clear"):
            fmt: str | None = None
            args = list(s.args)
            first = args[0] if args else None
            if s.name == "printa" and isinstance(first, Str):
                fmt = first.value
                args.pop(0)
            if not args or not isinstance(args[0], AggRef):
                raise self.err(f"{s.name}() needs an aggregation")
            name = args[0].name
            if name not in self.aggs:
                raise self.err(f"@{name} is not defined before this {s.name}()")
            if s.name == "trunc":
                if len(args) > 1:
                    raise self.err("trunc() with a count is not supported")
                return f"clear({self.agg_name(name)});"
            if s.name == "clear":
                return f"zero({self.agg_name(name)});"
            self.printa_formats.append(fmt or "")
            index = len(self.printa_formats) - 1
            return (
                f'printf("{PRINTA_MARK.encode("unicode_escape").decode()}{index}\\n"); '
                f"print({self.agg_name(name)}); "
                f'printf("{PRINTA_DONE.encode("unicode_escape").decode()}\\n");'
            )
        raise self.err(f"action {s.name!r} is not supported")

    def printf(self, fmt: str, args: list[tuple[str, str]]) -> str:
        out: list[str] = []
        values: list[str] = []
        pos = 0
        arg_i = 0
        for m in _CONVERSION.finditer(fmt):
            out.append(_escape_format(fmt[pos : m.start()]))
            pos = m.end()
            conv = m.group("conv")
            if conv == "%":
                out.append("%%")
                continue
            if conv == "@":
                raise self.err("%@ is only for printa()")
            if arg_i >= len(args):
                raise self.err(f"printf: too few arguments for {m.group()!r}")
            text, kind = args[arg_i]
            arg_i += 1
            if m.group("width") == "*":
                raise self.err("printf: '*' widths are not supported")
            spec = f"%{m.group('flags')}{m.group('width') or ''}"
            spec += f".{m.group('prec')}" if m.group("prec") else ""
            if conv == "Y":
                if kind not in (WALLTIME, INT):
                    raise self.err("%Y needs a time such as walltimestamp")
                out.append(WALLTIME_MARK.encode("unicode_escape").decode() + "%llu\\x01")
                values.append(text)
            elif conv == "s" and kind == SYSCALL:
                # The renderer names the number and applies the width and flags.
                spec_text = spec[1:].replace("%", "")
                out.append(SYSCALL_MARK.encode("unicode_escape").decode() + f"{spec_text}:%d\\x01")
                values.append(text)
            elif conv == "s":
                if kind != STR:
                    raise self.err("%s needs a string")
                out.append(spec + "s")
                values.append(text)
            elif conv in "diuxXoc":
                if kind == STR:
                    raise self.err(f"%{conv} needs a number")
                length = "ll" if conv in "diuxXo" else ""
                out.append(f"{spec}{length}{'d' if conv == 'i' else conv}")
                values.append(text)
            else:
                raise self.err(f"printf conversion %{conv} is not supported")
        out.append(_escape_format(fmt[pos:]))
        if arg_i != len(args):
            raise self.err("printf: more arguments than conversions")
        joined = "".join(out)
        return f'printf("{joined}"{"".join(", " + v for v in values)});'

    # clauses ---------------------------------------------------------------------------

    def translate(self) -> Translation:
        blocks: list[str] = []
        # bpftrace 0.17 takes one BEGIN and one END: clauses on them become if-blocks.
        begin: list[str] = [f'printf("{READY}\\n");']
        end: list[str] = []
        # Globals are known once assigned anywhere: collect them first.
        for clause in self.script.clauses:
            for s in clause.actions:
                if isinstance(s, Assign) and isinstance(s.target, Var):
                    self.globals.add(s.target.name)
        for clause in self.script.clauses:
            for probe in clause.probes:
                self.where = f"{self.script.filename}:{probe.line}:{probe.col}"
                pm = map_probe(probe, self.syscalls, self.script.filename)
                guard, body = self.block(clause, pm)
                if pm.bpf in ("BEGIN", "END"):
                    merged = f"if ({guard or 1}) {{ {body} }}"
                    (begin if pm.bpf == "BEGIN" else end).append(merged)
                else:
                    blocks.append(f"{pm.bpf}{f' /{guard}/' if guard else ''} {{ {body} }}")
        internal = [f"@_self_{n}" for n in sorted(self.self_vars)]
        internal += [f"@_global_{n}" for n in sorted(self.globals)]
        clears = " ".join(f"clear({m});" for m in internal)
        end_mark = END_MARK.encode("unicode_escape").decode()
        # D variables start at 0; bpftrace refuses a map it never sees assigned.
        declare = [f"@_self_{n}[0] = 0; delete(@_self_{n}[0]);" for n in sorted(self.self_vars)]
        declare += [f"@_global_{n} = 0;" for n in sorted(self.globals)]
        blocks.insert(0, f"BEGIN {{ {' '.join(declare + begin)} }}")
        blocks.append(f'END {{ printf("{end_mark}\\n"); {" ".join(end)} {clears} }}')
        return Translation(
            program="\n".join(blocks) + "\n",
            aggregations=self.aggs,
            printa_formats=self.printa_formats,
            quiet=self.quiet,
            uses_target=self.uses_target,
        )

    def block(self, clause: Clause, pm: ProbeMap) -> tuple[str, str]:
        """(guard expression or "", body statements) of one clause at one probe."""
        conditions = [pm.predicate] if pm.predicate else []
        if self.exclude_pid is not None and pm.bpf not in ("BEGIN", "END"):
            # The tool itself and its bpftrace: their output must not feed back into
            # what they trace (bpftrace's PID is not known before it starts).
            conditions.append(f"pid != {int(self.exclude_pid)}")
            conditions.append('comm != "bpftrace"')
        if clause.predicate is not None:
            text, _ = self.expr(clause.predicate, pm)
            conditions.append(text)
        guard = " && ".join(f"({c})" for c in conditions)
        body = [self.statement(s, pm) for s in clause.actions]
        if not clause.actions and not self.quiet and pm.bpf not in ("BEGIN", "END"):
            # dtrace's default action: one line per firing, CPU and probe.
            func = pm.variables.get("probefunc")
            if func and func[1] == SYSCALL:
                body.append(self.printf(f"%3d %s:{pm.name}\n", [("cpu", INT), func]))
            else:
                label = f"{pm.function}:{pm.name}" if pm.function else f":{pm.name or pm.provider}"
                body.append(self.printf(f"%3d {label}\n", [("cpu", INT)]))
        return guard, " ".join(body)


def _escape_format(text: str) -> str:
    out = []
    for ch in text:
        if ch == "%":
            raise DSyntaxError(f"printf: stray '%' in {text!r}")
        out.append(_str_lit(ch)[1:-1])
    return "".join(out)


def translate(
    script: Script,
    syscalls: dict[str, int],
    target_pid: int | None = None,
    quiet: bool = False,
    exclude_pid: int | None = None,
) -> Translation:
    return Translator(script, syscalls, target_pid, quiet, exclude_pid).translate()
