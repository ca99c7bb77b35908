"""The OpenAPI document says what the API does: limits that come from the settings are written
into it, and a 405 names every method of its path.

- `limit` (a page size) is at most GROKLAB_MAX_PAGE_SIZE and `max_points` at most
  GROKLAB_MAX_POINTS: this app's values become the parameters' `maximum` when the document is
  built, so a client generated from it never sends one the server refuses.
- The spec's sections are optional: a preset supplies each one left out.
- A body that is not JSON at all is 400 (FastAPI's parser), listed on every operation with a
  body.
- Starlette answers a method that a path does not serve with 405 and the Allow header of the
  first route that matched the path only (GET and POST of /api/v1/experiments are two routes):
  the handler here lists the methods of every route of that path.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from service.contract.settings import Settings


BAD_BODY = {
    "description": "The body could not be parsed (not JSON, or not the declared content type).",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
}


PRESET_SECTIONS = (
    "An experiment spec. Every section (task, model, optimizer, training, ...) and every field "
    "of one defaults to the preset's (`preset`, nanda2023 when not named); with `preset: null` "
    "task, model, optimizer and training must be given. Rules across fields (the ops of a task "
    "kind, per-member lists as long as the ensemble, the GROKLAB_MAX_* caps on products of "
    "fields) are checked on submit: a 422 names the field."
)


def settings_maxima(settings: Settings) -> dict[str, int]:
    """Query parameters whose largest value is a setting of this app."""
    return {"limit": settings.max_page_size, "max_points": settings.max_points}


def install(app: FastAPI, settings: Settings) -> None:
    maxima = settings_maxima(settings)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version,
                                   description=app.description, routes=app.routes)
            for path in document.get("paths", {}).values():
                for operation in path.values():
                    if "requestBody" in operation:  # a body that is not JSON at all
                        operation["responses"].setdefault("400", BAD_BODY)
                    for parameter in operation.get("parameters", []):
                        if parameter.get("in") == "query" and parameter["name"] in maxima:
                            _set_maximum(parameter["schema"], maxima[parameter["name"]])
            spec = document.get("components", {}).get("schemas", {}).get("ExperimentSpec")
            if spec is not None:  # a section left out is its preset's
                spec.pop("required", None)
                spec["description"] = PRESET_SECTIONS
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(StarletteHTTPException, _with_every_allowed_method)


def _set_maximum(schema: dict[str, Any], maximum: int) -> None:
    """The maximum on an integer schema, or on the integer branch of an optional one."""
    if schema.get("type") == "integer":
        schema["maximum"] = maximum
    for branch in schema.get("anyOf", []):
        _set_maximum(branch, maximum)


async def _with_every_allowed_method(request: Request, exc: StarletteHTTPException):
    if exc.status_code == 405:
        methods = _methods_of_path(request.app, request.url.path)
        if methods:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
    return await http_exception_handler(request, exc)


def _methods_of_path(app: FastAPI, path: str) -> set[str]:
    """The methods the document lists for the path template that `path` matches (HEAD with
    GET, as Starlette serves it)."""
    templates = getattr(app.state, "openapi_path_methods", None)
    if templates is None:
        templates = app.state.openapi_path_methods = [
            (compile_path(template)[0], {method.upper() for method in operations})
            for template, operations in app.openapi().get("paths", {}).items()
        ]
    methods: set[str] = set()
    for regex, listed in templates:
        if regex.match(path):
            methods |= listed
    if "GET" in methods:
        methods.add("HEAD")
    return methods
