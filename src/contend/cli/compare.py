"""contend compare: any two recordings side by side: lab results (arm by arm, or the arms
of one), diagnoses (`contend diagnose --format json`) and session files (`contend
record`, diagnosed as `contend report` does)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from contend.analysis.compare import compare_arms, compare_diagnoses
from contend.analysis.diagnosis import diagnose
from contend.cli.console import check_distinct, check_output_path, stdout_console, write_output
from contend.errors import UsageError
from contend.model import (
    SCHEMA_DIAGNOSIS,
    Comparison,
    Diagnosis,
    LabResult,
    SchemaError,
    diagnosis_from_json_dict,
    lab_from_json_dict,
)
from contend.monitors import session as sessions
from contend.monitors.diagnose import observation_of_session
from contend.render import html as render_html
from contend.render import json as render_json
from contend.render import text as render_text

# A lab result is tens to hundreds of KB; a file past this is not one (and /dev/zero
# would be read until memory runs out).
MAX_RESULT_BYTES = 256 << 20


EXPECTED = (
    "expected a lab result (contend lab --json), a diagnosis (contend diagnose --format "
    "json) or a session file (contend record)"
)
ZIP_MAGIC = b"PK\x03\x04"  # a session file is a zip archive (.npz)


def load_any(path: str) -> LabResult | Diagnosis:
    """A lab result, a diagnosis, or a session file diagnosed; anything else is one line
    naming the file and what was expected."""
    try:
        if not Path(path).is_file():
            raise UsageError(f"{path}: not a regular file" if Path(path).exists() else
                             f"{path}: no such file")  # fmt: skip
        if Path(path).stat().st_size > MAX_RESULT_BYTES:
            raise UsageError(f"{path}: larger than {MAX_RESULT_BYTES >> 20} MB: {EXPECTED}")
        with open(path, "rb") as f:
            head = f.read(4)
        if head == ZIP_MAGIC:
            return diagnose(observation_of_session(sessions.load(Path(path))))
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not text, not a session file: {EXPECTED}") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not JSON ({e.msg}, line {e.lineno}): {EXPECTED}") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    try:
        if schema == SCHEMA_DIAGNOSIS:
            return diagnosis_from_json_dict(data)
        if isinstance(schema, str) and schema.startswith("contend.lab/"):
            return lab_from_json_dict(data)
    except (SchemaError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise UsageError(f"{path}: a damaged {schema} document ({type(e).__name__}: {e})") from None
    raise UsageError(f"{path}: schema {schema!r}: {EXPECTED}")


def comparisons(
    a: LabResult, b: LabResult | None, arm: str | None, names: tuple[str, str]
) -> list[Comparison]:
    if b is None:
        arms = list(a.arms)
        if len(arms) < 2:
            raise UsageError(f"{names[0]}: one arm only; give a second result to compare with")
        chosen = [x for x in arms[1:] if arm is None or x.name == arm]
        if not chosen:
            raise UsageError(f"--arm: no arm {arm!r} in {names[0]}")
        return [compare_arms(arms[0], x) for x in chosen]
    common = [x.name for x in a.arms if any(y.name == x.name for y in b.arms)]
    if arm is not None:
        if arm not in common:
            raise UsageError(f"--arm: {arm!r} is not in both results")
        common = [arm]
    if not common:
        raise UsageError("the two results have no arm in common")
    out = []
    for name in common:
        xa = next(x for x in a.arms if x.name == name)
        xb = next(x for x in b.arms if x.name == name)
        out.append(compare_arms(xa, xb, f"{name} ({names[0]})", f"{name} ({names[1]})"))
    return out


@click.command("compare")
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False), required=False)
@click.option("--arm", help="Compare only this arm.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option(
    "--html", "html_path", type=click.Path(dir_okay=False), help="Also write an HTML report."
)
def command(a: str, b: str | None, arm: str | None, fmt: str, html_path: str | None) -> int:
    """Compare two lab results (`contend lab --json`), arm by arm, or, given one, its
    baseline with each other arm; or two diagnoses (`contend diagnose --format json`) or
    session files (`contend record`), target against target. Effect sizes, Mann-Whitney
    tests, one conclusion."""
    if html_path is not None:
        check_output_path("--html", html_path)
        check_distinct([a] + ([b] if b is not None else []), {"--html": html_path})
    first = load_any(a)
    second = load_any(b) if b is not None else None
    names = (Path(a).name, Path(b).name if b else "")
    if isinstance(first, Diagnosis) or isinstance(second, Diagnosis):
        if not (isinstance(first, Diagnosis) and isinstance(second, Diagnosis)):
            other = a if not isinstance(first, Diagnosis) else (b or "")
            raise UsageError(
                f"{other}: a lab result; compare it with another lab result, or a diagnosis "
                "or session with another diagnosis or session"
                if b is not None
                else f"{a}: one diagnosis; give a second diagnosis or session to compare with"
            )
        if arm is not None:
            raise UsageError("--arm: diagnoses have no arms")
        found = [compare_diagnoses(first, second, names[0], names[1])]
    else:
        assert second is None or isinstance(second, LabResult)
        found = comparisons(first, second, arm, names)
    if fmt == "json":
        click.echo(render_json.render_comparisons(found), nl=False)
    else:
        stdout_console().print(*(render_text.comparison_renderable(c) for c in found))
    if html_path is not None:
        if not isinstance(first, LabResult):
            raise UsageError("--html: drawn for lab results only")
        results = [first] if second is None else [first, second]
        assert all(isinstance(r, LabResult) for r in results)
        write_output(
            "--html",
            html_path,
            render_html.render(
                [r for r in results if isinstance(r, LabResult)], found, title="contend compare"
            ),
        )
    return 0
