"""Reading spec files strictly, and reporting every problem as one line naming the field.

Users see `sweeps/x.yaml: logits.top_p: must be ≤ 1, got 1.5`, never a traceback. This module
knows YAML and Pydantic's error structure, not the design space: the model class whose errors are
being explained is passed in.
"""

from __future__ import annotations

import difflib
import reprlib
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pdsweep.errors import UserError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            mark = key_node.start_mark
            what = (
                "a mapping"
                if isinstance(key_node, yaml.MappingNode)
                else "a list"
                if isinstance(key_node, yaml.SequenceNode)
                else type(key).__name__
            )
            raise yaml.constructor.ConstructorError(None, None, f"{what} cannot be a key (line {mark.line + 1})", mark)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark)
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; any problem (missing, unreadable, malformed) is a one-line UserError."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: file does not exist")
    if p.is_dir():
        raise UserError(f"{p}: is a directory, expected a YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        what = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise UserError(f"{p}{where}: invalid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{p}: invalid YAML: {e}") from None


# ----------------------------------------------------------------------------------------------
# Pydantic errors → `field.path: message`
# ----------------------------------------------------------------------------------------------


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a Union/Optional annotation (or the annotation itself)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        out = []
        for a in typing.get_args(annotation):
            out.extend(_members(a))
        return out
    return [annotation]


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The Pydantic model classes an annotation may hold (through Optional, unions, Annotated)."""
    return [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]


def _tag(model: type[BaseModel]) -> Any:
    field = model.model_fields.get("kind")
    return field.default if field is not None else None


def _walk(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, list[type[BaseModel]]]:
    """Render `loc` as a dotted path, dropping union tags; also return the models at its end."""
    parts: list[str] = []
    current: list[type[BaseModel]] = [root]
    container = False  # inside a list/tuple/dict whose items are `current`
    for elem in loc:
        if isinstance(elem, int):
            parts[-1:] = [f"{parts[-1]}[{elem}]"] if parts else [f"[{elem}]"]
            continue
        tagged = [m for m in current if _tag(m) == elem]
        if tagged and len(current) > 1:
            current = tagged  # a discriminated-union tag: not part of the user's path
            continue
        field_owner = next((m for m in current if elem in m.model_fields), None)
        if field_owner is None or container:
            parts.append(str(elem))
            current, container = [], False
            continue
        parts.append(str(elem))
        ann = field_owner.model_fields[elem].annotation
        origin = typing.get_origin(ann)
        if origin in (list, tuple, dict):
            args = typing.get_args(ann)
            current = models_in(args[-1]) if args else []
            container = origin is dict
        else:
            current = models_in(ann)
    return ".".join(parts), current


_REPR = reprlib.Repr()
"""Bounded repr: a value quoted in an error is cut while it is rendered, so a huge input (a YAML
alias bomb: a list of lists of lists …) costs nothing."""
_REPR.maxlevel, _REPR.maxtuple, _REPR.maxlist, _REPR.maxdict, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring = _REPR.maxother = 50


def _short(value: Any, limit: int = 60) -> str:
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _message(err: Any, here: list[type[BaseModel]]) -> str:
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    bounds = {
        "less_than_equal": "≤ {le:g}",
        "less_than": "< {lt:g}",
        "greater_than_equal": "≥ {ge:g}",
        "greater_than": "> {gt:g}",
    }
    if kind in bounds:
        return f"must be {bounds[kind].format(**ctx)}, got {_short(got)}"
    if kind == "extra_forbidden":
        name = str(err["loc"][-1]) if err["loc"] else "?"
        known = sorted({f for m in here for f in m.model_fields})
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else f" (known: {', '.join(known)})" if known else ""
        return f"unknown key{hint}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s), got {_short(got)}"
    if kind == "missing":
        return "required, but missing"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {_short(got)}"
    if kind == "union_tag_invalid":
        return f"kind must be one of {ctx.get('expected_tags')}, got {ctx.get('tag')!r}"
    if kind == "union_tag_not_found":
        return f"needs a 'kind' key, got {_short(got)}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping, got {_short(got)}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}, got {_short(got)}"
    if kind in ("value_error", "assertion_error"):
        msg = str(ctx.get("error") or err["msg"])
        return msg.removeprefix("Value error, ")
    return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {_short(got)}"


def explain_errors(err: ValidationError, root: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per problem: `<prefix><field.path>: <message>`."""
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        path, here = _walk(root, loc)
        if e["type"] == "extra_forbidden":  # suggestions come from the model that has the bad key
            here = _walk(root, loc[:-1])[1]
        msg = _message(e, here)
        lines.append(f"{prefix}{path}: {msg}" if path else f"{prefix}{msg}".rstrip(": "))
    return list(dict.fromkeys(lines))  # the same problem reached through two unions is said once


def validate(model: type[BaseModel], data: Any, prefix: str = "") -> Any:
    """`model.model_validate(data)`, raising UserError with one line per problem."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise UserError(explain_errors(e, model, prefix)) from None


# ----------------------------------------------------------------------------------------------
# Field documentation (`pdsweep explain`)
# ----------------------------------------------------------------------------------------------


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_text(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        kinds = [_tag(m) for m in models_in(annotation)]
        if kinds and all(k is not None for k in kinds):
            rest = [_type_text(m) for m in members if not models_in(m)]
            return "a mapping with kind: " + " | ".join(kinds) + "".join(f" | {r}" for r in rest)
        return " | ".join(_type_text(m) for m in members)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping (section)"
    if annotation is type(None):
        return "null"
    if origin in (list, tuple, dict):
        args = ", ".join(_type_text(a) for a in typing.get_args(annotation) if a is not Ellipsis)
        return f"{origin.__name__}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(info: Any) -> str:
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    parts = []
    for meta in info.metadata:
        for attr, sym in symbols.items():
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sym} {value}")
        pattern = getattr(meta, "pattern", None)
        if pattern:
            parts.append(f"matches {pattern}")
    return ", ".join(parts)


def describe_field(root: type[BaseModel], path: str) -> list[dict[str, Any]] | None:
    """Documentation of the field at a dotted path: one entry per model that has it (a field of
    a tagged union may exist in several kinds). None when no model has such a path."""
    models: list[type[BaseModel]] = [root]
    found: list[tuple[type[BaseModel], Any]] = []
    for i, name in enumerate(path.split(".")):
        found = [(m, m.model_fields[name]) for m in models if name in m.model_fields]
        if not found:
            return None
        if i < len(path.split(".")) - 1:
            models = [sub for _, info in found for sub in models_in(info.annotation)]
    out = []
    for owner, info in found:
        default = info.default_factory() if info.default_factory is not None else info.default
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        kinds = models_in(info.annotation)
        variants = [f"{_tag(m)}: {' '.join((m.__doc__ or '').split())}" for m in kinds if _tag(m) is not None]
        out.append(
            {
                "path": path,
                "in": f"kind {_tag(owner)}" if _tag(owner) is not None else owner.__name__,
                "type": _type_text(info.annotation),
                "default": "required" if info.is_required() else repr(default),
                "constraints": _constraints(info),
                "doc": " ".join((info.description or "").split()),
                "variants": variants,
            }
        )
    return out
