"""JSON output of lab results (`contend.lab/2`) and comparisons (`contend.compare/1`),
documented in the README."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from contend.model import Comparison, LabResult


def _clean(value: Any) -> Any:
    # JSON has no NaN or infinity; an unknown value is null.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(_clean(document), indent=2, allow_nan=False) + "\n"


def render_lab(result: LabResult) -> str:
    return dumps(result.to_json_dict())


def render_comparisons(comparisons: list[Comparison]) -> str:
    return dumps({"schema": "contend.compare/1", "comparisons": [asdict(c) for c in comparisons]})
