"""Analysis: the grokking thresholds of a query, and the Fourier measures as served."""
from __future__ import annotations

from typing import Annotated

from fastapi import Query

from service.schemas.errors import invalid
from service.science.grokking import GrokkingThresholds

THRESHOLD_DOC = (
    "Grokking thresholds: a run has memorised at the first eval with train_acc >= acc_threshold "
    "and generalised at the first with val_acc >= acc_threshold (acc_threshold_95 gives the "
    "_95 variants). Phase (after Liu et al. 2022): confusion (never fits), memorization (fits, "
    "never generalises), comprehension (generalises within delay_threshold x the memorisation "
    "step), grokking (generalises later than that)."
)


def grokking_thresholds(
    acc_threshold: Annotated[float, Query(gt=0, le=1)] = 0.99,
    acc_threshold_95: Annotated[float, Query(gt=0, le=1)] = 0.95,
    delay_threshold: Annotated[float, Query(ge=1, le=1e6)] = 2.0,
) -> GrokkingThresholds:
    """The thresholds of the query; 422 when they contradict each other."""
    try:
        return GrokkingThresholds(
            acc_threshold=acc_threshold,
            acc_threshold_95=acc_threshold_95,
            delay_threshold=delay_threshold,
        )
    except ValueError as exc:
        raise invalid(("query",), str(exc), None) from exc


def fourier_view(document: dict) -> dict:
    """The stored measures of every member, with each key frequency's share of the embedding's
    (non-constant) squared Fourier norm and the spectrum as (frequency, norm) pairs."""
    members = []
    for member, m in enumerate(document["members"]):
        spectrum = m["embedding_spectrum"]
        energy = sum(v * v for v in spectrum[1:]) or 1.0
        members.append({
            "member": member,
            "key_frequencies": [
                {"frequency": k, "share": spectrum[k] ** 2 / energy} for k in m["key_frequencies"]
            ],
            "embedding_spectrum": [{"frequency": k, "norm": v} for k, v in enumerate(spectrum)],
            "measures": {
                k: v for k, v in m.items() if k not in ("embedding_spectrum", "key_frequencies")
            },
        })
    return {"step": document["step"], "members": members}
