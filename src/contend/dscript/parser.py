"""A D subset: lexer, AST and recursive-descent parser.

Enough D for the original document and the usual one-liners: clauses of probe
descriptions, an optional /predicate/ and { actions }; expressions with the C operators;
self->, this-> and global variables; aggregations; printf/trace/printa/exit/trunc/clear.
Every error names file:line:column and what is not supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from contend.errors import UsageError


class DSyntaxError(UsageError):
    pass


# --- lexer --------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<comment>/\*.*?\*/|//[^\n]*)
  | (?P<pragma>^[ \t]*\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>0[xX][0-9a-fA-F]+|\d+)
  | (?P<agg>@[A-Za-z_][A-Za-z0-9_]*|@)
  | (?P<macro>\$[A-Za-z_][A-Za-z0-9_]*|\$\d+)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>->|==|!=|<=|>=|&&|\|\||<<|>>|\+\+|--|[-+*/%<>=!&|^~(){}\[\],;:?.])
    """,
    re.VERBOSE | re.DOTALL | re.MULTILINE,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    line: int
    col: int


def tokenize(source: str, filename: str = "<script>") -> list[Token]:
    tokens = []
    pos, line, line_start = 0, 1, 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise DSyntaxError(
                f"{filename}:{line}:{pos - line_start + 1}: unexpected character {source[pos]!r}"
            )
        kind = m.lastgroup or ""
        text = m.group()
        if kind not in ("ws", "comment", "pragma"):
            tokens.append(Token(kind, text, line, m.start() - line_start + 1))
        newlines = text.count("\n")
        if newlines:
            line += newlines
            line_start = m.start() + text.rindex("\n") + 1
        pos = m.end()
    tokens.append(Token("eof", "", line, pos - line_start + 1))
    return tokens


# --- AST ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    value: int


@dataclass(frozen=True)
class Str:
    value: str


@dataclass(frozen=True)
class Var:
    """A built-in variable (execname, pid, ...), a global, or a macro ($target)."""

    name: str


@dataclass(frozen=True)
class SelfVar:
    name: str


@dataclass(frozen=True)
class ThisVar:
    name: str


@dataclass(frozen=True)
class AggRef:
    name: str  # "" for the anonymous @


@dataclass(frozen=True)
class Unary:
    op: str
    operand: Expr


@dataclass(frozen=True)
class Binary:
    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Expr, ...]


Expr = Num | Str | Var | SelfVar | ThisVar | AggRef | Unary | Binary | Call


@dataclass(frozen=True)
class AggAssign:
    name: str
    keys: tuple[Expr, ...]
    func: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class Assign:
    target: SelfVar | ThisVar | Var
    value: Expr


@dataclass(frozen=True)
class ActionCall:
    """printf, trace, printa, exit, trunc, clear, ... as statements."""

    name: str
    args: tuple[Expr, ...]
    line: int
    col: int


Statement = AggAssign | Assign | ActionCall


@dataclass(frozen=True)
class ProbeDesc:
    provider: str
    module: str
    function: str
    name: str
    line: int
    col: int

    def __str__(self) -> str:
        if self.provider in ("BEGIN", "END") and not (self.module or self.function or self.name):
            return self.provider
        return f"{self.provider}:{self.module}:{self.function}:{self.name}"


@dataclass(frozen=True)
class Clause:
    probes: tuple[ProbeDesc, ...]
    predicate: Expr | None
    actions: tuple[Statement, ...]


@dataclass
class Script:
    clauses: list[Clause] = field(default_factory=list)
    filename: str = "<script>"
    options: set[str] = field(default_factory=set)  # from `#pragma D option NAME`


# --- parser -------------------------------------------------------------------------------

_AGG_FUNCS = {"count", "sum", "avg", "min", "max", "quantize", "lquantize"}
_ACTIONS = {"printf", "trace", "printa", "exit", "trunc", "clear"}
_BINARY = [
    ("||",),
    ("&&",),
    ("|",),
    ("^",),
    ("&",),
    ("==", "!="),
    ("<", ">", "<=", ">="),
    ("<<", ">>"),
    ("+", "-"),
    ("*", "/", "%"),
]


class Parser:
    def __init__(self, source: str, filename: str = "<script>") -> None:
        self.filename = filename
        self.source = source
        self.tokens = tokenize(source, filename)
        self.i = 0
        # In /predicate/, a '/' outside parentheses closes it; inside them it divides.
        self.slash_closes = False

    # helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def error(self, message: str, tok: Token | None = None) -> DSyntaxError:
        t = tok or self.tok
        return DSyntaxError(f"{self.filename}:{t.line}:{t.col}: {message}")

    def take(self, text: str | None = None, kind: str | None = None) -> Token:
        t = self.tok
        if (text is not None and t.text != text) or (kind is not None and t.kind != kind):
            want = repr(text) if text is not None else kind
            got = repr(t.text) if t.text else "end of script"
            raise self.error(f"expected {want}, found {got}")
        self.i += 1
        return t

    def at(self, text: str) -> bool:
        return self.tok.text == text and self.tok.kind in ("op", "ident")

    # grammar
    def parse(self) -> Script:
        script = Script(filename=self.filename)
        while self.tok.kind != "eof":
            script.clauses.append(self.clause())
        if not script.clauses:
            raise self.error("no probe clause in the script")
        return script

    def clause(self) -> Clause:
        probes = [self.probe_desc()]
        while self.at(","):
            self.take(",")
            probes.append(self.probe_desc())
        predicate = None
        if self.at("/"):
            self.take("/")
            self.slash_closes = True
            predicate = self.expr()
            self.slash_closes = False
            self.take("/")
        actions: list[Statement] = []
        if self.at("{"):
            self.take("{")
            while not self.at("}"):
                if self.tok.kind == "eof":
                    raise self.error("missing '}'")
                if self.at(";"):
                    self.take(";")
                    continue
                actions.append(self.statement())
                if not self.at("}"):
                    self.take(";")
            self.take("}")
        return Clause(tuple(probes), predicate, tuple(actions))

    def probe_desc(self) -> ProbeDesc:
        """provider:module:function:name, with empty fields; or BEGIN / END / tick-1s."""
        start = self.tok
        parts = [""]
        previous: Token | None = None
        while True:
            t = self.tok
            # A probe description is one run of characters: stop at whitespace.
            if previous is not None and (
                t.line != previous.line or t.col != previous.col + len(previous.text)
            ):
                break
            if t.kind in ("ident", "number") or (t.kind == "op" and t.text in ("-", "*")):
                parts[-1] += t.text
            elif t.kind == "op" and t.text in (":", "::", ":::"):
                parts.append("")
            else:
                break
            previous = t
            self.i += 1
        if parts == [""]:
            raise self.error(f"expected a probe description, found {self.tok.text!r}", start)
        if len(parts) > 4:
            raise self.error("a probe description has at most 4 fields", start)
        # Fewer fields name the rightmost ones (dtrace(1): "name", "func:name", ...).
        fields = ["", "", "", ""][: 4 - len(parts)] + parts
        if len(parts) == 1:
            fields = [parts[0], "", "", ""]  # BEGIN, END, tick-1s, profile-99
        provider, module, function, name = fields
        return ProbeDesc(provider, module, function, name, line=start.line, col=start.col)

    def statement(self) -> Statement:
        t = self.tok
        if t.kind == "agg":
            name = self.take(kind="agg").text[1:]
            keys: list[Expr] = []
            if self.at("["):
                self.take("[")
                keys.append(self.expr())
                while self.at(","):
                    self.take(",")
                    keys.append(self.expr())
                self.take("]")
            self.take("=")
            func = self.take(kind="ident")
            if func.text not in _AGG_FUNCS:
                raise self.error(f"aggregating function {func.text!r} is not supported", func)
            args = self.call_args()
            return AggAssign(name, tuple(keys), func.text, args)
        if t.kind == "ident" and t.text in _ACTIONS:
            self.i += 1
            return ActionCall(t.text, self.call_args(), t.line, t.col)
        if t.kind == "ident" and t.text in ("self", "this"):
            target = self.primary()
            assert isinstance(target, SelfVar | ThisVar)
            self.take("=")
            return Assign(target, self.expr())
        if t.kind == "ident" and self.tokens[self.i + 1].text == "=":
            name = self.take(kind="ident").text
            self.take("=")
            return Assign(Var(name), self.expr())
        if t.kind == "ident" and self.tokens[self.i + 1].text == "(":
            raise self.error(f"action {t.text!r} is not supported")
        raise self.error(f"unexpected {t.text!r} in a clause body")

    def call_args(self) -> tuple[Expr, ...]:
        self.take("(")
        args: list[Expr] = []
        if not self.at(")"):
            args.append(self.expr())
            while self.at(","):
                self.take(",")
                args.append(self.expr())
        self.take(")")
        return tuple(args)

    def expr(self, level: int = 0) -> Expr:
        if level == len(_BINARY):
            return self.unary()
        left = self.expr(level + 1)
        while self.tok.kind == "op" and self.tok.text in _BINARY[level]:
            if self.tok.text == "/" and self.slash_closes:
                break
            op = self.take().text
            left = Binary(op, left, self.expr(level + 1))
        return left

    def unary(self) -> Expr:
        if self.tok.kind == "op" and self.tok.text in ("!", "-", "~"):
            op = self.take().text
            return Unary(op, self.unary())
        return self.primary()

    def primary(self) -> Expr:
        t = self.tok
        if t.kind == "number":
            self.i += 1
            text = t.text
            # C and D: a leading 0 means octal (0644), 0x hexadecimal.
            base = 8 if len(text) > 1 and text[0] == "0" and text[1] not in "xX" else 0
            try:
                return Num(int(text, base))
            except ValueError:
                raise self.error(f"{text!r} is not a valid number") from None
        if t.kind == "string":
            self.i += 1
            return Str(_unescape(t.text[1:-1]))
        if t.kind == "agg":
            self.i += 1
            return AggRef(t.text[1:])
        if t.kind == "macro":
            self.i += 1
            return Var(t.text)
        if t.kind == "op" and t.text == "(":
            self.take("(")
            closes, self.slash_closes = self.slash_closes, False
            e = self.expr()
            self.slash_closes = closes
            self.take(")")
            return e
        if t.kind == "ident":
            self.i += 1
            if t.text in ("self", "this"):
                self.take("->")
                name = self.take(kind="ident").text
                return SelfVar(name) if t.text == "self" else ThisVar(name)
            if self.at("("):
                return Call(t.text, self.call_args())
            return Var(t.text)
        raise self.error(f"unexpected {t.text!r}" if t.text else "unexpected end of script")


def _unescape(body: str) -> str:
    out, i = [], 0
    escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "r": "\r", "0": "\0"}
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append(escapes.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


_PRAGMA = re.compile(r"^[ \t]*#pragma[ \t]+D[ \t]+option[ \t]+(\w+)", re.MULTILINE)


def parse(source: str, filename: str = "<script>") -> Script:
    script = Parser(source, filename).parse()
    script.options = set(_PRAGMA.findall(source))
    return script
