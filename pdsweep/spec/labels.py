"""Row labels in the paper's style (`top-0.95-50 + KLD`, `WSD-α+WSD-LR`, `τ = 2.0`), made from the
concepts a sweep varies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from pdsweep import spec as S

_ALPHA_NAMES = {
    "linear_inc": "Linear Inc",
    "linear_dec": "Linear Dec",
    "period": "Period",
    "wsd_alpha": "WSD-α",
    "wsd_beta": "WSD-β",
}
_ADAPTIVE_NAMES = {
    "none": "static τ",
    "normkd": "NormKD",
    "wttm": "WTTM",
    "adakd_sd": "AdaKD-SD",
    "adakd_h": "AdaKD-H",
}
_LR_NAMES = {"cosine": "Cos-LR", "wsd": "WSD-LR"}


def human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return f"{n:g}"


def label(spec: S.RunSpec, varied: set[str]) -> str:
    """A row label in the paper's style from the concepts the sweep varies (`top-0.95-50 + KLD`)."""
    parts: list[str] = []

    def varies(prefix: str) -> bool:
        return any(p == prefix or p.startswith(prefix + ".") for p in varied)

    handled: set[str] = set()

    def take(prefix: str, text: str | None) -> None:
        if varies(prefix):
            handled.update(p for p in varied if p == prefix or p.startswith(prefix + "."))
            if text:
                parts.append(text)

    st = spec.student
    size = st.preset.upper() if st.preset[0].isdigit() else st.preset  # the paper's '1.9B'
    take("student", size if st.preset != "custom" else f"h{st.hidden_size}-L{st.num_layers}")
    take("teacher", spec.teacher.ref.rstrip("/").rsplit("/", 1)[-1] if spec.teacher else "no teacher")
    take("data.tokens", f"{human(spec.data.tokens)} tokens")
    lg = spec.logits
    take(
        "logits.mode",
        lg.mode if lg.mode == "offline" else "online {:g}–{:g}".format(*lg.online_window),
    )
    if varies("logits.top_p") or varies("logits.top_k") or varies("logits.sampling"):
        take("logits.top_p", None)
        take("logits.top_k", None)
        take("logits.sampling", None)
        parts.append(lg.label if lg.sampling is None else f"sampled-{lg.sampling.draws}")
    take("logits.temperature", f"τ = {S.number_label(lg.temperature)}")
    take("logits.adaptive", _ADAPTIVE_NAMES[lg.adaptive.kind])
    take("loss.kd", spec.loss.kd.upper())
    a = spec.loss.alpha
    take(
        "loss.alpha",
        f"α = {S.number_label(a.value)}" if isinstance(a, S.ConstantAlpha) else _ALPHA_NAMES[a.kind],
    )
    take("optim.lr_schedule", _LR_NAMES[spec.optim.lr_schedule.kind])
    for path in sorted(varied - handled):
        parts.append(f"{path}={lookup(spec, path)}")
    return " + ".join(parts) if parts else "PD"


def lookup(spec: S.RunSpec, path: str) -> Any:
    value: Any = spec
    for key in path.split("."):
        value = getattr(value, key, None)
    if isinstance(value, S.RunTeacher | S.CkptTeacher | S.HfTeacher | S.BuiltinTeacher):
        return value.source
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value
