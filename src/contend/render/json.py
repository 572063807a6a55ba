"""JSON output of lab results (schema `contend.lab/1`, documented in the README)."""

from __future__ import annotations

import json
import math
from typing import Any

from contend.model import LabResult


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
