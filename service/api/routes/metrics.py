"""Metrics: an experiment's series, downsampled on the server, as JSON or CSV."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from service import store
from service.api.deps import OwnedExperiment, SessionDep, SettingsDep
from service.api.etag import etag_of, matches, not_modified
from service.api.responses import NOT_FOUND, UNAUTHORIZED
from service.schemas.metrics import MetricsOut, MetricsQuery, metrics_csv
from service.science.downsample import __doc__ as DOWNSAMPLING
from service.store.live import metrics_validator

router = APIRouter(prefix="/experiments", tags=["experiments"], responses=UNAUTHORIZED)


@router.get(
    "/{experiment_id}/metrics",
    response_model=MetricsOut,
    responses={
        **NOT_FOUND,
        200: {
            "content": {"text/csv": {"example": "name,member,step,value\ntrain_loss,0,0,4.6\n"}},
            "description": "JSON, or CSV (name,member,step,value) with format=csv.",
        },
    },
    description="Metric series of an experiment, downsampled on the server.\n\n"
    + (DOWNSAMPLING or ""),
)
def get_metrics(
    experiment: OwnedExperiment,
    session: SessionDep,
    settings: SettingsDep,
    query: Annotated[MetricsQuery, Query()],
    request: Request,
    response: Response,
) -> dict | Response:
    query.check(settings)
    # ETag: the stored series' sizes and the query, read before the (costlier) query itself.
    etag = etag_of(experiment.id, metrics_validator(session, experiment.id),
                   sorted(request.query_params.multi_items()))
    if matches(request, etag):
        return not_modified(etag)
    response.headers["ETag"] = etag
    names = query.name_list
    series = store.count_metric_series(session, experiment.id, names=names, member=query.member)
    data = store.query_metrics(
        session, experiment.id, names=names, from_step=query.from_step, to_step=query.to_step,
        max_points=query.points_per_series(series, settings), member=query.member,
    )
    if query.format == "csv":
        return Response(metrics_csv(data), media_type="text/csv", headers={"ETag": etag})
    return data
