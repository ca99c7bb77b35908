"""Numbers that JSON and the databases cannot carry: NaN and the infinities.

A metric can be NaN (a diverged run), but JSON has no NaN, PostgreSQL's json type refuses it and
SQLite stores it as NULL. Everywhere a value leaves Python it passes through one of these.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def finite_or_none(value: float | None) -> float | None:
    """value as a float, or None when it is None, NaN or infinite."""
    return None if value is None or not math.isfinite(value) else float(value)


def nan_to_none(values: np.ndarray) -> list[float | None]:
    """A float array as a list, NaN replaced by None. The NaN check runs in numpy: metric
    batches and query results are hundreds of thousands of values, and a Python-level scan of
    every one of them costs more than the rest of the ingestion or the query."""
    out = values.tolist()
    if np.isnan(values).any():
        return [None if v != v else v for v in out]
    return out


def without_non_finite(value: Any) -> Any:
    """value with every NaN or infinite float replaced by None, in nested dicts and lists too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: without_non_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_non_finite(v) for v in value]
    return value
