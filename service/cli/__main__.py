"""`python -m service.cli ...`, as `groklab up` starts its API and worker."""
from service.cli import app

app()
