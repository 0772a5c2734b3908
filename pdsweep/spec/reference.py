"""The spec's documentation, from the models' field docstrings: one field (`pdsweep explain FIELD`)
or the whole reference in Markdown (docs/spec-reference.md)."""

from __future__ import annotations

from typing import Any

from pdsweep import spec
from pdsweep.errors import UserError
from pdsweep.spec import expand, sweep
from pdsweep.spec.load import describe_field


def markdown(prefix: str = "") -> str:
    """The spec reference in Markdown, generated from the models' field docstrings."""

    def section(title: str, root: Any, paths: list[str]) -> list[str]:
        lines = [f"## {title}", ""]
        for path in paths:
            for e in describe_field(root, path) or []:
                where = f" ({e['in']})" if e["in"].startswith("kind") else ""
                lines.append(f"### `{path}`{where}")
                lines.append("")
                lines.append(e["doc"] or "(undocumented)")
                lines.append("")
                lines.append(f"- type: `{e['type']}`")
                lines.append(f"- default: `{e['default']}`")
                if e["constraints"]:
                    lines.append(f"- constraints: {e['constraints']}")
                lines += [f"- `{v.split(':', 1)[0]}`:{v.split(':', 1)[1]}" for v in e["variants"]]
                lines.append("")
        return lines

    def sweep_paths(model: Any, at: str = "") -> list[str]:
        out = []
        for name, info in model.model_fields.items():
            out.append(at + name)
            subs = [m for m in getattr(info.annotation, "__args__", (info.annotation,)) if isinstance(m, type)]
            out += [
                p
                for m in subs
                if m in (sweep.ReportSpec, sweep.SearchSpec, sweep.ClusterSpec)
                for p in sweep_paths(m, f"{at}{name}.")
            ]
        return out

    run_paths = [p for p in expand.valid_paths() if p.startswith(prefix)]
    lines = [
        "# Spec reference",
        "",
        "Generated from the field docstrings by `pdsweep explain --markdown` (tests/test_readme.py checks it",
        "is current). A run file is a RunSpec; a sweep file has the keys under *Sweep* and a `base:` RunSpec.",
        "Decisions where the paper is silent are marked [D]; `pdsweep explain FIELD` prints one field.",
        "",
        *section("RunSpec", spec.RunSpec, run_paths),
        *section("Sweep", sweep.Sweep, [p for p in sweep_paths(sweep.Sweep) if p.startswith(prefix)]),
    ]
    return "\n".join(lines).rstrip() + "\n"


def explain(path: str) -> tuple[list[tuple[str, str]], list[str], list[dict[str, Any]]]:
    """(RunSpec sections with their docs, sweep keys, the entries of the field at `path`: one per
    model that has it). UserError naming the closest valid paths when there is no such field."""
    sections = [(name, " ".join((info.description or "").split())) for name, info in spec.RunSpec.model_fields.items()]
    if not path:
        return sections, list(sweep.Sweep.model_fields), []
    entries = describe_field(spec.RunSpec, path) or describe_field(sweep.Sweep, path)
    if entries is None:
        expand.check_path(path, "")  # raises with the closest valid paths
        raise UserError(f"{path}: not a field")
    return sections, list(sweep.Sweep.model_fields), entries
