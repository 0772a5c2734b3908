"""The base of every spec model (frozen, unknown keys forbidden, no NaN), the bare-string shorthands
(`alpha: 0.9`, `lr_schedule: wsd`) and how numbers are shown in labels.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
)

SPEC_VERSION = 1


class SpecModel(BaseModel):
    """Base of every spec model: unknown keys are errors, instances are frozen, and field
    docstrings are the documentation."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, validate_default=True, allow_inf_nan=False
    )


def shorthand_kind(value: Any) -> Any:
    """`"wsd"` → `{"kind": "wsd"}` so a variant without parameters can be named in one word."""
    return {"kind": value} if isinstance(value, str) else value


def shorthand_alpha(value: Any) -> Any:
    """`0.9` → a constant α of 0.9; a word names a schedule kind."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"kind": "constant", "value": value}
    return shorthand_kind(value)


def shorthand_field(name: str) -> Any:
    def expand(value: Any) -> Any:
        return {name: value} if isinstance(value, str) else value

    return expand


SHORTHANDS = {
    "student": shorthand_field("preset"),
    "data.tokenizer": shorthand_kind,
    "logits.adaptive": shorthand_kind,
    "loss.alpha": shorthand_alpha,
    "optim.lr_schedule": shorthand_kind,
}


def number_label(x: float) -> str:
    """Numbers as the paper's labels print them: 0.95 → '0.95', 1 → '1.0', 10 → '10.0'."""
    return f"{x:.1f}" if float(x).is_integer() else f"{x:g}"
