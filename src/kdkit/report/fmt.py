"""How the report writes numbers and recipes in words: parameter counts, percentages, points, ratios, model and term
descriptions. Missing or non-finite values print as "—"."""

from __future__ import annotations

import math
import re
from typing import Any


def is_number(x: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_params(n: float) -> str:
    if not is_number(n):
        return "—"
    if n < 1e3:
        return f"{n:.0f}"
    if n < 1e6:
        return f"{n / 1e3:.1f} K"
    return f"{n / 1e6:.2f} M"


def fmt_g(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if is_number(x) else "—"


def fmt_pct(x: float) -> str:
    return f"{x:.2f}" if is_number(x) else "—"


def fmt_pts(x: float) -> str:
    return f"{x:+.2f}" if is_number(x) else "—"


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    return str(v)


def fmt_params_dict(params: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in (params or {}).items())


def model_desc(spec: dict[str, Any]) -> str:
    p = fmt_params_dict(spec.get("params"))
    return f"{spec.get('name', '?')}({p})" if p else str(spec.get("name", "?"))


def terms_desc(config: dict[str, Any]) -> str:
    parts = []
    for t in config.get("terms") or []:
        if not isinstance(t, dict):
            continue
        s = f"{t.get('key') or t.get('name')} ×{fmt_value(float(t.get('weight', 1.0)))}"
        extra = fmt_params_dict(t.get("params"))
        if t.get("key") and t.get("key") != t.get("name"):
            extra = ", ".join(x for x in (f"term={t.get('name')}", extra) if x)
        if t.get("warmup_epochs"):
            extra = ", ".join(x for x in (extra, f"warm-up {fmt_value(t['warmup_epochs'])} ep") if x)
        parts.append(f"{s} ({extra})" if extra else s)
    return " + ".join(parts) or "—"


def times(x: float, more: str, less: str) -> str:
    """``4.2× faster`` for a ratio of 4.2, ``2.0× slower`` for 0.5: a ratio below 1 reads wrong as "0.5× faster"."""
    r, word = (x, more) if x >= 1 else (1 / x, less)
    return f"{r:.1f}× {word}" if r < 100 else f"{r:,.0f}× {word}"  # "3,968× faster", not "3967.8×"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"
