"""Metrics: the query (names, step window, points per series, member, format) and the series."""
from __future__ import annotations

import csv
import io
import math
from typing import Literal

from pydantic import BaseModel, Field

from service.contract.settings import Settings
from service.schemas.errors import invalid
from service.store import MAX_STEP


class MetricsQuery(BaseModel):
    """The query string of GET .../metrics (FastAPI validates each parameter).

    The checks that need the settings or the number of stored series are methods the route
    calls afterwards, so that a query breaking several rules is told the first one, in this
    order: the max_points cap, the step window, the names, the size of the response."""

    names: str | None = Field(
        None,
        max_length=10_000,
        pattern=r"^[^\x00]*[^\x00\s,][^\x00]*$",  # no NUL, and at least one name
        description="Comma-separated metric names, e.g. train_loss,val_acc. Default: all.",
    )
    from_step: int | None = Field(None, ge=0, le=MAX_STEP)
    to_step: int | None = Field(None, ge=0, le=MAX_STEP)
    max_points: int | None = Field(
        None,
        ge=2,
        description="At most this many points per series (min/max downsampling; first and "
        "last always kept). Default and maximum: GROKLAB_MAX_POINTS; and series x "
        "max_points at most GROKLAB_MAX_RESPONSE_POINTS (the default shrinks to fit).",
    )
    member: int | None = Field(
        None, ge=0, le=MAX_STEP, description="One ensemble member; default all."
    )
    format: Literal["json", "csv"] = "json"

    @property
    def name_list(self) -> list[str] | None:
        """The names asked for, stripped, each once, in order; None for every series."""
        if self.names is None:
            return None
        return list(dict.fromkeys(n.strip() for n in self.names.split(",") if n.strip()))

    def check(self, settings: Settings) -> None:
        """422 for a max_points over GROKLAB_MAX_POINTS, a window that ends before it starts,
        or names that name nothing."""
        if self.max_points is not None and self.max_points > settings.max_points:
            raise invalid(
                ("query", "max_points"),
                f"max_points must be at most {settings.max_points} (GROKLAB_MAX_POINTS) "
                f"(got {self.max_points})",
                self.max_points,
            )
        start, end = self.from_step, self.to_step
        if start is not None and end is not None and start > end:
            raise invalid(
                ("query", "from_step"),
                f"from_step must be at most to_step (got {start} > {end})",
                start,
            )
        if self.names is not None and not self.name_list:
            raise invalid(
                ("query", "names"), "names must list at least one metric name", self.names
            )

    def points_per_series(self, series: int, settings: Settings) -> int:
        """max_points for a query over `series` series, keeping series x max_points within
        GROKLAB_MAX_RESPONSE_POINTS: the default shrinks to fit; an explicit value over it is
        422."""
        cap = settings.max_response_points
        max_points = self.max_points
        if max_points is None:
            max_points = min(settings.max_points, cap // max(series, 1))
            if max_points >= 2:
                return max_points
            max_points = 2  # the fewest a series can have: even that is too many
        if series * max_points > cap:
            fits = cap // series
            hint = (
                f"ask for max_points <= {fits}, or fewer names or one member"
                if fits >= 2 else "ask for fewer names or one member"
            )
            raise invalid(
                ("query", "max_points"),
                f"this query covers {series} series x {max_points} max_points = "
                f"{series * max_points} points, over the {cap} points a response may hold "
                f"(GROKLAB_MAX_RESPONSE_POINTS); {hint}",
                max_points,
            )
        return max_points


class MetricSeriesOut(BaseModel):
    name: str
    member: int = Field(description="Ensemble member (0 for a single run).")
    points: int = Field(description="Raw points of this series in the step window.")
    downsampled: bool = Field(description="True when fewer points are returned than stored.")
    steps: list[int]
    values: list[float | None] = Field(description="null where the value was NaN or infinite.")


class MetricsOut(BaseModel):
    experiment_id: str
    method: str = Field(description="Downsampling method: 'minmax-pow2' (see the endpoint).")
    max_points: int | None
    from_step: int | None
    to_step: int | None
    series: list[MetricSeriesOut] = Field(
        description="One entry per (name, member) with points in the window, by name then member."
    )


def metrics_csv(data: dict) -> str:
    """A metrics response as CSV: name,member,step,value; an empty value for null or NaN."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["name", "member", "step", "value"])
    for series in data["series"]:
        name, member = series["name"], series["member"]
        writer.writerows(
            (name, member, step, "" if value is None or math.isnan(value) else repr(value))
            for step, value in zip(series["steps"], series["values"])
        )
    return out.getvalue()
