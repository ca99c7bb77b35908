"""Reading a spec file given on the command line (`groklab train`, `groklab submit`)."""
from __future__ import annotations

from pathlib import Path

import typer


def load_spec_file(path: Path):
    """The ExperimentSpec in path (JSON or YAML); on a bad spec, every wrong field on stderr
    as `path: field.path: message`, and exit code 2. The GROKLAB_MAX_* caps apply, as on the
    server."""
    from pydantic import ValidationError

    from service.contract.limits import Limits
    from service.contract.settings import get_settings
    from service.contract.spec import load_spec

    try:
        return load_spec(path, Limits.from_settings(get_settings()))
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            typer.secho(f"{path}: {loc}: {err['msg']}", fg="red", err=True)
        raise typer.Exit(2)
